"""The local search's plots: optimization history, parameter importances and parallel coordinates
as PNGs, drawn from an in-memory copy of the study in which every trial with an objective counts
and numeric lists read as numbers."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from trainer.console import say


def plotted_study(study, objectives: dict[int, float]):
    """An in-memory copy for the plots: every trial with an objective (`objectives`, by trial number:
    early-stopped ones too, as Katib counts them) complete with it, and a categorical parameter whose
    values are all numbers (Katib's lists are strings) given as numbers, so its axis runs 8, 16, 32."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    def number(text):  # "8" -> 8, "0.5" -> 0.5; a word raises ValueError
        try:
            return int(text)
        except ValueError:
            return float(text)

    numeric = set()
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            with contextlib.suppress(TypeError, ValueError):
                if isinstance(dist, CategoricalDistribution) and all(number(c) is not None for c in dist.choices):
                    numeric.add(name)
    copy = optuna.create_study(directions=study.directions)
    for t in study.get_trials(deepcopy=False):
        if objectives.get(t.number) is None:
            continue
        params, dists = dict(t.params), dict(t.distributions)
        for name in numeric & set(params):
            params[name] = number(params[name])
            dists[name] = CategoricalDistribution([number(c) for c in dists[name].choices])
        copy.add_trial(create_trial(state=TrialState.COMPLETE, value=objectives[t.number], params=params,
                                    distributions=dists))
    return copy


def save_plots(study, directory: Path, objective: str, objectives: dict[int, float],
               constant: bool = False) -> list[Path]:
    """Optimization history, parameter importances and parallel coordinates as PNGs, with the objective
    named and every trial that has an objective drawn. No importance plot on a constant objective:
    every parameter would get the same share, which reads as a result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    study = plotted_study(study, objectives)
    complete = len(study.get_trials(deepcopy=False))
    params = sorted({name for t in study.get_trials(deepcopy=False) for name in t.params})
    saved = []
    for name, draw, needed in (("optimization_history", plots.plot_optimization_history, 1),
                               ("param_importances", plots.plot_param_importances, 2),
                               ("parallel_coordinate", plots.plot_parallel_coordinate, 1)):
        if complete < needed:
            say(f"plot {name}: skipped (needs {needed} succeeded trials, the study has {complete})")
            continue
        if name == "param_importances" and constant:
            say(f"plot {name}: skipped (every trial has the same objective: no parameter explains anything)")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw(study, target_name=objective)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            readable(figure, name, params)
            visible(figure)
            figure.savefig(directory / f"{name}.png", bbox_inches="tight", dpi=100)
            plt.close(figure)
            saved.append(directory / f"{name}.png")
        except Exception as error:  # a plot is a nice-to-have: the search result stands without it
            say(f"plot {name}: not drawn ({error.__class__.__name__}: {error})")
    return saved


def visible(figure) -> None:
    """Optuna colours the parallel-coordinate lines from white (the worst trial) to dark blue: the
    losing trials vanish on the white page. The same colours from a mid blue on."""
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    for axis in figure.axes:
        for lines in axis.collections:
            if isinstance(lines, LineCollection) and lines.get_cmap() is not None:
                cmap = lines.get_cmap()
                lines.set_cmap(ListedColormap(cmap(np.linspace(0.45, 1.0, 256)), name=cmap.name))


def readable(figure, name: str, params: list[str]) -> None:
    """Room for the parameter names, and the names whole: Optuna cuts long ones to `gradient_accumula...`.
    One column of the parallel-coordinate plot per parameter, names slanted; a bar per importance."""
    if name == "parallel_coordinate":
        figure.set_size_inches(max(8.0, 2.2 * (len(params) + 1)), 5.5)
    elif name == "param_importances":
        figure.set_size_inches(8.0, max(3.0, 0.5 * len(params) + 1.5))
    for axis in figure.axes:
        for getter, setter in ((axis.get_xticklabels, axis.set_xticklabels), (axis.get_yticklabels, axis.set_yticklabels)):
            labels = getter()
            texts = [whole_name(label.get_text(), params) for label in labels]
            if any(text != label.get_text() for text, label in zip(texts, labels)):
                setter(texts)
        if name == "parallel_coordinate":
            for label in axis.get_xticklabels():
                label.set_rotation(30)
                label.set_horizontalalignment("right")
    figure.tight_layout()


def whole_name(text: str, params: list[str]) -> str:
    """The parameter a label Optuna shortened with `...` stands for (the label itself otherwise)."""
    if not text.endswith("..."):
        return text
    matches = [p for p in params if p.startswith(text[:-3])]
    return matches[0] if len(matches) == 1 else text
