"""`trainer check`'s rules for the search space: each parameter's feasibleSpace, and a grid's axes."""

from __future__ import annotations

import math
import re

from trainer.errors import UsageError
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.experiment import vocabulary as vocab
from trainer.experiment.check_trial import shell_problem
from trainer.experiment.findings import Report
from trainer.flags import format_value


def check_parameters(e: ex.Experiment, report: Report) -> None:
    if not e.parameters and not ex.written(e, "parameters"):
        report.problem("spec.parameters", "missing (nothing to search)")
    names = [p.name for p in e.parameters]
    for name in sorted({n for n in names if names.count(n) > 1}):
        report.problem(f"spec.parameters[{name}]", "declared twice")
    for index, p in enumerate(e.parameters):
        check_parameter(p, f"spec.parameters[{p.name or index}]", report)


def check_parameter(p: ex.Parameter, field: str, report: Report) -> None:
    if not p.name:
        report.problem(field, "name missing")
    if p.parameter_type not in vocab.PARAMETER_TYPES:
        report.problem(f"{field}.parameterType", f"{p.parameter_type or 'missing'!r} is not one of "
                                                 f"{', '.join(vocab.PARAMETER_TYPES)}")
        return
    if p.distribution not in vocab.DISTRIBUTIONS:
        report.problem(f"{field}.feasibleSpace.distribution",
                       f"{p.distribution!r} is not one of {', '.join(d for d in vocab.DISTRIBUTIONS if d)}")
    if not p.feasible_space:
        report.problem(f"{field}.feasibleSpace", "missing")
        return
    if p.parameter_type in ("int", "double"):
        check_range(p, field, report)
    else:
        check_list(p, field, report)


