"""Early stopping of the local search: Katib's `medianstop` as an Optuna pruner, and the rungs of
asha (Optuna's SuccessiveHalvingPruner, a local choice: Katib has only medianstop).

Steps are epoch numbers: the evaluation after epoch k is reported as step k (1, 2, ...), so an
asha rung at min_resource * eta^k steps falls after that many epochs.

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
STOPPED_BY_ATTR = "stopped_by"  # which rule stopped the trial, and where ("asha: stopped at rung 2 (3 epochs)")

# asha's defaults: rungs after 1, 3, 9, ... epochs; a third of each rung goes on.
ASHA_MIN_RESOURCE = 1
ASHA_REDUCTION_FACTOR = 3


EPOCHS_ATTR = "epochs_requested"  # user attribute: the epochs the trial runs (its num_train_epochs)


class Asha(optuna.pruners.SuccessiveHalvingPruner):
    """Successive halving: rungs after 1, 3, 9, ... epochs, a third of each rung goes on. The
    evaluation after a trial's last epoch (EPOCHS_ATTR) still records its rung for the trials that
    come later but stops nothing: the trial has spent its budget, and it ends Succeeded."""

    def __init__(self):
        super().__init__(min_resource=ASHA_MIN_RESOURCE, reduction_factor=ASHA_REDUCTION_FACTOR,
                         min_early_stopping_rate=0, bootstrap_count=0)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        stop = super().prune(study, trial)
        epochs = trial.user_attrs.get(EPOCHS_ATTR)
        return stop and not (epochs is not None and trial.last_step is not None and trial.last_step >= epochs)


def asha_rung(epoch: int) -> int:
    """The rung (1-based) judged after `epoch` epochs: the highest whose epochs it has reached."""
    rung = 0
    while ASHA_MIN_RESOURCE * ASHA_REDUCTION_FACTOR ** rung <= epoch:
        rung += 1
    return rung


def rung_epochs(rung: int) -> int:
    return ASHA_MIN_RESOURCE * ASHA_REDUCTION_FACTOR ** (rung - 1)


def epochs_text(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def stop_note(pruner, trial, values: list[float], maximize: bool) -> str:
    """Which rule stopped the trial after len(values) epochs (its objective values), in one line."""
    epoch = len(values)
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner):
        rung = asha_rung(epoch)
        return f"asha: stopped at rung {rung} ({epochs_text(rung_epochs(rung))})"
    rule = trial.user_attrs.get(RULE_ATTR)
    best = max(values) if maximize else min(values)
    return (f"medianstop: stopped after {epochs_text(epoch)}, its best {best:.4f} "
            f"{'below' if maximize else 'above'} the rule {rule:.4f}")


def reported_values(trial: FrozenTrial) -> list[float]:
    """The trial's objective reports as numbers, in the order Katib's database returns them."""
    reports = trial.system_attrs.get(REPORTS_ATTR)  # study.record keeps them out of the dashboard's view
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
