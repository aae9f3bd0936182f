"""`trainer bench search`: how fast search strategies reach the grid's best. By default the
strategies are replayed over a recorded learning-curve table (bench/replay.py); with --live,
real searches run, as below.

Every --live search is a real `trainer search --smoke` of one Experiment (manifests/experiments/grid.yaml
with the axes below) on the built-in task: builtin:tiny on builtin:sample, a fifth of each trial's
epochs. The grid runs all its points without early stopping; its best rouge_avg and its trial-epochs
(evaluations run, summed over trials) are the reference. Random and multivariate-tpe run with
medianstop, once per seed, and stop at the goal "grid's best minus TOLERANCE". A run's cost is the
trial-epochs of all its trials when it stops; its ratio is that over the grid's trial-epochs (None
when the budget ran out first). The ratio of an algorithm is the mean over its seeds.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path

import yaml

from trainer.console import say
from trainer.errors import UsageError
from trainer.flags import number_flag

ROOT = Path(__file__).resolve().parents[2]
GRID_YAML = ROOT / "manifests" / "experiments" / "grid.yaml"
TOLERANCE = 0.01
TPE_STARTUP = 4
ALGORITHMS = ("random", "multivariate-tpe")
AXES = {
    "learning_rate": ["1e-5", "3e-5", "1e-4", "3e-4", "5e-4"],
    "per_device_train_batch_size": ["16", "32"],
    "num_train_epochs": ["10", "20"],
}
QUICK_AXES = {**AXES, "learning_rate": ["1e-5", "1e-4", "5e-4"]}
# medianstop as the Experiments write it, scaled to the smoke's 2 or 4 evaluations per trial
MEDIANSTOP = {"algorithmName": "medianstop", "algorithmSettings": [
    {"name": "min_trials_required", "value": "2"}, {"name": "start_step", "value": "2"}]}


def experiment(algorithm: str, axes: dict, seed: int, max_trials: int, goal: float | None) -> dict:
    """grid.yaml with these axes, algorithm, seed and budget; medianstop and the goal for the non-grid ones."""
    document = yaml.safe_load(GRID_YAML.read_text(encoding="utf-8"))
    spec = document["spec"]
    document["metadata"]["name"] = f"bench-{algorithm}-{seed}"
    spec["algorithm"] = {"algorithmName": algorithm}
    if algorithm != "grid":
        spec["algorithm"]["algorithmSettings"] = [{"name": "random_state", "value": str(seed)}]
        if algorithm == "multivariate-tpe":  # Optuna's default, 10 random trials first, is most of this grid
            spec["algorithm"]["algorithmSettings"].append({"name": "n_startup_trials", "value": str(TPE_STARTUP)})
        spec["earlyStopping"] = MEDIANSTOP
        spec["objective"]["goal"] = goal
    spec["parameters"] = [{"name": name, "parameterType": "discrete", "feasibleSpace": {"list": values}}
                          for name, values in axes.items()]
    spec["maxTrialCount"] = max_trials
    spec["maxFailedTrialCount"] = min(spec["maxFailedTrialCount"], max_trials)
    spec["parallelTrialCount"] = 2
    return document


def run_search(document: dict, work: Path) -> list[tuple[float | None, int]]:
    """(objective, evaluations run) of each trial of one smoke search, in trial order; its output goes
    to work/NAME.log."""
    import optuna

    from trainer.search import command as search

    name = document["metadata"]["name"]
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with open(work / f"{name}.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        # The Experiment's own rule: none for the grid, medianstop for the others (not the local default)
        rule = "medianstop" if document["spec"].get("earlyStopping") else "none"
        search.search(str(path), smoke=True, max_trials=document["spec"]["maxTrialCount"], output_dir=str(work / name),
                      early_stopping=rule)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / name / 'study.db'}")
    return [(t.user_attrs.get("objective"), len(t.intermediate_values)) for t in study.trials]


def cost(trials: list[tuple[float | None, int]]) -> int:
    """Trial-epochs spent: the evaluations of every trial."""
    return sum(epochs for _, epochs in trials)


def curve(trials: list[tuple[float | None, int]]) -> list[list]:
    """[trial-epochs spent, best objective so far] after each trial, in trial (start) order."""
    points, spent, best = [], 0, None
    for value, epochs in trials:
        spent += epochs
        if value is not None and (best is None or value > best):
            best = value
        points.append([spent, best])
    return points


def reached(trials: list[tuple[float | None, int]], target: float) -> bool:
    return any(value is not None and value >= target for value, _ in trials)


def summarize(grid: list, runs: dict[str, list[list]]) -> dict:
    """The JSON figures: the grid's best and cost, each run's best, cost and ratio, each algorithm's mean ratio."""
    best = max(value for value, _ in grid if value is not None)
    target, spent = best - TOLERANCE, cost(grid)
    result = {"grid": {"best": best, "trial_epochs": spent, "trials": len(grid), "curve": curve(grid)},
              "target": target,
              "runs": {}, "ratios": {}}
    for algorithm, seeds in runs.items():
        rows = [{"best": max((v for v, _ in t if v is not None), default=None), "trial_epochs": cost(t),
                 "trials": len(t), "ratio": cost(t) / spent if reached(t, target) else None,
                 "curve": curve(t)} for t in seeds]
        result["runs"][algorithm] = rows
        ratios = [row["ratio"] for row in rows]
        result["ratios"][algorithm] = statistics.mean(ratios) if None not in ratios else None
    return result


