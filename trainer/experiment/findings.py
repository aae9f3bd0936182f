"""A check's findings: problems (Katib or the trainer would reject) and warnings, per Experiment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Finding:
    field: str
    message: str


class Report:
    """Problems and warnings for one Experiment."""

    def __init__(self):
        self.problems: list[Finding] = []
        self.warnings: list[Finding] = []

    def problem(self, field: str, message: str) -> None:
        self.problems.append(Finding(field, message))

    def warn(self, field: str, message: str) -> None:
        self.warnings.append(Finding(field, message))
