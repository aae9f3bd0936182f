"""A training run: what one trial pod executes (config, data, model, ROUGE, the metric line, training, built-ins)."""
