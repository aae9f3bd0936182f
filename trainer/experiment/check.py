"""`trainer check PATH...`: what Katib would reject in an Experiment, found offline.

Two sets of rules:
- Katib's admission rules (its validating webhook, the suggestion and early-stopping services'
  setting checks, and the typed decoding of the spec), so `kubectl apply` does not fail or,
  worse, create an Experiment that fails minutes later;
- what only this project knows: every trial argument is a flag the trainer accepts, every
  value a parameter can take passes the trainer's own validation, the metric names are ones
  the trainer prints, grid axes are finite and maxTrialCount fits the grid.

The rules live in three modules: this one (the Experiment's metadata, counts, objective,
algorithm and early stopping), check_space.py (parameters and grid) and check_trial.py (metrics
collector, trial template and command). One line per problem, `FILE: EXPERIMENT: FIELD: what is wrong (what is allowed)`; exit 1 if
any, else one summary line and exit 0. Warnings (legal but probably unintended) go to stderr.
"""

from __future__ import annotations

import math
import sys

from trainer.errors import UsageError
from trainer.experiment import spec as ex
from trainer.experiment import vocabulary as vocab
from trainer.experiment.check_space import check_grid, check_hyperband, check_parameters
from trainer.experiment.check_trial import PRINTED, check_collector, check_template, check_trial_command
from trainer.experiment.findings import Report
from trainer.flags import parse_flags

LOWER_IS_BETTER = {"eval_loss", "final_eval_loss"}


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
EARLY_STOPPING_RULES = {
    "medianstop": {"min_trials_required": _int_at_least(1), "start_step": _int_at_least(1)},
}


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
    if e.resume_policy not in vocab.RESUME_POLICIES:
        report.problem("spec.resumePolicy", f"{e.resume_policy!r} is not a resume policy "
                                            f"({', '.join(p for p in vocab.RESUME_POLICIES if p)})")
    check_parameters(e, report)
    check_grid(e, report)
    check_hyperband(e, report)
    check_collector(e, report)
    if check_template(e, report):
        check_trial_command(e, report)
    return report


# ---------------------------------------------------------------- metadata and counts


SHAPES = {"objective": dict, "algorithm": dict, "earlyStopping": dict, "parameters": list,
          "trialTemplate": dict, "metricsCollectorSpec": dict}


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
    elif not vocab.NAME_RE.fullmatch(e.name):
        report.problem("metadata.name", f"{e.name!r} is not a valid Experiment name (lower-case letters, "
                                        "digits and '-', starting with a letter and ending with a letter or digit)")
    elif len(e.name) > vocab.MAX_NAME_LENGTH:
        report.problem("metadata.name", f"{e.name!r} has {len(e.name)} characters (at most {vocab.MAX_NAME_LENGTH}: "
                                        "Katib derives trial and pod names from it)")


def check_counts(e: ex.Experiment, report: Report) -> None:
    counts = {"maxTrialCount": e.max_trial_count, "parallelTrialCount": e.parallel_trial_count,
              "maxFailedTrialCount": e.max_failed_trial_count}
    for name, value in counts.items():
        if value is not None and not ex.is_int(value):
            report.problem(f"spec.{name}", f"{value!r} is not an integer (write it unquoted)")
    for name, value in counts.items():
        if ex.is_int(value) and not vocab.INT32_MIN <= value <= vocab.INT32_MAX:
            report.problem(f"spec.{name}", f"{value} does not fit the int32 Katib stores it in "
                                           f"({vocab.INT32_MIN}..{vocab.INT32_MAX})")
    valid = {name: value for name, value in counts.items()
             if ex.is_int(value) and vocab.INT32_MIN <= value <= vocab.INT32_MAX}
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
        effective = parallel if e.parallel_trial_count is not None else ex.parallel_trial_count(e)
        if effective is not None and effective > most:
            default = "" if e.parallel_trial_count is not None else " (Katib's default when omitted)"
            report.problem("spec.parallelTrialCount",
                           f"{effective}{default} is above maxTrialCount {most} (at most {most})")


