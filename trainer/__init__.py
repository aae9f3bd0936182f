"""Tune a Korean dialogue summarizer (KoBART) with Katib on a cluster or Optuna on one machine."""

# The distribution's name on PyPI ("trainer" is an unrelated project there); the command and the
# import package stay `trainer`, the container's entrypoint.
DISTRIBUTION = "kobart-tune"


def install_hint(extra: str) -> str:
    """How to add one of the package's extras, as every "needs the X package" line says it."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"
