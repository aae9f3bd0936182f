"""Katib's algorithms and search space as Optuna's: distributions, the sampler, the medianstop pruner.

Each mapping follows what Katib's own Optuna/hyperopt suggestion services do with the same
Experiment. Nothing here writes into a plan: what the local run cannot honour comes back as notes.
"""

from __future__ import annotations

import math
import warnings

import optuna

from trainer.errors import UsageError
from trainer.search import pruner as median
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.flags import format_value

# The algorithms `trainer search` runs with an Optuna equivalent.
LOCAL_ALGORITHMS = ("grid", "random", "tpe", "multivariate-tpe", "bayesianoptimization", "cmaes", "sobol")


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


def make_sampler(algorithm: ex.Algorithm, distributions: dict, parallel: int):
    """The Optuna sampler Katib's suggestion service would use, with its algorithmSettings."""
    samplers = optuna.samplers
    a = algorithm
    settings = dict(a.settings)
    seed = setting(settings, "random_state", int)
    if a.name == "grid":
        return KatibGridSampler({name: d.choices for name, d in distributions.items()}, seed=seed)
    if a.name == "random":
        return samplers.RandomSampler(seed=seed)
    if a.name == "tpe":
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
            return samplers.TPESampler(seed=seed, multivariate=False, n_startup_trials=parallel,
                                       constant_liar=True,
                                       n_ei_candidates=setting(settings, "n_EI_candidates", int, 24), **extra)
    if a.name == "multivariate-tpe":
        return samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True,
            n_startup_trials=setting(settings, "n_startup_trials", int, 10),
            n_ei_candidates=setting(settings, "n_ei_candidates", int, 24))
    if a.name == "cmaes":
        require_module("cmaes", a.name)
        return samplers.CmaEsSampler(seed=seed, sigma0=setting(settings, "sigma", float),
                                     warn_independent_sampling=False)
    if a.name == "bayesianoptimization":
        require_module("scipy", a.name)
        return samplers.GPSampler(seed=seed, n_startup_trials=setting(settings, "n_initial_points", int, 10),
                                  warn_independent_sampling=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return samplers.QMCSampler(qmc_type="sobol", seed=seed)


def require_module(module: str, algorithm: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"algorithm {algorithm} needs the {module} package here: pip install {module}")


def make_pruner(e: ex.Experiment) -> median.MedianStopPruner | None:
    if e.early_stopping is None:
        return None
    return median.from_settings(e.early_stopping.settings)  # check allows medianstop only