# ---------------------------------------------------------------- objective


def check_objective(e: ex.Experiment, report: Report) -> None:
    o = e.objective
    if o is None:
        if not ex.written(e, "objective"):
            report.problem("spec.objective", "missing")
        return
    allowed = ", ".join(PRINTED)
    if o.type not in vocab.OBJECTIVE_TYPES:
        report.problem("spec.objective.type", f"{o.type!r} is not minimize or maximize")
    if not o.objective_metric_name:
        report.problem("spec.objective.objectiveMetricName", "missing")
    elif o.objective_metric_name not in PRINTED:
        report.problem("spec.objective.objectiveMetricName",
                       f"{o.objective_metric_name!r} is not a metric the trainer prints ({allowed})")
    elif o.type in vocab.OBJECTIVE_TYPES:
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
        if value not in vocab.STRATEGIES:
            report.problem("spec.objective.metricStrategies", f"{name}: {value!r} is not a strategy "
                                                              f"({', '.join(vocab.STRATEGIES)})")


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
    if a is None and ex.written(e, "algorithm"):
        return
    if a is None or not a.name:
        report.problem("spec.algorithm.algorithmName", f"missing ({', '.join(vocab.ALGORITHMS)})")
        return
    if a.name in vocab.NAS_ALGORITHMS:
        report.problem("spec.algorithm.algorithmName", f"{a.name} searches network architectures (nasConfig), "
                                                       f"not hyperparameters ({', '.join(vocab.ALGORITHMS)})")
        return
    if a.name not in vocab.ALGORITHMS:
        report.problem("spec.algorithm.algorithmName", f"{a.name!r} is not a Katib algorithm "
                                                       f"({', '.join(vocab.ALGORITHMS)})")
        return
    if a.name in ALGORITHM_SETTINGS:  # the other services' settings are not checked here
        check_settings("spec.algorithm.algorithmSettings", a.name, a.settings, ALGORITHM_SETTINGS[a.name], report)
    parallel = ex.parallel_trial_count(e)
    if a.name == "tpe" and ex.is_int(parallel) and parallel > 1:
        report.problem("spec.algorithm.algorithmName",
                       f"tpe is served by hyperopt, which gives all {parallel} parallel trials of a batch the "
                       "same suggestion (use multivariate-tpe, or parallelTrialCount: 1)")


def check_early_stopping(e: ex.Experiment, report: Report) -> None:
    es = e.early_stopping
    if es is None:
        return
    if es.name not in vocab.EARLY_STOPPING:
        report.problem("spec.earlyStopping.algorithmName", f"{es.name!r} is not a Katib early-stopping "
                                                           f"algorithm ({', '.join(vocab.EARLY_STOPPING)})")
        return
    check_settings("spec.earlyStopping.algorithmSettings", es.name, es.settings,
                   EARLY_STOPPING_RULES[es.name], report)
    if e.metrics_collector.kind not in ("StdOut", "File"):
        report.problem("spec.earlyStopping", f"medianstop needs the StdOut or File collector, not "
                                             f"{e.metrics_collector.kind}")
    check_start_step(e, es, report)


def check_start_step(e: ex.Experiment, es: ex.Algorithm, report: Report) -> None:
    """A trial shorter than start_step evaluations is never judged: say so (it is legal)."""
    start = es.settings.get("start_step", vocab.MEDIANSTOP_DEFAULT_START_STEP)
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
    for name, value in parse_flags(argv[1:]).items():
        if name != "num_train_epochs":
            continue
        used = ex.PARAM_REF.findall(value)
        param = by_name.get(refs.get(used[0], "")) if used else None
        if param is None:
            return [value] if not used else []
        return [str(v) for v in param.list] if param.list else [str(param.min), str(param.max)]
    return []
