"""Katib's algorithms and search space as Optuna's: distributions, the samplers (SAMPLERS: algorithm
name -> builder) and the early-stopping rules (PRUNERS: rule name -> builder).

Each sampler follows what Katib's own Optuna/hyperopt suggestion services do with the same
Experiment. Nothing here writes into a plan: what the local run cannot honour comes back as notes.
"""

from __future__ import annotations

import difflib
import math
import warnings

import optuna

from trainer.errors import UsageError
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.flags import format_value
from trainer.search import pruner as median


def distributions(e: ex.Experiment, grid: bool) -> dict:
    """Katib's Optuna service's distributions; a grid searches the exact Katib grid values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {}
    for p in e.parameters:
        if grid:
            space[p.name] = CategoricalDistribution(katib_grid.grid_axis(p))
            continue
        if p.parameter_type in ("categorical", "discrete"):
            space[p.name] = CategoricalDistribution([format_value(v) for v in p.list])
            continue
        kind = p.distribution or "uniform"
        if kind not in ("uniform", "logUniform"):
            raise UsageError(f"parameter {p.name}: distribution {kind} has no Optuna equivalent (Katib's "
                             "Optuna service skips it too); use uniform or logUniform")
        step = p.step not in (None, "")
        if p.parameter_type == "int":
            low, high = int(str(p.min)), int(str(p.max))
            space[p.name] = (IntDistribution(max(1, low), high, log=True) if kind == "logUniform"
                             else IntDistribution(low, high, step=int(str(p.step)) if step else 1))
        else:
            low, high = float(str(p.min)), float(str(p.max))
            space[p.name] = (FloatDistribution(max(1e-10, low), high, log=True) if kind == "logUniform"
                             else FloatDistribution(low, high, step=float(str(p.step)) if step else None))
    return space


class KatibGridSampler(optuna.samplers.GridSampler):
    """GridSampler calls study.stop() once the grid is exhausted, which only works inside
    study.optimize(); here the budget (at most the grid size) ends the search instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def setting(settings: dict, name: str, kind, default=None):
    if name not in settings:
        return default
    try:
        return kind(str(settings[name]))
    except ValueError:
        raise UsageError(f"algorithmSettings {name}={settings[name]!r} is not a {kind.__name__}") from None


def hyperopt_gamma(gamma: float):
    """hyperopt's split of good trials (Katib serves `tpe` with hyperopt): ceil(gamma * sqrt(n)), at most 25."""
    return lambda n: min(math.ceil(gamma * math.sqrt(n)), 25)


# algorithmSettings the local samplers honour, where not all of Katib's have an Optuna equivalent.
HONOURED_SETTINGS = {"cmaes": ("random_state", "sigma"), "bayesianoptimization": ("random_state", "n_initial_points"),
                     "sobol": ("random_state",)}


def ignored_settings(algorithm: ex.Algorithm) -> list[str]:
    """Notes on the algorithmSettings that have no local equivalent (ignored by `trainer search`)."""
    honoured = HONOURED_SETTINGS.get(algorithm.name)
    if honoured is None:
        return []
    ignored = [f"{k}={v}" for k, v in algorithm.settings.items() if k not in honoured]
    if not ignored:
        return []
    return [f"algorithmSettings {', '.join(ignored)}: no equivalent in Optuna {optuna.__version__}, ignored locally"]


def grid_sampler(settings: dict, distributions: dict, parallel: int, seed):
    return KatibGridSampler({name: d.choices for name, d in distributions.items()}, seed=seed)


def random_sampler(settings: dict, distributions: dict, parallel: int, seed):
    return optuna.samplers.RandomSampler(seed=seed)


def tpe_sampler(settings: dict, distributions: dict, parallel: int, seed):
    # Katib serves tpe with hyperopt, which samples its first batch (parallelTrialCount) at random
    # and splits good trials by ceil(gamma * sqrt(n)); Optuna deprecates gamma and prior_weight
    # (still honoured in this version), so they are passed only when the Experiment sets them.
    extra = {}
    if "gamma" in settings:
        extra["gamma"] = hyperopt_gamma(setting(settings, "gamma", float))
    if "prior_weight" in settings:
        extra["prior_weight"] = setting(settings, "prior_weight", float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=False, n_startup_trials=parallel,
                                          constant_liar=True,
                                          n_ei_candidates=setting(settings, "n_EI_candidates", int, 24), **extra)


def multivariate_tpe_sampler(settings: dict, distributions: dict, parallel: int, seed):
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True,
        n_startup_trials=setting(settings, "n_startup_trials", int, 10),
        n_ei_candidates=setting(settings, "n_ei_candidates", int, 24))


def cmaes_sampler(settings: dict, distributions: dict, parallel: int, seed):
    require_module("cmaes", "cmaes")
    return optuna.samplers.CmaEsSampler(seed=seed, sigma0=setting(settings, "sigma", float),
                                        warn_independent_sampling=False)


def gp_sampler(settings: dict, distributions: dict, parallel: int, seed):
    require_module("scipy", "bayesianoptimization")
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=setting(settings, "n_initial_points", int, 10),
                                     warn_independent_sampling=False)


def sobol_sampler(settings: dict, distributions: dict, parallel: int, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="sobol", seed=seed)


