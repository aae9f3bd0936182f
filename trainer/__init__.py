"""Tune a Korean dialogue summarizer (KoBART) with Katib on a cluster or Optuna on one machine."""
