"""`trainer check PATH...`: what Katib would reject in an Experiment, found offline.

Two sets of rules:
- Katib's admission rules (its validating webhook, the suggestion and early-stopping services'
  setting checks, and the typed decoding of the spec), so `kubectl apply` does not fail or,
  worse, create an Experiment that fails minutes later;
- what only this project knows: every trial argument is a flag the trainer accepts, every
  value a parameter can take passes the trainer's own validation, the metric names are ones
  the trainer prints, grid axes are finite and maxTrialCount fits the grid.

One line per problem, `FILE: EXPERIMENT: FIELD: what is wrong (what is allowed)`; exit 1 if
any, else one summary line and exit 0. Warnings (legal but probably unintended) go to stderr.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass

from trainer.experiment import spec as ex
from trainer.run.config import FLAGS, UsageError, build_config, unknown_flag_message
from trainer.run.report import FINAL_METRIC_NAMES, METRIC_NAMES, format_metric_line, parse_line

NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME_LENGTH = 40
OBJECTIVE_TYPES = ("minimize", "maximize")
STRATEGIES = ("min", "max", "latest")
RESUME_POLICIES = ("", "Never", "LongRunning", "FromVolume")
PARAMETER_TYPES = ("int", "double", "categorical", "discrete")
DISTRIBUTIONS = ("", "uniform", "logUniform", "normal", "logNormal")
COLLECTORS = ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "Push")
# Katib's default katib-config suggestion services; enas/darts search architectures (nasConfig).
ALGORITHMS = ("random", "tpe", "multivariate-tpe", "grid", "cmaes", "sobol", "hyperband",
              "bayesianoptimization", "pbt")
NAS_ALGORITHMS = ("enas", "darts")
EARLY_STOPPING = ("medianstop",)
LOWER_IS_BETTER = {"eval_loss", "final_eval_loss"}
# Every epoch's names, then the end-of-run line's (whole-set figures under --eval_max_samples).
PRINTED = METRIC_NAMES + FINAL_METRIC_NAMES
# Larger grids get their values checked one axis at a time, not every combination.
FULL_GRID_CHECK_LIMIT = 512
# Katib joins command and args with spaces into `sh -c` without quoting.
SHELL_UNSAFE = re.compile(r"[\s;&|<>`'\"\\*?()\[\]$]")


def shell_problem(text: str) -> str | None:
    """'a space' / "the shell character ';'" when `text` would not survive sh -c unquoted."""
    match = SHELL_UNSAFE.search(ex.PARAM_REF.sub("x", text))
    if not match:
        return None
    return "a space" if match.group().isspace() else f"the shell character {match.group()!r}"


def _int_at_least(minimum):
    def ok(value: str) -> bool:
        try:
            return int(value) >= minimum
        except ValueError:
            return False

    return ok, f"an integer >= {minimum}"


def _float_between(low, high=None):
    def ok(value: str) -> bool:
        try:
            number = float(value)
        except ValueError:
            return False
        return math.isfinite(number) and number > low and (high is None or number < high)

    return ok, f"a number in ({low}, {high if high is not None else 'inf'})"


# Settings each Katib service accepts (its ValidateAlgorithmSettings / medianstop validation).
ALGORITHM_SETTINGS = {
    "random": {"random_state": _int_at_least(0)},
    "grid": {"random_state": _int_at_least(0)},
    "tpe": {"gamma": _float_between(0, 1), "prior_weight": _float_between(0),
            "n_EI_candidates": _int_at_least(1), "random_state": _int_at_least(0)},
    "multivariate-tpe": {"n_startup_trials": _int_at_least(0), "n_ei_candidates": _int_at_least(0),
                         "random_state": _int_at_least(0)},
}
EARLY_STOPPING_SETTINGS = {
    "medianstop": {"min_trials_required": _int_at_least(1), "start_step": _int_at_least(1)},
}


@dataclass
class Finding:
    field: str
    message: str


class Report:
    """Problems and warnings for one Experiment."""

    def __init__(self):
        self.problems: list[Finding] = []
        self.warnings: list[Finding] = []

    def problem(self, field: str, message: str) -> None:
        self.problems.append(Finding(field, message))

    def warn(self, field: str, message: str) -> None:
        self.warnings.append(Finding(field, message))


# ---------------------------------------------------------------- entry point


def check(*paths, stdin: bool = False) -> None:
    """Check Katib Experiments (files, folders, or rendered kustomize output on stdin: `-` or no path)."""
    names = [str(p) for p in paths]
    files = [p for p in names if p != "-"]
    read_stdin = stdin or not files or "-" in names
    if read_stdin and not (stdin or "-" in names) and sys.stdin.isatty():
        raise UsageError("give Experiment files or folders, or pipe rendered YAML: kubectl kustomize . | "
                         "trainer check -")
    text = sys.stdin.read() if read_stdin else None
    experiments = ex.load_experiments(files, text=text)
    if not experiments:
        where = ", ".join(files + (["<stdin>"] if text is not None else []))
        raise UsageError(f"no Katib Experiment (apiVersion kubeflow.org/v1beta1, kind Experiment) in {where}")
    if print_findings(experiments, out=sys.stdout):
        raise SystemExit(1)
    kinds = ", ".join(f"{e.name} ({e.algorithm.name})" for e in experiments)
    noun = "Experiment" if len(experiments) == 1 else "Experiments"
    print(f"{len(experiments)} {noun} OK: {kinds}")


def print_findings(experiments: list[ex.Experiment], out) -> int:
    """One line per problem on `out` (warnings on stderr); returns the number of problems."""
    problems = 0
    for experiment, report in zip(experiments, check_all(experiments)):
        label = f"{experiment.source}: {experiment.name or '<no name>'}"
        for finding in report.warnings:
            print(f"{label}: {finding.field}: warning: {finding.message}", file=sys.stderr)
        for finding in report.problems:
            print(f"{label}: {finding.field}: {finding.message}", file=out)
        problems += len(report.problems)
    out.flush()
    return problems


def check_all(experiments: list[ex.Experiment]) -> list[Report]:
    reports = [check_experiment(e) for e in experiments]
    seen: dict[tuple[str, str], str] = {}
    for experiment, report in zip(experiments, reports):
        key = (experiment.namespace, experiment.name)
        if experiment.name and key in seen:
            report.problem("metadata.name", f"another Experiment in {seen[key]} has the same name "
                                            "(names are unique per namespace)")
        seen.setdefault(key, experiment.source)
    return reports


def check_experiment(e: ex.Experiment) -> Report:
    report = Report()
    check_shapes(e, report)
    check_name(e, report)
    check_counts(e, report)
    check_objective(e, report)
    check_algorithm(e, report)
    check_early_stopping(e, report)
    if e.resume_policy not in RESUME_POLICIES:
        report.problem("spec.resumePolicy", f"{e.resume_policy!r} is not a resume policy "
                                            f"({', '.join(p for p in RESUME_POLICIES if p)})")
    check_parameters(e, report)
    check_grid(e, report)
    check_collector(e, report)
    if check_template(e, report):
        check_trial_command(e, report)
    return report


# ---------------------------------------------------------------- metadata and counts


SHAPES = {"objective": dict, "algorithm": dict, "earlyStopping": dict, "parameters": list,
          "trialTemplate": dict, "metricsCollectorSpec": dict}


def written(e: ex.Experiment, key: str) -> bool:
    """spec.<key> is there, whatever its shape (check_shapes reports a wrong one)."""
    return isinstance(e.raw.get("spec"), dict) and key in e.raw["spec"]


def check_shapes(e: ex.Experiment, report: Report) -> None:
    """Fields of the wrong YAML type (Katib's typed decoding rejects them; the parser skips them)."""
    spec = e.raw.get("spec")
    if not isinstance(spec, dict):
        report.problem("spec", "missing or not a mapping")
        return
    for key, kind in SHAPES.items():
        if key in spec and not isinstance(spec[key], kind):
            report.problem(f"spec.{key}", f"must be a {'mapping' if kind is dict else 'list'}")
    for index, item in enumerate(spec.get("parameters") if isinstance(spec.get("parameters"), list) else []):
        if not isinstance(item, dict):
            report.problem(f"spec.parameters[{index}]", "must be a mapping (name, parameterType, feasibleSpace)")
    template = spec.get("trialTemplate") if isinstance(spec.get("trialTemplate"), dict) else {}
    if "trialParameters" in template and not isinstance(template["trialParameters"], list):
        report.problem("spec.trialTemplate.trialParameters", "must be a list")
    if "trialSpec" in template and not isinstance(template["trialSpec"], dict):
        report.problem("spec.trialTemplate.trialSpec", "must be a mapping (a batch/v1 Job)")



def check_name(e: ex.Experiment, report: Report) -> None:
    if not e.name:
        report.problem("metadata.name", "missing")
    elif not NAME_RE.fullmatch(e.name):
        report.problem("metadata.name", f"{e.name!r} is not a valid Experiment name (lower-case letters, "
                                        "digits and '-', starting with a letter and ending with a letter or digit)")
    elif len(e.name) > MAX_NAME_LENGTH:
        report.problem("metadata.name", f"{e.name!r} has {len(e.name)} characters (at most {MAX_NAME_LENGTH}: "
                                        "Katib derives trial and pod names from it)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_counts(e: ex.Experiment, report: Report) -> None:
    counts = {"maxTrialCount": e.max_trial_count, "parallelTrialCount": e.parallel_trial_count,
              "maxFailedTrialCount": e.max_failed_trial_count}
    for name, value in counts.items():
        if value is not None and not _is_int(value):
            report.problem(f"spec.{name}", f"{value!r} is not an integer (write it unquoted)")
    valid = {name: value for name, value in counts.items() if _is_int(value)}
    most, parallel, failed = (valid.get(n) for n in counts)
    if e.max_trial_count is None:
        report.problem("spec.maxTrialCount", "missing (without it the Experiment never ends by itself)")
    if most is not None and most <= 0:
        report.problem("spec.maxTrialCount", f"{most} must be greater than 0")
    if parallel is not None and parallel <= 0:
        report.problem("spec.parallelTrialCount", f"{parallel} must be greater than 0")
    if failed is not None and failed < 0:
        report.problem("spec.maxFailedTrialCount", f"{failed} must not be less than 0")
    if most is not None and most > 0:
        if failed is not None and failed > most:
            report.problem("spec.maxFailedTrialCount", f"{failed} is above maxTrialCount {most} (at most {most})")
        effective = parallel if e.parallel_trial_count is not None else ex.DEFAULT_PARALLEL_TRIAL_COUNT
        if effective is not None and effective > most:
            default = "" if e.parallel_trial_count is not None else " (Katib's default when omitted)"
            report.problem("spec.parallelTrialCount",
                           f"{effective}{default} is above maxTrialCount {most} (at most {most})")


# ---------------------------------------------------------------- objective


def check_objective(e: ex.Experiment, report: Report) -> None:
    o = e.objective
    if o is None:
        if not written(e, "objective"):
            report.problem("spec.objective", "missing")
        return
    allowed = ", ".join(PRINTED)
    if o.type not in OBJECTIVE_TYPES:
        report.problem("spec.objective.type", f"{o.type!r} is not minimize or maximize")
    if not o.objective_metric_name:
        report.problem("spec.objective.objectiveMetricName", "missing")
    elif o.objective_metric_name not in PRINTED:
        report.problem("spec.objective.objectiveMetricName",
                       f"{o.objective_metric_name!r} is not a metric the trainer prints ({allowed})")
    elif o.type in OBJECTIVE_TYPES:
        wanted = "minimize" if o.objective_metric_name in LOWER_IS_BETTER else "maximize"
        if o.type != wanted:
            report.problem("spec.objective.type", f"{o.type} {o.objective_metric_name} would search for the "
                                                  f"worst settings ({wanted} it)")
    if o.objective_metric_name in o.additional_metric_names:
        report.problem("spec.objective.additionalMetricNames",
                       f"repeats the objective {o.objective_metric_name!r} (list only the other metrics)")
    for name in sorted({n for n in o.additional_metric_names if o.additional_metric_names.count(n) > 1}):
        report.problem("spec.objective.additionalMetricNames", f"{name!r} is listed twice")
    for name in o.additional_metric_names:
        if name not in PRINTED:
            report.problem("spec.objective.additionalMetricNames",
                           f"{name!r} is not a metric the trainer prints ({allowed})")
    check_goal(o, report)
    metrics = ex.metric_names(e)
    for name, value in o.metric_strategies.items():
        if name not in metrics:
            report.problem("spec.objective.metricStrategies", f"{name!r} is neither the objective nor an "
                                                              f"additional metric ({', '.join(metrics)})")
        if value not in STRATEGIES:
            report.problem("spec.objective.metricStrategies", f"{name}: {value!r} is not a strategy "
                                                              f"({', '.join(STRATEGIES)})")


def check_goal(o: ex.Objective, report: Report) -> None:
    if o.goal is None:
        return
    if isinstance(o.goal, bool) or not isinstance(o.goal, (int, float)) or not math.isfinite(o.goal):
        report.problem("spec.objective.goal", f"{o.goal!r} is not a number (write it unquoted)")
    elif o.objective_metric_name.startswith("rouge") and not 0 < o.goal <= 1:
        report.problem("spec.objective.goal", f"{o.goal} can never be reached: the trainer prints "
                                              f"{o.objective_metric_name} as a fraction in [0, 1]")


# ---------------------------------------------------------------- algorithm and early stopping


def check_settings(field: str, algorithm: str, settings: dict, rules: dict, report: Report) -> None:
    for name, value in settings.items():
        if not isinstance(value, str):
            report.problem(f"{field}[{name}]", f"value {value!r} must be a quoted string (\"{value}\")")
            continue
        if name not in rules:
            known = ", ".join(rules) or "none"
            report.problem(f"{field}[{name}]", f"unknown setting for {algorithm} (known: {known})")
            continue
        ok, allowed = rules[name]
        if not ok(value):
            report.problem(f"{field}[{name}]", f"{value!r} is not {allowed}")


def check_algorithm(e: ex.Experiment, report: Report) -> None:
    a = e.algorithm
    if a is None and written(e, "algorithm"):
        return
    if a is None or not a.name:
        report.problem("spec.algorithm.algorithmName", f"missing ({', '.join(ALGORITHMS)})")
        return
    if a.name in NAS_ALGORITHMS:
        report.problem("spec.algorithm.algorithmName", f"{a.name} searches network architectures (nasConfig), "
                                                       f"not hyperparameters ({', '.join(ALGORITHMS)})")
        return
    if a.name not in ALGORITHMS:
        report.problem("spec.algorithm.algorithmName", f"{a.name!r} is not a Katib algorithm "
                                                       f"({', '.join(ALGORITHMS)})")
        return
    if a.name in ALGORITHM_SETTINGS:  # the other services' settings are not checked here
        check_settings("spec.algorithm.algorithmSettings", a.name, a.settings, ALGORITHM_SETTINGS[a.name], report)
    parallel = e.parallel_trial_count if e.parallel_trial_count is not None else ex.DEFAULT_PARALLEL_TRIAL_COUNT
    if a.name == "tpe" and _is_int(parallel) and parallel > 1:
        report.problem("spec.algorithm.algorithmName",
                       f"tpe is served by hyperopt, which gives all {parallel} parallel trials of a batch the "
                       "same suggestion (use multivariate-tpe, or parallelTrialCount: 1)")


def check_early_stopping(e: ex.Experiment, report: Report) -> None:
    es = e.early_stopping
    if es is None:
        return
    if es.name not in EARLY_STOPPING:
        report.problem("spec.earlyStopping.algorithmName", f"{es.name!r} is not a Katib early-stopping "
                                                           f"algorithm ({', '.join(EARLY_STOPPING)})")
        return
    check_settings("spec.earlyStopping.algorithmSettings", es.name, es.settings,
                   EARLY_STOPPING_SETTINGS[es.name], report)
    if e.metrics_collector.kind not in ("StdOut", "File"):
        report.problem("spec.earlyStopping", f"medianstop needs the StdOut or File collector, not "
                                             f"{e.metrics_collector.kind}")
    check_start_step(e, es, report)


def check_start_step(e: ex.Experiment, es: ex.Algorithm, report: Report) -> None:
    """A trial shorter than start_step evaluations is never judged: say so (it is legal)."""
    start = es.settings.get("start_step", "4")
    epochs = epoch_values(e)
    try:
        start, shortest = int(start), min(float(v) for v in epochs) if epochs else None
    except (TypeError, ValueError):
        return
    if shortest is not None and start >= shortest:
        report.warn("spec.earlyStopping.algorithmSettings[start_step]",
                    f"{start} >= the shortest trial ({shortest:g} epochs, one evaluation each): "
                    "such trials are never stopped early")


def epoch_values(e: ex.Experiment) -> list[str]:
    """Candidate --num_train_epochs values: the bounds or list of the parameter behind that flag."""
    try:
        argv = ex.template_argv(e)
    except UsageError:
        return []
    refs = {tp.name: tp.reference for tp in (e.trial_template.trial_parameters or [])}
    by_name = {p.name: p for p in e.parameters}
    for name, value in ex.parse_flags(argv[1:]).items():
        if name != "num_train_epochs":
            continue
        used = ex.PARAM_REF.findall(value)
        param = by_name.get(refs.get(used[0], "")) if used else None
        if param is None:
            return [value] if not used else []
        return [str(v) for v in param.list] if param.list else [str(param.min), str(param.max)]
    return []


# ---------------------------------------------------------------- parameters


def check_parameters(e: ex.Experiment, report: Report) -> None:
    if not e.parameters and not written(e, "parameters"):
        report.problem("spec.parameters", "missing (nothing to search)")
    names = [p.name for p in e.parameters]
    for name in sorted({n for n in names if names.count(n) > 1}):
        report.problem(f"spec.parameters[{name}]", "declared twice")
    for index, p in enumerate(e.parameters):
        check_parameter(p, f"spec.parameters[{p.name or index}]", report)


def check_parameter(p: ex.Parameter, field: str, report: Report) -> None:
    if not p.name:
        report.problem(field, "name missing")
    if p.parameter_type not in PARAMETER_TYPES:
        report.problem(f"{field}.parameterType", f"{p.parameter_type or 'missing'!r} is not one of "
                                                 f"{', '.join(PARAMETER_TYPES)}")
        return
    if p.distribution not in DISTRIBUTIONS:
        report.problem(f"{field}.feasibleSpace.distribution",
                       f"{p.distribution!r} is not one of {', '.join(d for d in DISTRIBUTIONS if d)}")
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
            shown = ex.format_value(value)
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


# ---------------------------------------------------------------- grid


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
            axis = ex.grid_axis(p)
        except UsageError as error:
            report.problem(field, f"not a finite grid axis: {error}")
            size = None
            continue
        if p.parameter_type == "double":
            report.warn(field, f"Katib builds this grid axis with np.arange: {', '.join(axis)}; write a discrete "
                               "list to get exactly the values you mean")
        size = size * len(axis) if size is not None else None
    if size is None or not _is_int(e.max_trial_count):
        return
    if e.max_trial_count > size:
        report.problem("spec.maxTrialCount", f"{e.max_trial_count} is above the grid size {size} "
                                             f"(at most {size}: an exhausted grid does not end the Experiment)")
    elif e.max_trial_count < size:
        report.warn("spec.maxTrialCount", f"{e.max_trial_count} visits only part of the {size}-point grid")


# ---------------------------------------------------------------- metrics collector


def check_collector(e: ex.Experiment, report: Report) -> None:
    kind = e.metrics_collector.kind
    field = "spec.metricsCollectorSpec.collector.kind"
    if kind == "None":
        report.problem(field, "None was removed from Katib (Push replaces it); this trainer prints its "
                              "metrics on stdout: use StdOut")
        return
    if kind not in COLLECTORS:
        report.problem(field, f"{kind!r} is not a collector kind ({', '.join(COLLECTORS)})")
        return
    if kind != "StdOut":
        report.problem(field, f"{kind}: the trainer reports its metrics on stdout (use StdOut)")
        return
    filters = e.metrics_collector.metrics_format
    field = "spec.metricsCollectorSpec.source.filter.metricsFormat"
    for pattern in filters:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            report.problem(field, f"{pattern!r} is not a valid regex ({error})")
            return
        if compiled.groups < 2:
            report.problem(field, f"{pattern!r} needs two groups: the metric name and its value")
            return
    wanted = [n for n in ex.metric_names(e) if n in PRINTED]
    sample = format_metric_line({name: 0.5 for name in PRINTED}, epoch=1)
    _, found = parse_line(sample, wanted, ex.metric_filters(e))
    missing = [n for n in wanted if n not in {name for name, _ in found}]
    if missing:
        report.problem(field, f"does not read {', '.join(missing)} from the trainer's metric line "
                              f"({sample!r})")


# ---------------------------------------------------------------- trial template


def check_template(e: ex.Experiment, report: Report) -> bool:
    """Katib's trialTemplate rules; True when the template is sound enough to check its command."""
    t = e.trial_template
    field = "spec.trialTemplate"
    if t is None:
        if not written(e, "trialTemplate"):
            report.problem(field, "missing")
        return False
    if t.config_map is not None:
        report.problem(f"{field}.configMap", "not supported here: write the trialSpec inline so "
                                             "`trainer check` and `trainer search` can read it")
        return False
    if t.trial_spec is None:
        if "trialSpec" not in e.raw["spec"]["trialTemplate"]:
            report.problem(f"{field}.trialSpec", "missing")
        return False
    if not t.primary_container_name:
        report.problem(f"{field}.primaryContainerName", "missing (the container that runs the trainer)")
    job = ex.is_batch_job(t.trial_spec)
    if not job and not (t.success_condition and t.failure_condition):
        report.problem(field, "successCondition and failureCondition are required (Katib has defaults only "
                              "for batch/v1 Job)")
    meta = t.trial_spec.get("metadata") if isinstance(t.trial_spec.get("metadata"), dict) else {}
    if meta.get("name") or meta.get("namespace"):
        report.problem(f"{field}.trialSpec.metadata", "must not set name or namespace (Katib names each trial)")
    if not t.trial_spec.get("apiVersion") or not t.trial_spec.get("kind"):
        report.problem(f"{field}.trialSpec", "apiVersion and kind are required")
    elif not job:
        report.problem(f"{field}.trialSpec", f"{t.trial_spec.get('apiVersion')}/{t.trial_spec.get('kind')}: "
                                             "trials of this trainer are batch/v1 Jobs (one process, one GPU)")
    if job:
        check_pod_failure_policy(t.trial_spec, report)
    sound = check_trial_parameters(e, report)
    if t.primary_container_name and job and ex.primary_container(e) is None:
        names = ", ".join(str(c.get("name")) for c in ex.containers(e)) or "none"
        report.problem(f"{field}.primaryContainerName", f"{t.primary_container_name!r} is not a container "
                                                        f"of the trial Job (containers: {names})")
        return False
    return sound and job and bool(t.primary_container_name)


POD_FAILURE_ACTIONS = ("FailJob", "Ignore", "Count", "FailIndex")
EXIT_CODE_OPERATORS = ("In", "NotIn")
CONDITION_STATUSES = ("True", "False", "Unknown")


def check_pod_failure_policy(job: dict, report: Report) -> None:
    """The Job API's podFailurePolicy rules (batch/v1, stable since Kubernetes 1.31)."""
    spec = job.get("spec") if isinstance(job.get("spec"), dict) else {}
    policy = spec.get("podFailurePolicy")
    if policy is None:
        return
    field = "spec.trialTemplate.trialSpec.spec.podFailurePolicy"
    rules = policy.get("rules") if isinstance(policy, dict) else None
    if not isinstance(rules, list) or not rules:
        report.problem(f"{field}.rules", "must be a non-empty list of rules")
        return
    template = spec.get("template") if isinstance(spec.get("template"), dict) else {}
    pod = template.get("spec") if isinstance(template.get("spec"), dict) else {}
    if pod.get("restartPolicy") != "Never":
        report.problem(f"{field}", f"needs template.spec.restartPolicy Never (it is {pod.get('restartPolicy')!r})")
    names = [c.get("name") for key in ("containers", "initContainers") for c in pod.get(key) or []
             if isinstance(c, dict)]
    for index, rule in enumerate(rules):
        label = f"{field}.rules[{index}]"
        if not isinstance(rule, dict):
            report.problem(label, "must be a mapping")
            continue
        if rule.get("action") not in POD_FAILURE_ACTIONS:
            report.problem(f"{label}.action", f"{rule.get('action')!r} is not one of {', '.join(POD_FAILURE_ACTIONS)}")
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            report.problem(label, "needs exactly one of onExitCodes and onPodConditions")
        if "onExitCodes" in rule:
            check_on_exit_codes(rule["onExitCodes"], names, f"{label}.onExitCodes", report)
        if "onPodConditions" in rule:
            conditions = rule["onPodConditions"]
            if not isinstance(conditions, list) or not conditions:
                report.problem(f"{label}.onPodConditions", "must be a non-empty list of {type: ...}")
                continue
            for number, condition in enumerate(conditions):
                where = f"{label}.onPodConditions[{number}]"
                if not isinstance(condition, dict) or not condition.get("type"):
                    report.problem(where, "needs a type (e.g. DisruptionTarget)")
                elif condition.get("status", "True") not in CONDITION_STATUSES:
                    report.problem(f"{where}.status", f"{condition['status']!r} is not one of "
                                                      f"{', '.join(CONDITION_STATUSES)}")


def check_on_exit_codes(codes, names: list, label: str, report: Report) -> None:
    if not isinstance(codes, dict):
        report.problem(label, "must be a mapping of containerName, operator, values")
        return
    name = codes.get("containerName")
    # Without containerName every container's exit code matches, the Katib sidecar's included.
    if name is not None and name not in names:
        report.problem(f"{label}.containerName", f"{name!r} is not a container of the trial Job "
                                                 f"(containers: {', '.join(map(str, names)) or 'none'})")
    operator = codes.get("operator")
    if operator not in EXIT_CODE_OPERATORS:
        report.problem(f"{label}.operator", f"{operator!r} is not one of {', '.join(EXIT_CODE_OPERATORS)}")
    values = codes.get("values")
    if not isinstance(values, list) or not values or not all(type(v) is int for v in values):
        report.problem(f"{label}.values", "must be a non-empty list of integer exit codes")
    elif operator == "In" and 0 in values:
        report.problem(f"{label}.values", "0 is not allowed with operator In (a successful exit)")
    elif values != sorted(set(values)):
        report.problem(f"{label}.values", "must be in increasing order without repeats")


def check_trial_parameters(e: ex.Experiment, report: Report) -> bool:
    t = e.trial_template
    field = "spec.trialTemplate.trialParameters"
    if t.trial_parameters is None:
        report.problem(field, "missing")
        return False
    text = json.dumps(t.trial_spec)
    parameters = {p.name for p in e.parameters}
    names, refs, sound = set(), set(), True
    for tp in t.trial_parameters:
        label = f"{field}[{tp.name or '?'}]"
        if not tp.name or not tp.reference or "{" in tp.name or "}" in tp.name:
            report.problem(label, "needs a name (without { or }) and a reference")
            sound = False
            continue
        if tp.name in names:
            report.problem(label, "name declared twice")
            sound = False
        if tp.reference in refs:
            report.problem(f"{label}.reference", f"{tp.reference!r} is referenced twice")
            sound = False
        names.add(tp.name)
        refs.add(tp.reference)
        if not ex.meta_key(tp.reference) and tp.reference not in parameters:
            report.problem(f"{label}.reference", f"{tp.reference!r} is neither a parameter "
                                                 f"({', '.join(sorted(parameters)) or 'none'}) nor a meta key "
                                                 "like ${trialSpec.Name}")
            sound = False
        if "${trialParameters.%s}" % tp.name not in text:
            report.problem(label, f"not used in the trialSpec (add ${{trialParameters.{tp.name}}} to an argument)")
    for used in sorted(set(ex.PARAM_REF.findall(text)) - names):
        report.problem(field, f"${{trialParameters.{used}}} is used in the trialSpec but not declared here")
        sound = False
    for name in sorted(parameters - refs):
        report.problem(f"spec.parameters[{name}]", "no trialParameter references it: the search would vary a "
                                                   "value no trial receives")
    return sound


# ---------------------------------------------------------------- trial command


def check_trial_command(e: ex.Experiment, report: Report) -> None:
    container = ex.primary_container(e)
    field = "spec.trialTemplate.trialSpec.containers[%s]" % container.get("name")
    for key in ("command", "args"):
        value = container.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(a, str) for a in value)):
            report.problem(f"{field}.{key}", f"must be a list of strings, e.g. [\"--seed=1\"] (got {value!r})")
            return
    argv = ex.template_argv(e)
    if not container.get("command"):
        report.problem(f"{field}.command", "missing: spell out command: [trainer] (Katib's collector rewrites "
                                           "command+args into sh -c and would otherwise look the image "
                                           "ENTRYPOINT up in the registry)")
        return
    if argv[0] != "trainer":
        report.problem(f"{field}.command", f"runs {argv[0]!r}: trials run the trainer itself, one process "
                                           "(command: [trainer]; a launcher defeats early stopping)")
        return
    check_values(e, check_arguments(argv[1:], f"{field}.args", report), report)