def draw_plot(result: dict, path: str) -> None:
    """Best rouge_avg reached per trial-epochs spent: the grid, and each run of each algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    lines = [("grid", "#555555", [result["grid"]["curve"]])]
    lines += [(a, color, [run["curve"] for run in result["runs"][a]])
              for a, color in zip(result["runs"], ("#1f77b4", "#d62728", "#2ca02c"))]
    for name, color, curves in lines:
        for i, points in enumerate(curves):
            shown = [(x, y) for x, y in points if y is not None]
            ax.step([x for x, _ in shown], [y for _, y in shown], where="post", color=color,
                    label=name if i == 0 else None, alpha=0.8)
    ax.axhline(result["target"], color="#999999", linestyle=":", label=f"grid's best - {TOLERANCE}")
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best rouge_avg so far")
    ax.set_title("trainer bench search: builtin:tiny on builtin:sample (smoke)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_search(table: str = "", output: str = "bench-search.json", plot: str = "", seeds: int = 0,
                 live: bool = False, quick: bool = False) -> None:
    """How many trial-epochs each search strategy spends to come within eps of the grid's best:
    the project's samplers and pruners replayed over a recorded learning-curve table (in seconds),
    or with --live real searches of the built-in task.

    Args:
        table: the learning-curve table to replay (default: the built-in task's, trainer/bench/tables/builtin.json;
            record one with `trainer bench search record`)
        output: JSON file for the figures ({"strategies": {NAME: {"median", "p90", "p_reach", ...}}, "eps", "default", ...})
        plot: PNG of the best rouge_avg reached per trial-epochs spent, per strategy (default: none)
        seeds: runs per strategy (default: 100 replayed, 3 live)
        live: real `trainer search --smoke` runs of grid, random and multivariate-tpe instead of the replay
        quick: with --live, a 3x2x2 grid instead of 5x2x2, and at most 2 seeds
    """
    if seeds:  # 0: each mode's own default (100 replayed, 3 live)
        seeds = number_flag(seeds, "seeds")
    if not str(output).endswith(".json"):
        raise UsageError(f"--output={output!r}: give a .json path")
    if plot and not str(plot).endswith(".png"):
        raise UsageError(f"--plot={plot!r}: give a .png path")
    if live:
        if table:
            raise UsageError("--table replays a recorded table; --live runs real searches: give one of them")
        bench_live(output, seeds or 3, quick, plot)
        return
    if quick:
        raise UsageError("--quick belongs to --live (the replay takes seconds)")
    from trainer.bench import replay_command

    replay_command.run(table, output, plot, seeds or None)


def bench_live(output: str, seeds: int, quick: bool, plot: str) -> None:
    """Real searches on the built-in task, one smoke `trainer search` per algorithm and seed."""
    if not GRID_YAML.is_file():  # an installed package has no manifests/
        raise UsageError(f"{GRID_YAML}: not found; run trainer bench search from a clone of the repository")
    axes = QUICK_AXES if quick else AXES
    seeds = min(seeds, 2) if quick else seeds
    size = len(axes["learning_rate"]) * len(axes["per_device_train_batch_size"]) * len(axes["num_train_epochs"])
    work = Path(output).resolve().with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    say(f"trainer bench search: grid of {size} points, then {', '.join(ALGORITHMS)} x {seeds} seeds; logs in {work}")
    grid = run_search(experiment("grid", axes, 0, size, None), work)
    best = max(value for value, _ in grid if value is not None)
    say(f"grid: best rouge_avg={best:.4f}, {cost(grid)} trial-epochs in {len(grid)} trials")
    runs: dict[str, list] = {}
    for algorithm in ALGORITHMS:
        for seed in range(1, seeds + 1):
            trials = run_search(experiment(algorithm, axes, seed, size, best - TOLERANCE), work)
            runs.setdefault(algorithm, []).append(trials)
            say(f"{algorithm} seed {seed}: {cost(trials)} trial-epochs in {len(trials)} trials, "
                f"{'reached' if reached(trials, best - TOLERANCE) else 'did not reach'} {best - TOLERANCE:.4f}")
    result = summarize(grid, runs)
    Path(output).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    say("ratios (trial-epochs to the grid's best - 0.01, over the grid's): " + ", ".join(
        f"{a} {'not reached' if r is None else f'{r:.2f}'}" for a, r in result["ratios"].items()))
    say(f"wrote {output}")
    if plot:
        draw_plot(result, plot)
        say(f"plot: {plot}")
