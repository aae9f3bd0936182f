"""The benchmark's figures: medians over rounds, ours/baseline ratios, one trial's phases, the table
and the plot."""

from __future__ import annotations

import statistics

from trainer.bench.data import COMPETITION, TRAIN_BATCH, TRIAL

RATE_KEYS = ("train_samples_per_s", "train_tokens_per_s", "eval_samples_per_s")


def median_figures(records: list[dict], n_train: int, n_eval: int, tokens_per_example: float) -> dict:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in records)

    samples_per_s = statistics.median(min(r["steps"] * TRAIN_BATCH, n_train) / r["train_s"] for r in records)
    figures = {
        "train_samples_per_s": samples_per_s,
        "train_tokens_per_s": samples_per_s * tokens_per_example,
        "eval_samples_per_s": n_eval / med("eval_s"),
        "startup_cold_s": med("startup_cold_s"),
        "startup_warm_s": med("startup_warm_s"),
        "help_s": med("help_s"),
        "peak_rss_mb": med("peak_rss_mb"),
    }
    if all("peak_gpu_mb" in r for r in records):
        figures["peak_gpu_mb"] = med("peak_gpu_mb")
    return {k: round(v, 3) for k, v in figures.items()}


def ratios(ours: dict, baseline: dict) -> dict:
    """How many times better ours is: rates ours/baseline, times and memory baseline/ours."""
    out = {}
    for key in ours:
        if key not in baseline or not ours[key] or not baseline[key]:
            continue
        better_high = key in RATE_KEYS
        out[key] = round(ours[key] / baseline[key] if better_high else baseline[key] / ours[key], 2)
    out["startup_warm_vs_cold"] = round(ours["startup_cold_s"] / ours["startup_warm_s"], 2)
    return out


def trial_phases(figures: dict, subset: int) -> dict:
    """Seconds per phase of one TRIAL on the competition's data, from the measured rates."""
    evaluated = min(subset, COMPETITION["dev"]) if subset else COMPETITION["dev"]
    return {
        "start-up": figures["startup_warm_s"],
        "training": TRIAL["epochs"] * COMPETITION["train"] / figures["train_samples_per_s"],
        "evaluation": TRIAL["epochs"] * evaluated / figures["eval_samples_per_s"],
        "final evaluation": COMPETITION["dev"] / figures["eval_samples_per_s"] if subset else 0.0,
    }


LABELS = {
    "train_samples_per_s": "training samples/s",
    "train_tokens_per_s": "training tokens/s (real, no padding)",
    "eval_samples_per_s": "evaluation samples/s (generate+ROUGE)",
    "startup_cold_s": "start-up, cold cache (s)",
    "startup_warm_s": "start-up, warm cache (s)",
    "help_s": "trainer --help (s)",
    "peak_rss_mb": "peak RSS (MB)",
    "peak_gpu_mb": "peak GPU memory (MB)",
}


def table(result: dict) -> str:
    ours, baseline, ratio = result["ours"], result["baseline"], result["ratios"]
    lines = [f"{'':40} {'ours':>10} {'baseline':>10} {'ratio':>8}"]
    for key, label in LABELS.items():
        if key in ours:
            lines.append(f"{label:40} {ours[key]:>10.2f} {baseline[key]:>10.2f} {ratio.get(key, 0):>7.2f}x")
    lines.append(f"{'ours: warm start-up vs cold':40} {'':>10} {'':>10} {ratio['startup_warm_vs_cold']:>7.2f}x")
    lines.append("ratio: how many times better ours is (faster, or less memory)")
    return "\n".join(lines)


def readable(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def draw_plot(result: dict, path: str) -> None:
    """Per phase of one TRIAL, ours beside the baseline (log scale: start-up is seconds, training hours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trial = result["trial"]
    phases = [p for p in trial["ours"] if trial["ours"][p] or trial["baseline"][p]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for offset, (name, color) in enumerate((("ours", "#1f77b4"), ("baseline", "#bdbdbd"))):
        rows = [i + offset * 0.38 for i in range(len(phases))]
        values = [trial[name][p] for p in phases]
        ax.barh(rows, values, height=0.36, color=color, label=f"{name}: {readable(sum(values))} in all")
        for row, value in zip(rows, values):
            ax.text(max(value, 1) * 1.1, row, readable(value) if value else "none", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(left=1)
    ax.set_yticks([i + 0.19 for i in range(len(phases))], phases)
    ax.invert_yaxis()
    ax.set_xlim(right=ax.get_xlim()[1] * 8)
    ax.set_xlabel("seconds (log scale), projected from the measured rates")
    ax.set_title(f"One trial: {TRIAL['epochs']} epochs on {COMPETITION['train']} dialogues, {COMPETITION['dev']} "
                 f"evaluated (ours: {TRIAL['epoch_eval_samples']} each epoch + all at the end)\n"
                 f"{result['setup']['device']}, {result['setup']['model'].split(' {')[0]}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
