"""`trainer bench search [--table FILE]`: replay every strategy over a table, print and write the figures.

`default` names what `trainer search` does without --early_stopping on an Experiment of the table's
space, its sampler tpe.yaml's (space.DEFAULT_EARLY_STOPPING: the trials train for the same epochs),
`katib_compatible` what Katib does with tpe.yaml's medianstop.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from trainer.bench import replay as rp
from trainer.console import say
from trainer.search import pruner as median
from trainer.search import space

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_TABLE = Path(__file__).resolve().parent / "tables" / "builtin.json"
SHIPPED = ROOT / "manifests" / "experiments" / "tpe.yaml"


def medianstop_name(settings: dict) -> str:
    return (f"multivariate-tpe+medianstop(start_step={settings['start_step']},"
            f"min_trials_required={settings['min_trials_required']})")


def shipped_medianstop() -> dict | None:
    """tpe.yaml's medianstop settings (Katib's defaults where it leaves one out), None without the file."""
    if not SHIPPED.is_file():  # an installed package has no manifests/
        return None
    stopping = (yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))["spec"].get("earlyStopping") or {})
    settings = {s["name"]: int(s["value"]) for s in stopping.get("algorithmSettings") or []}
    pruner = median.from_settings(settings)
    return {"start_step": pruner.start_step, "min_trials_required": pruner.min_trials_required}


def named_settings(result: dict) -> tuple[str | None, str | None]:
    shipped = shipped_medianstop()
    katib = medianstop_name(shipped) if shipped else None
    # what `trainer search` runs by default on an Experiment of the table's space: trials that train,
    # all for the table's epochs
    rule = space.DEFAULT_EARLY_STOPPING
    return ("multivariate-tpe" if rule == "none" else f"multivariate-tpe+{rule}"), katib


def text_table(result: dict) -> str:
    shown = lambda x: "never" if x is None else f"{x:.3f}"  # noqa: E731
    rows = [f"{'strategy':<66} {'median':>7} {'p90':>7} {'p_reach':>7} {'named':>7}"]
    for name, f in result["strategies"].items():
        mark = "  (default)" if name == result["default"] else ""
        mark += "  (katib)" if name == result["katib_compatible"] else ""
        rows.append(f"{name:<66} {shown(f['median']):>7} {shown(f['p90']):>7} {f['p_reach']:>7.2f} "
                    f"{f['named_final_mean']:>7.4f}{mark}")
    rows.append("spearman(epoch k, final): " + ", ".join(
        f"{k}: {'-' if v is None else f'{v:.2f}'}" for k, v in result["spearman"].items()))
    return "\n".join(rows)


def draw_plot(result: dict, curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["random", "multivariate-tpe", "random+asha", "multivariate-tpe+asha", "hyperband (katib, retrained)"]
    names += [n for n in (result["katib_compatible"], result["default"]) if n and n not in names]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    budget = result["grid"]["trial_epochs"]
    for name in names:
        ax.plot([t / budget for t in range(1, budget + 1)], curves[name], label=name, linewidth=1.3)
    target = result["grid"]["best"] - result["eps"]
    ax.axhline(target, color="#999999", linestyle=":", label=f"grid's best - eps ({result['eps']:.3f})")
    ax.set_xlabel("trial-epochs spent / the grid's trial-epochs")
    ax.set_ylabel("best rouge_avg reached (median over seeds)")
    ax.set_ylim(target - 0.08, result["grid"]["best"] + 0.01)
    ax.set_xlim(0, 0.6)
    ax.set_title(f"trainer bench search: {result['grid']['configs']} configurations x "
                 f"{result['grid']['epochs']} epochs, {result['seeds']} seeds each", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(table: str, output: str, plot: str, seeds: int | None) -> None:
    path = table or str(BUILTIN_TABLE)
    loaded = rp.load_table(path)
    result = rp.replay(loaded, seeds or rp.SEEDS)
    curves = result.pop("curves")
    result["seeds"] = seeds or rp.SEEDS
    result["table"] = path
    result["seed_noise"] = loaded.noise
    result["default"], result["katib_compatible"] = named_settings(result)
    say(text_table(result))
    Path(output).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    say(f"eps {result['eps']:.4f} (max(0.01, 2 x seed noise {loaded.noise})); ratios are trial-epochs to reach "
        f"the grid's best - eps over the grid's {result['grid']['trial_epochs']}; wrote {output}")
    if plot:
        draw_plot(result, curves, plot)
        say(f"plot: {plot}")
