"""The cluster client: Katib SDK calls and Kubernetes access."""
