"""How sure a search's result is: each trial's 95% interval over its evaluation examples, and whether
the best trial can be told apart from each other one on the same examples (paired).

Both are percentile bootstraps over examples: the evaluation set is one sample of dialogues, so
a trial's mean ROUGE moves with the sample; the paired difference of two trials on the same
examples moves much less, which is what decides a tie.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the same resamples every time: a rerun shows the same intervals


@dataclass
class Scores:
    """Per-example scores of one trial's kept model, by example id."""
    ids: list[str]
    values: list[float]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


def read_scores(predictions: Path, metric: str) -> Scores | None:
    """The `metric` column of a trial's predictions.csv (None where the file or column is missing)."""
    try:
        with predictions.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    if not rows or metric not in rows[0] or "id" not in rows[0]:
        return None
    try:
        return Scores(ids=[r["id"] for r in rows], values=[float(r[metric]) for r in rows])
    except (TypeError, ValueError):
        return None


def bootstrap_means(values, resamples: int = RESAMPLES, seed: int = SEED):
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    return data[picks].mean(axis=1)


def interval(values, level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values`."""
    import numpy as np

    means = bootstrap_means(values)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_interval(a: Scores, b: Scores, level: float = LEVEL) -> tuple[float, float] | None:
    """Interval of mean(a - b) over the examples both scored (None when they share none)."""
    by_id = dict(zip(b.ids, b.values))
    shared = [(x, by_id[i]) for i, x in zip(a.ids, a.values) if i in by_id]
    if not shared or len(shared) != len(a.ids) or len(shared) != len(b.ids):
        return None
    return interval([x - y for x, y in shared], level)


def tied_with_best(best: Scores | None, others: dict[str, Scores | None], best_value: float,
                   values: dict[str, float], maximize: bool) -> list[str]:
    """Names of the trials the data cannot tell apart from the best: an equal objective, or a paired
    interval of the difference that holds 0."""
    tied = []
    for name, scores in others.items():
        if values[name] == best_value:
            tied.append(name)
            continue
        if best is None or scores is None:
            continue
        found = paired_interval(best, scores)
        if found is None:
            continue
        low, high = found if maximize else (-found[1], -found[0])
        if low <= 0:
            tied.append(name)
    return tied