# Katib's algorithm name -> the Optuna sampler its suggestion service amounts to:
# builder(algorithmSettings, distributions, parallelTrialCount, random_state).
SAMPLERS = {
    "grid": grid_sampler,
    "random": random_sampler,
    "tpe": tpe_sampler,
    "multivariate-tpe": multivariate_tpe_sampler,
    "bayesianoptimization": gp_sampler,
    "cmaes": cmaes_sampler,
    "sobol": sobol_sampler,
    "hyperband": random_sampler,  # Katib's hyperband draws each new configuration at random (brackets.py)
}
# The algorithms `trainer search` runs with an Optuna equivalent.
LOCAL_ALGORITHMS = tuple(SAMPLERS)


def make_sampler(algorithm: ex.Algorithm, distributions: dict, parallel: int):
    """The Optuna sampler Katib's suggestion service would use, with its algorithmSettings."""
    settings = dict(algorithm.settings)
    seed = setting(settings, "random_state", int)
    return SAMPLERS[algorithm.name](settings, distributions, parallel, seed)


def require_module(module: str, algorithm: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"algorithm {algorithm} needs the {module} package here: pip install {module}")


# Early stopping of the local search: `trainer search --early_stopping RULE`. Katib has only
# medianstop; asha (Optuna's SuccessiveHalvingPruner) is a local choice.
EARLY_STOPPING_RULES = ("medianstop", "asha", "none")
# The rule when --early_stopping is not given, for an Experiment whose trials train (one report per
# epoch): on the recorded table (trainer bench search, docs/performance.md) asha reaches the grid's
# best in 0.094 of its trial-epochs at the median, the Experiments' medianstop in 0.122.
DEFAULT_EARLY_STOPPING = "asha"
EPOCHS_FLAG = "num_train_epochs"  # the resource the rules count in


def experiment_rule(e: ex.Experiment) -> str:
    """What Katib runs with the same file: its medianstop, or none without earlyStopping."""
    return "medianstop" if e.early_stopping is not None else "none"


def default_rule(e: ex.Experiment) -> str:
    """DEFAULT_EARLY_STOPPING where the trials train for the same number of epochs. A decoding
    search's trials report once, so nothing is there to stop early and its Experiment's own rule
    stands. Where num_train_epochs is searched, none: warmup and decay stretch with a trial's epochs,
    so a longer schedule is behind at epoch 1 by construction (seen: stage 2's best, 30 epochs,
    stopped by asha at rung 1). hyperband stops configurations by its own rungs."""
    if e.algorithm is not None and e.algorithm.name == "hyperband":
        return "none"
    try:
        command = ex.trial_command(ex.template_argv(e))[0]
    except UsageError:  # no trial container: refused later with its own line
        return experiment_rule(e)
    if command != "train":
        return experiment_rule(e)
    return "none" if epochs_searched(e) else DEFAULT_EARLY_STOPPING


def epochs_searched(e: ex.Experiment) -> bool:
    """Whether each trial trains for its own sampled number of epochs."""
    return EPOCHS_FLAG in ex.searched_flags(e)


def early_stopping_rule(e: ex.Experiment, rule: str | None = None) -> str:
    """The rule that runs: one of EARLY_STOPPING_RULES (None or "": default_rule)."""
    if rule in (None, ""):
        return default_rule(e)
    rule = str(rule)
    if rule not in EARLY_STOPPING_RULES:
        match = difflib.get_close_matches(rule, EARLY_STOPPING_RULES, n=1, cutoff=0.6)
        hint = f"did you mean {match[0]}? " if match else ""
        raise UsageError(f"--early_stopping={rule!r} is not a rule: {hint}"
                         f"use one of {', '.join(EARLY_STOPPING_RULES)}")
    return rule


def medianstop_pruner(e: ex.Experiment) -> median.MedianStopPruner:
    """The Experiment's medianstop settings; Katib's defaults where it has no earlyStopping."""
    return median.from_settings(e.early_stopping.settings if e.early_stopping is not None else {})


def asha_pruner(e: ex.Experiment) -> median.Asha:
    return median.Asha()


# Early-stopping rule -> builder(Experiment) of its Optuna pruner (None: no stopping).
PRUNERS = {"medianstop": medianstop_pruner, "asha": asha_pruner, "none": lambda e: None}


def make_pruner(e: ex.Experiment, rule: str | None = None):
    """The pruner for `rule` (None: default_rule); None where nothing is stopped.
    Report to it with step = epoch number (the evaluation after epoch k is step k), and call
    on_trial_created() for every trial study.ask() gives."""
    return PRUNERS[early_stopping_rule(e, rule)](e)


def on_trial_created(pruner, study: optuna.Study, trial: optuna.Trial) -> None:
    """What the pruner fixes when a trial is created: medianstop's rule (Katib computes it when it
    creates the trial and the collector compares against that frozen value)."""
    if isinstance(pruner, median.MedianStopPruner):
        rule = pruner.rule(study)
        if rule is not None:
            trial.set_user_attr(median.RULE_ATTR, rule)


def describe_early_stopping(e: ex.Experiment, rule: str) -> str:
    """The plan's words for the rule that runs, and what Katib runs with the same file."""
    katib = "its medianstop" if e.early_stopping is not None else "no early stopping"
    if rule == "asha":
        rungs = ", ".join(str(median.rung_epochs(k)) for k in (1, 2, 3))
        return (f"early stopping asha (successive halving: rungs after {rungs}, ... epochs, 1 in "
                f"{median.ASHA_REDUCTION_FACTOR} goes on; a local rule: on Katib the same file uses {katib})")
    if rule == "none":
        return "no early stopping" + (" (on Katib the same file uses its medianstop)" if e.early_stopping else "")
    if e.early_stopping is None:
        return ("early stopping medianstop (Katib's defaults; on Katib the same file runs without early "
                "stopping)")
    return "early stopping medianstop (the Experiment's, as on Katib)"
