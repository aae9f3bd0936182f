"""Katib Experiments: the spec, its offline check, and the local search with Optuna."""
