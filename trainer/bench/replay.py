"""`trainer bench search`: the project's own samplers and pruners replayed over a learning-curve table.

A table (trainer bench search record) holds every configuration of a grid with its rouge_avg after
each epoch. A replayed search is an in-memory Optuna study with the sampler and pruner that
`trainer search` builds from an Experiment (space.make_sampler, space.make_pruner): study.ask()
names a configuration, its recorded values are reported epoch by epoch (step = epoch number, as
the runner does) until the pruner stops it or its curve ends, and study.tell() closes it. A trial's
objective is its best reported value (the Experiments' metric strategy `max`).

Katib's hyperband is replayed with its own schedule (search/hyperband.py); a promoted configuration
is retrained from scratch at r epochs, which the replay takes as the first r epochs of the recorded
9-epoch run: an approximation (a shorter run decays its learning rate sooner).

Trials run one after another (parallelTrialCount 1): medianstop's rule and TPE see every earlier
trial finished, which flatters them somewhat against a parallel search.

Figures per strategy, over SEEDS runs each, with eps = max(0.01, 2 x the table's seed noise):
the trial-epochs spent until some evaluation came within eps of the grid's best (over the grid's
own trial-epochs: every configuration trained to the end), median and p90 (a run that never got
there counts as infinite), p_reach, and the true final value of the configuration the search
names best when the grid's budget is spent.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import warnings
from pathlib import Path

import optuna

from trainer.errors import UsageError
from trainer.experiment import spec as ex
from trainer.experiment.vocabulary import EARLY_STOPPED, SUCCEEDED
from trainer.search import hyperband, narrow, space
from trainer.search import pruner as median

SEEDS = 100
# The shipped Experiments' sampler (manifests/experiments/tpe.yaml).
SHIPPED_SAMPLER = ("multivariate-tpe", {"n_startup_trials": "8"})
COARSE_TRIALS = 12  # the staged route's first stage: the tuning guide's 10-15 coarse trials


@dataclasses.dataclass
class Table:
    values: dict[str, list[str]]  # parameter -> the values it takes in the table
    curves: dict[tuple, list[float]]  # the parameters' values, in `values` order -> rouge_avg per epoch
    noise: float | None  # pooled seed standard deviation, when the table measured it

    @property
    def epochs(self) -> int:
        return len(next(iter(self.curves.values())))

    @property
    def best(self) -> float:
        return max(max(c) for c in self.curves.values())

    @property
    def budget(self) -> int:
        return self.epochs * len(self.curves)


def load_table(path: str) -> Table:
    """A recorded table; a file that is not one gives one line naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--table={path!r}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--table={path!r} is not a JSON file: {error}") from None
    configs = data.get("configs") if isinstance(data, dict) else None
    if not isinstance(configs, list) or not configs:
        raise UsageError(f"--table={path!r}: needs {{\"configs\": [{{\"params\": {{...}}, \"curve\": [...]}}, ...]}}")
    curves, names, length = {}, None, None
    for i, config in enumerate(configs):
        params = config.get("params") if isinstance(config, dict) else None
        curve = config.get("curve") if isinstance(config, dict) else None
        if not isinstance(params, dict) or not params or not isinstance(curve, list) or not curve:
            raise UsageError(f"--table={path!r}: configs[{i}] needs a \"params\" object and a \"curve\" list")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in curve):
            raise UsageError(f"--table={path!r}: configs[{i}].curve holds a value that is not a finite number")
        names = names or sorted(params)
        length = length or len(curve)
        if sorted(params) != names or len(curve) != length:
            raise UsageError(f"--table={path!r}: configs[{i}] has other parameters or another curve length "
                             f"than configs[0] ({', '.join(names)}; {length} epochs)")
        point = tuple(str(params[n]) for n in names)
        if point in curves:
            raise UsageError(f"--table={path!r}: configs[{i}] repeats {dict(zip(names, point))}")
        curves[point] = [float(v) for v in curve]
    values = {n: list(dict.fromkeys(p[i] for p in curves)) for i, n in enumerate(names)}
    missing = [p for p in itertools.product(*values.values()) if p not in curves]
    if missing:
        raise UsageError(f"--table={path!r}: not a full grid; {dict(zip(names, missing[0]))} and "
                         f"{len(missing) - 1} more are missing")
    noise = (data.get("seed_noise") or {}).get("pooled_std") if isinstance(data.get("seed_noise"), dict) else None
    return Table(values, curves, noise if isinstance(noise, (int, float)) else None)


