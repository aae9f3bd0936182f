"""Katib's hyperband run by the local search: rung after rung, bracket after bracket, in the order
Katib's service makes them (the arithmetic is in hyperband.py).

The first rung of a bracket is new configurations drawn at random; each later rung is the best
of the rung below (Katib's _get_top_trial), each a NEW trial with the resource parameter set to
the rung's value, retrained from scratch as Katib does (no checkpoint is carried over: a shorter
run's learning-rate schedule has decayed differently, so continuing would not be the same run).
A rung starts once every trial of the rung below has finished. The study's trials carry their
bracket and rung, so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from trainer.console import say
from trainer.experiment import spec as ex
from trainer.experiment.vocabulary import FINISHED, SUCCEEDED
from trainer.search import hyperband

BRACKET_ATTR, RUNG_ATTR, FROM_ATTR = "hyperband_bracket", "hyperband_rung", "hyperband_promoted_from"


@dataclass(frozen=True)
class Hyperband:
    r_l: float
    eta: float
    resource_name: str
    rungs: tuple[hyperband.Rung, ...]


def from_experiment(e: ex.Experiment) -> Hyperband:
    """The schedule of an Experiment `trainer check` accepted."""
    settings = e.algorithm.settings
    r_l, eta = float(str(settings["r_l"])), hyperband.katib_eta(settings)
    return Hyperband(r_l, eta, str(settings["resource_name"]), tuple(hyperband.schedule(r_l, eta)))


def distributions(hb: Hyperband, base: dict) -> dict:
    """Katib's hyperband draws every parameter uniformly between min and max (logUniform is not
    read); the resource parameter takes the rungs' values."""
    space = {}
    for name, d in base.items():
        if isinstance(d, FloatDistribution) and d.log:
            d = FloatDistribution(d.low, d.high)
        elif isinstance(d, IntDistribution) and d.log:
            d = IntDistribution(d.low, d.high)
        space[name] = d
    space[hb.resource_name] = CategoricalDistribution(sorted({str(r.resource) for r in hb.rungs}, key=float))
    return space


def queue_next(plan, study: optuna.Study) -> bool:
    """Queue the next trial of the schedule (or leave a queued rerun first); False while the rung
    below is still running, and once the schedule is done."""
    from trainer.search.study import katib_state

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    hb: Hyperband = plan.hyperband
    slots: dict[tuple, dict[str, list]] = {}  # (bracket, rung) -> trial name -> its trials (reruns too)
    for t in trials:
        key = (t.user_attrs.get(BRACKET_ATTR), t.user_attrs.get(RUNG_ATTR))
        slots.setdefault(key, {}).setdefault(t.user_attrs.get("trial_name", str(t.number)), []).append(t)
    below: list = []  # the finished trials of the rung below, in start order
    for rung in hb.rungs:
        started = slots.get((rung.bracket, rung.index), {})
        if rung.index == 0:
            configs, size = None, rung.trials
        else:
            ranked = [(t.user_attrs["objective"], t) for t in below
                      if katib_state(t) == SUCCEEDED and t.user_attrs.get("objective") is not None]
            configs = hyperband.top_configurations(ranked, rung.trials, plan.maximize)
            size = len(configs)
        if len(started) < size:
            params, attrs = {hb.resource_name: str(rung.resource)}, {BRACKET_ATTR: rung.bracket, RUNG_ATTR: rung.index}
            if configs is not None:
                source = configs[len(started)]
                params = {**source.params, **params}
                attrs[FROM_ATTR] = source.user_attrs.get("trial_name")
            if not started:
                say(f"hyperband {rung.label}: {size} configuration{'s' if size != 1 else ''} at "
                    f"{hb.resource_name}={rung.resource}"
                    + (f", the best {size} of the {len(below)} below, retrained from scratch" if configs is not None
                       else ", new ones drawn at random"))
            study.enqueue_trial(params, user_attrs=attrs)
            return True
        finished = [next((t for t in runs if katib_state(t) in FINISHED), None) for runs in started.values()]
        if any(t is None for t in finished):
            return False  # Katib's service waits for every trial of the rung
        below = sorted(finished, key=lambda t: t.number)
    return False


def rerun_attrs(trial) -> dict:
    """The bracket and rung an interrupted trial's rerun keeps."""
    return {k: v for k, v in trial.user_attrs.items() if k in (BRACKET_ATTR, RUNG_ATTR, FROM_ATTR)}