def check_arguments(args: list[str], field: str, report: Report) -> dict[str, str]:
    """{flag: argument} of the usable `--flag=value` arguments; the others are reported."""
    flags = {}
    for arg in args:
        name = arg[2:].partition("=")[0].replace("-", "_")
        if shell_problem(arg):
            report.problem(field, f"{arg!r} contains {shell_problem(arg)} (Katib joins command and args "
                                  "unquoted into sh -c); write one --flag=value per argument")
        elif not arg.startswith("--"):
            report.problem(field, f"{arg!r} is not a --flag=value argument")
        elif name not in FLAGS:
            report.problem(field, f"{arg!r}: {unknown_flag_message(name)}")
        elif name in flags:
            report.problem(field, f"--{name} is given twice")
        else:
            flags[name] = arg
    return flags


def check_values(e: ex.Experiment, flag_args: dict[str, str], report: Report) -> None:
    """Every value a trial can receive passes the trainer's own validation (build_config).

    The fixed arguments are checked alone; then each parameter's sample values (bounds, list
    values, grid points) on top of them; for a grid, every full combination as well.
    """
    refs = {tp.name: tp.reference for tp in e.trial_template.trial_parameters}
    by_param: dict[str, list[str]] = {}
    static = []
    for name, arg in flag_args.items():
        used = [refs[n] for n in ex.PARAM_REF.findall(arg) if not ex.meta_key(refs.get(n, ""))]
        for reference in used:
            by_param.setdefault(reference, []).append(name)
        if not used:
            static.append(name)
    # Any value does for parameters whose flags are not being checked; "0" when none is usable.
    base = {p.name: (sample_values(e, p) or ["0"])[0] for p in e.parameters}
    field = "spec.trialTemplate.trialSpec.args"
    static_error = trainer_error(e, base, static)
    if static_error:
        report.problem(field, f"rejected by the trainer: {static_error}")
    seen = set()
    for p in e.parameters:
        for value in sample_values(e, p):
            flags = ([] if static_error else static) + by_param.get(p.name, [])
            message = trainer_error(e, {**base, p.name: value}, flags)
            if message and message not in seen:
                seen.add(message)
                report.problem(f"spec.parameters[{p.name}]", f"value {value!r} is rejected by the trainer: {message}")
    points = safe_grid(e) if e.algorithm and e.algorithm.name == "grid" else []
    if not static_error and not seen and len(points) <= FULL_GRID_CHECK_LIMIT:
        for point in points:
            message = trainer_error(e, point, list(flag_args))
            if message and message not in seen:
                seen.add(message)
                shown = " ".join(f"{k}={v}" for k, v in point.items())
                report.problem("spec.parameters", f"grid point {shown} is rejected by the trainer: {message}")


def sample_values(e: ex.Experiment, p: ex.Parameter) -> list[str]:
    """Values a trial may receive: the list, the grid axis, or the bounds as Katib formats them."""
    if p.parameter_type in ("categorical", "discrete"):
        return [ex.format_value(v) for v in (p.list or [])]
    if e.algorithm and e.algorithm.name == "grid":
        try:
            return ex.grid_axis(p)
        except UsageError:
            return []
    try:
        low, high = float(str(p.min)), float(str(p.max))
        return [str(int(low)), str(int(high))] if p.parameter_type == "int" else [str(low), str(high)]
    except (ValueError, OverflowError):  # reported by check_range
        return []


def safe_grid(e: ex.Experiment) -> list[dict[str, str]]:
    try:
        return ex.grid_points(e)
    except UsageError:
        return []


def trainer_error(e: ex.Experiment, assignment: dict[str, str], names: list[str]) -> str | None:
    """What the trainer says about the named flags of this assignment's trial argv (None: accepted)."""
    try:
        argv = ex.trial_args(e, assignment, f"{e.name or 'trial'}-check")
        build_config({k: v for k, v in ex.parse_flags(argv[1:]).items() if k in names})
    except UsageError as error:
        return str(error)
    return None
