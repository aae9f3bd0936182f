"""Katib's `medianstop` early stopping as an Optuna pruner.

Katib splits it in two (checked against Katib's sources):
- the early-stopping service (pkg/earlystopping/v1beta1/medianstop/service.py) computes ONE rule
  value when a batch of trials is created: for every Succeeded trial, the average of its first
  `start_step` objective reports (in time order), then the plain mean of those averages; no
  rule until `min_trials_required` trials have succeeded. The rule is frozen into each trial;
- the metrics collector (pkg/metricscollector/v1beta1/file-metricscollector/rules.go) counts
  the trial's objective reports as they stream and, from the `start_step`-th report on, stops
  the trial when its best value so far is worse than the rule (below it when maximizing).

So `rule()` is called when a trial is created and stored on it (RULE_ATTR); `prune()` only
compares that frozen value with the trial's own reports.
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from trainer.errors import UsageError
from trainer.experiment import vocabulary as vocab

RULE_ATTR = "median_stop_rule"
REPORTS_ATTR = "objective_reports"  # [[timestamp or "", value text], ...] in Katib's time order


def reported_values(trial: FrozenTrial) -> list[float]:
    """The trial's objective reports as numbers, in the order Katib's database returns them."""
    reports = trial.user_attrs.get(REPORTS_ATTR)
    if reports is None:
        return [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
    values = []
    for _, text in reports:
        try:
            values.append(float(text))
        except ValueError:
            continue
    return values


class MedianStopPruner(optuna.pruners.BasePruner):
    def __init__(self, min_trials_required: int = vocab.MEDIANSTOP_DEFAULT_MIN_TRIALS_REQUIRED,
                 start_step: int = vocab.MEDIANSTOP_DEFAULT_START_STEP):
        self.min_trials_required = min_trials_required
        self.start_step = start_step

    def rule(self, study: optuna.Study) -> float | None:
        """The value a trial created now must beat, or None while too few trials succeeded."""
        averages = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            first = reported_values(trial)[: self.start_step]
            if first:
                averages.append(sum(first) / len(first))
        if len(averages) < self.min_trials_required:
            return None
        return sum(averages) / len(averages)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        rule = trial.user_attrs.get(RULE_ATTR)
        values = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
        if rule is None or len(values) < self.start_step:
            return False
        if study.direction == StudyDirection.MAXIMIZE:
            return max(values) < rule
        return min(values) > rule


def from_settings(settings: dict) -> MedianStopPruner:
    """A pruner from Katib's medianstop algorithmSettings (strings, as Katib reads them)."""
    values = {"min_trials_required": vocab.MEDIANSTOP_DEFAULT_MIN_TRIALS_REQUIRED, "start_step": vocab.MEDIANSTOP_DEFAULT_START_STEP}
    for name, text in settings.items():
        if name not in values:
            raise UsageError(f"medianstop setting {name!r} is unknown (known: {', '.join(values)})")
        try:
            values[name] = int(str(text))
        except ValueError:
            raise UsageError(f"medianstop setting {name}={text!r} is not an integer") from None
        if values[name] < 1:
            raise UsageError(f"medianstop setting {name}={text!r} must be >= 1")
    return MedianStopPruner(**values)