def experiment(algorithm: str, settings: dict, stopping: dict | None) -> ex.Experiment:
    """The Experiment `trainer search` would read: this algorithm and earlyStopping (medianstop settings)."""
    spec = {"algorithm": {"algorithmName": algorithm,
                          "algorithmSettings": [{"name": k, "value": v} for k, v in settings.items()]}}
    if stopping is not None:
        spec["earlyStopping"] = {"algorithmName": "medianstop",
                                 "algorithmSettings": [{"name": k, "value": str(v)} for k, v in stopping.items()]}
    return ex.parse_experiment({"metadata": {"name": "replay"}, "spec": spec}, "<replay>")


@dataclasses.dataclass
class Run:
    spent_to_reach: float  # trial-epochs until an evaluation came within eps of the best (inf: never)
    named_final: float  # the true final value (best of its curve) of the configuration named best at the end
    curve: list  # [trial-epochs spent, best value seen so far] after each evaluation
    trials: list  # (configuration, epochs it ran) per trial, in order


def named_best(seen: dict[tuple, float], table: Table) -> float:
    """The true value of the configuration with the best observed objective."""
    point = max(seen, key=seen.get)
    return max(table.curves[point])


@dataclasses.dataclass
class Progress:
    """What one replayed search has spent and seen so far."""
    table: Table
    target: float
    spent: int = 0
    reached: float = math.inf
    best: float = -math.inf
    seen: dict = dataclasses.field(default_factory=dict)
    curve: list = dataclasses.field(default_factory=list)
    trials: list = dataclasses.field(default_factory=list)

    @property
    def over(self) -> bool:
        return self.spent >= self.table.budget

    def evaluation(self, value: float) -> None:
        self.spent += 1
        self.best = max(self.best, value)
        self.curve.append([self.spent, self.best])
        if self.reached == math.inf and value >= self.target:
            self.reached = self.spent

    def trained(self, point: tuple, values: list[float]) -> None:
        """A trial of `point` ran these evaluations."""
        self.seen[point] = max(self.seen.get(point, -math.inf), max(values))
        self.trials.append((point, len(values)))

    def run(self) -> Run:
        return Run(self.reached, named_best(self.seen, self.table), self.curve, self.trials)


def run_trial(progress: Progress, study: optuna.Study, pruner, distributions: dict, fixed: dict) -> tuple:
    """One trial: study.ask() names the searched values (`fixed` the rest), its recorded values are
    reported epoch by epoch until the pruner stops it or its curve ends; (point, its best, pruned)."""
    table = progress.table
    trial = study.ask(distributions)
    trial.set_user_attr(median.EPOCHS_ATTR, table.epochs)  # as the runner does: the last epoch stops nothing
    space.on_trial_created(pruner, study, trial)
    point = tuple({**fixed, **trial.params}[n] for n in table.values)
    values, pruned = [], False
    for epoch, value in enumerate(table.curves[point], 1):
        trial.report(value, step=epoch)
        values.append(value)
        progress.evaluation(value)
        if progress.over:
            break
        if pruner is not None and trial.should_prune():
            pruned = True
            break
    progress.trained(point, values)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED) if pruned else study.tell(trial, max(values))
    return point, max(values), pruned