def check_range(p: ex.Parameter, field: str, report: Report) -> None:
    space = f"{field}.feasibleSpace"
    if p.list:
        report.problem(f"{space}.list", f"not allowed for parameterType {p.parameter_type} (use min and max, "
                                        "or make it discrete/categorical)")
    if p.min in (None, "") or p.max in (None, ""):
        report.problem(space, f"{p.parameter_type} needs both min and max")
        return
    numbers = {}
    for key in ("min", "max", "step"):
        value = getattr(p, key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            report.problem(f"{space}.{key}", f"{value!r} must be a quoted string (\"{value}\"); "
                                             "Katib reads it as a string")
        try:
            numbers[key] = float(str(value))
        except ValueError:
            numbers[key] = math.nan
        if not math.isfinite(numbers[key]):
            del numbers[key]
            report.problem(f"{space}.{key}", f"{value!r} is not a finite number")
            continue
        if p.parameter_type == "int" and not re.fullmatch(r"[+-]?\d+", str(value).strip()):
            report.problem(f"{space}.{key}", f"{value!r} is not a whole number (int parameters need e.g. \"10\")")
    low, high, step = numbers.get("min"), numbers.get("max"), numbers.get("step")
    if low is not None and high is not None and low > high:
        report.problem(space, f"min {p.min} is above max {p.max}")
    if step is not None and step <= 0:
        report.problem(f"{space}.step", f"{p.step} must be > 0")
    if p.distribution == "logUniform" and low is not None and low <= 0:
        report.problem(f"{space}.min", f"{p.min} must be > 0 for distribution logUniform")


def check_list(p: ex.Parameter, field: str, report: Report) -> None:
    space = f"{field}.feasibleSpace"
    for key in ("min", "max", "step"):
        if getattr(p, key) not in (None, ""):
            report.problem(f"{space}.{key}", f"not allowed for parameterType {p.parameter_type} "
                                             "(list the values instead)")
    if not p.list:
        report.problem(f"{space}.list", f"{p.parameter_type} needs a non-empty list of values")
        return
    for value in p.list:
        if not isinstance(value, str):
            shown = format_value(value)
            report.problem(f"{space}.list", f"{value!r} must be a quoted string (\"{shown}\"); "
                                            "Katib reads list values as strings")
        elif shell_problem(value):
            report.problem(f"{space}.list", f"{value!r} contains {shell_problem(value)} (Katib joins the "
                                            "trial command unquoted into sh -c)")
    texts = [str(v) for v in p.list]
    for value in sorted({v for v in texts if texts.count(v) > 1}):
        report.problem(f"{space}.list", f"{value!r} is listed twice")
    if p.parameter_type == "discrete":
        for value in texts:
            try:
                float(value)
            except ValueError:
                report.problem(f"{space}.list", f"{value!r} is not a number (discrete lists are numeric; "
                                                "use categorical for names)")


def check_grid(e: ex.Experiment, report: Report) -> None:
    if e.algorithm is None or e.algorithm.name != "grid" or not e.parameters:
        return
    size = 1
    for p in e.parameters:
        field = f"spec.parameters[{p.name}]"
        if any(f.field.startswith(field) for f in report.problems):
            size = None  # already reported; its axis is unknown
            continue
        if p.parameter_type == "double" and p.step in (None, ""):
            report.problem(f"{field}.feasibleSpace.step", "a grid needs a finite list of values: write them as "
                                                          "a discrete list (or set step)")
            size = None
            continue
        try:
            axis = katib_grid.grid_axis(p)
        except UsageError as error:
            report.problem(field, f"not a finite grid axis: {error}")
            size = None
            continue
        if p.parameter_type == "double":
            report.warn(field, f"Katib builds this grid axis with np.arange: {', '.join(axis)}; write a discrete "
                               "list to get exactly the values you mean")
        size = size * len(axis) if size is not None else None
    if size is not None and size > katib_grid.MAX_GRID_POINTS:
        report.problem("spec.parameters", f"the grid has {size} points (at most {katib_grid.MAX_GRID_POINTS}: Katib's grid "
                                          "service, like trainer search, lists every point for Optuna's GridSampler)")
        return
    if size is None or not ex.is_int(e.max_trial_count):
        return
    if e.max_trial_count > size:
        report.problem("spec.maxTrialCount", f"{e.max_trial_count} is above the grid size {size} "
                                             f"(at most {size}: an exhausted grid does not end the Experiment)")
    elif e.max_trial_count < size:
        report.warn("spec.maxTrialCount", f"{e.max_trial_count} visits only part of the {size}-point grid")


def check_hyperband(e: ex.Experiment, report: Report) -> None:
    """Katib's hyperband service: its ValidateAlgorithmSettings in its own words, what passes that
    but fails in the service, and why it does not run past the first rung on a cluster."""
    if e.algorithm is None or e.algorithm.name != "hyperband":
        return
    from trainer.search import hyperband

    field = "spec.algorithm.algorithmSettings"
    settings = e.algorithm.settings
    parallel = ex.parallel_trial_count(e)
    found = hyperband.validation_problems(settings, [p.name for p in e.parameters],
                                          parallel if ex.is_int(parallel) else 0)
    for name, message in found:
        report.problem(f"{field}[{name}]" if name else ("spec.parallelTrialCount" if "parallel" in message else field),
                       f"Katib's hyperband: {message}")
    rungs = [] if found else hyperband.schedule(float(str(settings["r_l"])), hyperband.katib_eta(settings))
    if rungs and min(r.resource for r in rungs) < 1:
        report.problem(f"{field}[r_l]", f"{settings['r_l']} gives trials {settings['resource_name']}=0 (Katib writes "
                                        "int(r_l * eta^-s)): r_l must be at least 1")
    for name, value in settings.items():
        if not isinstance(value, str):
            report.problem(f"{field}[{name}]", f"value {value!r} must be a quoted string (\"{value}\")")
        if name in vocab.HYPERBAND_STATE_SETTINGS:
            report.warn(f"{field}[{name}]", "Katib's hyperband service keeps its own state in this setting: a value "
                                            "here starts its schedule elsewhere (trainer search ignores it)")
        elif name not in vocab.HYPERBAND_SETTINGS:
            report.warn(f"{field}[{name}]", f"unknown to Katib's hyperband (it reads "
                                            f"{', '.join(vocab.HYPERBAND_SETTINGS)}); ignored")
    for p in e.parameters:
        if p.parameter_type == "discrete":
            for value in p.list:
                try:
                    int(str(value))
                except ValueError:
                    report.problem(f"spec.parameters[{p.name}].feasibleSpace.list",
                                   f"Katib's hyperband reads discrete values with int(): {value!r} fails (make it "
                                   "categorical, or double with min and max)")
                    break
        if p.distribution == "logUniform":
            report.warn(f"spec.parameters[{p.name}].feasibleSpace.distribution",
                        "Katib's hyperband draws uniformly between min and max: logUniform is not read")
    if e.early_stopping is not None:
        report.warn("spec.earlyStopping", "Katib's hyperband service fails when a rung has an EarlyStopped trial "
                                          "(it waits for every trial to have Succeeded)")
    report.warn("spec.algorithm.algorithmName", hyperband.CLUSTER_PROBLEM)
