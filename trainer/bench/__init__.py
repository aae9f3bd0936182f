"""Benchmarks: where a trial's time goes."""