def search_study(table: Table, algorithm: str, settings: dict, rule: str, stopping: dict | None, seed: int,
                 distributions: dict) -> tuple[optuna.Study, object]:
    e = experiment(algorithm, {**settings, "random_state": str(seed)}, stopping)
    pruner = space.make_pruner(e, rule)
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler(e.algorithm, distributions, 1),
                                pruner=pruner or optuna.pruners.NopPruner())
    return study, pruner


def table_distributions(values: dict[str, list[str]]) -> dict:
    return {n: optuna.distributions.CategoricalDistribution(v) for n, v in values.items()}


def replay_optuna(table: Table, algorithm: str, settings: dict, rule: str, stopping: dict | None,
                  seed: int, target: float) -> Run:
    distributions = table_distributions(table.values)
    study, pruner = search_study(table, algorithm, settings, rule, stopping, seed, distributions)
    progress = Progress(table, target)
    while not progress.over:
        run_trial(progress, study, pruner, distributions, {})
    return progress.run()


@dataclasses.dataclass
class Row:
    """What narrow.top_rows reads of a trial."""
    name: str
    state: str
    objective: float | None
    params: dict


def replay_staged(table: Table, seed: int, target: float, coarse: int = COARSE_TRIALS) -> Run:
    """The tuning guide's staged route with the local default (multivariate-tpe + asha): `coarse`
    trials over the whole space, then the space `trainer search --narrow` writes around their top
    trials (search/narrow.py, the one-value parameters fixed), searched as a new study until the
    grid's budget is spent."""
    progress = Progress(table, target)
    distributions = table_distributions(table.values)
    study, pruner = search_study(table, *SHIPPED_SAMPLER, "asha", None, seed, distributions)
    rows = []
    for number in range(coarse):
        if progress.over:
            return progress.run()
        point, value, pruned = run_trial(progress, study, pruner, distributions, {})
        rows.append(Row(str(number), EARLY_STOPPED if pruned else SUCCEEDED, value, dict(zip(table.values, point))))
    parameters = [{"name": n, "parameterType": "categorical", "feasibleSpace": {"list": v}}
                  for n, v in table.values.items()]
    whole = ex.parse_experiment({"metadata": {"name": "replay"}, "spec": {"parameters": parameters}}, "<replay>")
    kept, fixed, _ = narrow.narrow_space(whole, narrow.top_rows(rows, maximize=True))
    focused = table_distributions({p["name"]: [str(v) for v in p["feasibleSpace"]["list"]] for p in kept})
    if not focused:  # every parameter fixed: the one configuration left, trained once
        run_trial(progress, optuna.create_study(direction="maximize"), None, {}, fixed)
        return progress.run()
    study, pruner = search_study(table, *SHIPPED_SAMPLER, "asha", None, seed, focused)
    while not progress.over:
        run_trial(progress, study, pruner, focused, fixed)
    return progress.run()


def replay_hyperband(table: Table, seed: int, target: float, eta: float = hyperband.DEFAULT_ETA) -> Run:
    """Katib's schedule with resource = epochs (r_l = the table's epochs), repeated until the budget is
    spent; rung-0 configurations from the random sampler, promotions by hyperband.top_configurations;
    a retrain at r epochs replayed as the recorded curve's first r epochs."""
    e = experiment("random", {"random_state": str(seed)}, None)
    distributions = table_distributions(table.values)
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler(e.algorithm, distributions, 1))
    rungs = hyperband.schedule(table.epochs, eta)
    progress = Progress(table, target)
    while not progress.over:
        below: list = []
        for rung in rungs:
            if rung.index == 0:
                points = []
                for _ in range(rung.trials):
                    trial = study.ask(distributions)
                    points.append(tuple(trial.params[n] for n in table.values))
                    study.tell(trial, 0.0)  # the random sampler reads nothing back
            else:
                points = hyperband.top_configurations(below, rung.trials, True)
            below = []
            for point in points:
                values = table.curves[point][: rung.resource]
                for value in values:
                    progress.evaluation(value)
                below.append((max(values), point))
                progress.trained(point, values)
                if progress.over:
                    return progress.run()
    return progress.run()


