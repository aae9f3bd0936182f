"""Katib's grid: the values its suggestion service visits for each parameter, and every combination,
counted before they are built."""

from __future__ import annotations

import itertools
import math

from trainer.errors import UsageError
from trainer.experiment.spec import Experiment, Parameter

# Katib's grid service and trainer search hand Optuna's GridSampler every point, which lists them all.
MAX_GRID_POINTS = 100_000


def grid_axis(parameter: Parameter) -> list[str]:
    """The values Katib's grid visits for one parameter, as the strings a trial receives.

    Mirrors Katib's suggestion service: int -> range(min, max + 1, step or 1); double ->
    np.arange(min, max + step, step) minus a last value above max (float noise such as
    0.15000000000000002 is kept, as Katib keeps it); categorical/discrete -> the list.
    """
    kind = parameter.parameter_type
    if kind in ("categorical", "discrete"):
        if not parameter.list:
            raise UsageError(f"parameter {parameter.name}: {kind} needs a non-empty feasibleSpace.list")
        return [str(v) for v in parameter.list]
    try:
        low, high = float(parameter.min), float(parameter.max)
        step = float(parameter.step) if parameter.step not in (None, "") else None
    except (TypeError, ValueError):
        raise UsageError(f"parameter {parameter.name}: feasibleSpace min/max/step must be numbers") from None
    if kind == "int":
        try:
            values = range(int(str(parameter.min)), int(str(parameter.max)) + 1, int(str(parameter.step or 1)))
        except ValueError:
            raise UsageError(f"parameter {parameter.name}: int min/max/step must be whole numbers") from None
        refuse_big_axis(parameter, len(values))  # a range is sized without being built
        return [str(v) for v in values]
    if kind == "double":
        if step is None or step <= 0:
            raise UsageError(f"parameter {parameter.name}: a double grid axis needs a step > 0 "
                             "(better: write the values as a discrete list)")
        import numpy as np

        size = (high + step - low) / step  # np.arange's length, before it allocates it
        refuse_big_axis(parameter, math.ceil(size) if math.isfinite(size) else math.inf)
        values = np.arange(low, high + step, step)
        if len(values) and values[-1] > high:
            values = values[:-1]
        return [str(v) for v in values]
    raise UsageError(f"parameter {parameter.name}: unknown parameterType {kind!r}")


def refuse_big_axis(parameter: Parameter, size: float) -> None:
    if size > MAX_GRID_POINTS:
        raise UsageError(f"parameter {parameter.name}: a grid axis of {size:.3g} values (at most {MAX_GRID_POINTS}; "
                         "a larger step, or a discrete list)")


def grid_points(experiment: Experiment) -> list[dict[str, str]]:
    """Every combination Katib's grid would visit ({parameter name: value string}), in product order.

    Katib's Optuna GridSampler visits them in its own order; the set is the same.
    """
    axes = {p.name: grid_axis(p) for p in experiment.parameters}
    size = math.prod(len(axis) for axis in axes.values())
    if size > MAX_GRID_POINTS:
        raise UsageError(f"{experiment.source}: {experiment.name}: the grid has {size} points (at most "
                         f"{MAX_GRID_POINTS}: Optuna's GridSampler lists every one)")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]