def strategies(medianstop_grid: bool = True) -> dict:
    """Name -> (algorithm, settings, early-stopping rule, medianstop settings) for replay_optuna, or
    "hyperband" or "staged"."""
    found = {
        "random": ("random", {}, "none", None),
        "tpe": ("tpe", {}, "none", None),
        "multivariate-tpe": (*SHIPPED_SAMPLER, "none", None),
        "random+asha": ("random", {}, "asha", None),
        "multivariate-tpe+asha": (*SHIPPED_SAMPLER, "asha", None),
        "hyperband (katib, retrained)": "hyperband",
        f"staged: multivariate-tpe+asha, {COARSE_TRIALS} coarse trials, then narrowed": "staged",
    }
    if medianstop_grid:
        for start, least in itertools.product((1, 2, 3, 4, 5), (1, 2, 4)):
            found[f"multivariate-tpe+medianstop(start_step={start},min_trials_required={least})"] = (
                *SHIPPED_SAMPLER, "medianstop", {"min_trials_required": least, "start_step": start})
    return found


def quantile(values: list[float], q: float) -> float:
    """The q-quantile, nearest rank (an infinite value, a run that never got there, stays infinite)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def figures(runs: list[Run], table: Table) -> dict:
    ratios = [r.spent_to_reach / table.budget for r in runs]
    finite = lambda x: None if math.isinf(x) else round(x, 4)  # noqa: E731
    return {"median": finite(quantile(ratios, 0.5)), "p90": finite(quantile(ratios, 0.9)),
            "p_reach": sum(not math.isinf(x) for x in ratios) / len(ratios),
            "named_final_mean": round(statistics.mean(r.named_final for r in runs), 4),
            "named_final_min": round(min(r.named_final for r in runs), 4), "seeds": len(runs)}


def spearman(table: Table) -> dict:
    """Spearman's rank correlation of the epoch-k values with the final (last-epoch) values, per k."""
    from scipy.stats import spearmanr

    finals = [c[-1] for c in table.curves.values()]
    found = {}
    for k in range(1, table.epochs + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant values: no correlation, None below
            rho = float(spearmanr([c[k - 1] for c in table.curves.values()], finals)[0])
        found[str(k)] = None if math.isnan(rho) else round(rho, 4)
    return found


def replay(table: Table, seeds: int = SEEDS, medianstop_grid: bool = True, eps: float | None = None) -> dict:
    eps = eps if eps is not None else max(0.01, 2 * (table.noise or 0.0))
    target = table.best - eps
    result = {"eps": round(eps, 6), "grid": {"best": table.best, "trial_epochs": table.budget,
                                             "configs": len(table.curves), "epochs": table.epochs},
              "strategies": {}, "curves": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name, how in strategies(medianstop_grid).items():
            replayed = {"hyperband": replay_hyperband, "staged": replay_staged}[how] if isinstance(how, str) else None
            runs = [replayed(table, seed, target) if replayed else replay_optuna(table, *how, seed, target)
                    for seed in range(1, seeds + 1)]
            result["strategies"][name] = figures(runs, table)
            result["curves"][name] = median_curve(runs, table.budget)
    result["spearman"] = spearman(table)
    return result


def median_curve(runs: list[Run], budget: int) -> list:
    """The median over runs of the best value seen, at every trial-epoch 1..budget."""
    columns = []
    for run in runs:
        column, i, best = [], 0, None
        for spent in range(1, budget + 1):
            while i < len(run.curve) and run.curve[i][0] <= spent:
                best = run.curve[i][1]
                i += 1
            column.append(best if best is not None else -math.inf)
        columns.append(column)
    return [round(statistics.median(col[t] for col in columns), 4) for t in range(budget)]
