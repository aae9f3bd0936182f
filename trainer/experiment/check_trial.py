"""`trainer check`'s rules for how trials run: the metrics collector, the trial template (Katib's
webhook rules) and the trial command (every argument a trainer flag, every value one the trainer
accepts, nothing the shell would split)."""

from __future__ import annotations

import json
import re

from trainer.errors import UsageError
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.experiment import vocabulary as vocab
from trainer.experiment.check_job import check_pod_failure_policy
from trainer.experiment.findings import Report
from trainer.flags import flag_name, parse_flags
from trainer.run.config import COMMAND_FLAGS, PRESETS, build_config, unknown_flag_message
from trainer.run.report import (
    FILTER_TIMEOUT_S,
    FINAL_METRIC_NAMES,
    METRIC_NAMES,
    filter_matches,
    format_metric_line,
    parse_line,
)

# Every epoch's names, then the end-of-run line's (whole-set figures under --epoch_eval_samples).
PRINTED = METRIC_NAMES + FINAL_METRIC_NAMES
# Larger grids get their values checked one axis at a time, not every combination.
FULL_GRID_CHECK_LIMIT = 512
# Lines a metricsFormat filter must read in bounded time: runs of these characters, PROBE_LENGTH long.
PROBE_CHARACTERS = "a1 =-._|e+:#"
PROBE_LENGTH = 4096
# Katib joins command and args with spaces into `sh -c` without quoting.
SHELL_UNSAFE = re.compile(r"[\s;&|<>`'\"\\*?()\[\]$]")


def shell_problem(text: str, template: bool = True) -> str | None:
    """'a space' / "the shell character ';'" when `text` would not survive sh -c unquoted. In a
    template (an argument) the ${trialParameters.x} placeholders are left out: their values are checked."""
    match = SHELL_UNSAFE.search(ex.PARAM_REF.sub("x", text) if template else text)
    if not match:
        return None
    return "a space" if match.group().isspace() else f"the shell character {match.group()!r}"


def check_collector(e: ex.Experiment, report: Report) -> None:
    kind = e.metrics_collector.kind
    field = "spec.metricsCollectorSpec.collector.kind"
    if kind == "None":
        report.problem(field, "None was removed from Katib (Push replaces it); this trainer prints its "
                              "metrics on stdout: use StdOut")
        return
    if kind not in vocab.COLLECTORS:
        report.problem(field, f"{kind!r} is not a collector kind ({', '.join(vocab.COLLECTORS)})")
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
    for pattern in filters:
        slow = slow_filter_line(pattern, sample)
        if slow:
            report.problem(field, f"{pattern!r} takes over {FILTER_TIMEOUT_S:g} s on {slow} (nested repetition "
                                  "backtracks; trainer search would stall on such output): simplify it")
            return
    _, found = parse_line(sample, wanted, ex.metric_filters(e))
    missing = [n for n in wanted if n not in {name for name, _ in found}]
    if missing:
        report.problem(field, f"does not read {', '.join(missing)} from the trainer's metric line "
                              f"({sample!r})")


def slow_filter_line(pattern: str, sample: str) -> str | None:
    """A description of the first probe line (long runs of one character, as progress output and
    hashes have; the metric line repeated) on which the filter exceeds its time limit, or None."""
    probes = [(f"a line of {PROBE_LENGTH} {c!r}", c * PROBE_LENGTH + "!") for c in PROBE_CHARACTERS]
    probes.append(("the metric line repeated", " ".join([sample] * (PROBE_LENGTH // len(sample) + 1))))
    for description, line in probes:
        try:
            filter_matches(pattern, line)
        except TimeoutError:
            return description
    return None


# ---------------------------------------------------------------- trial template


def check_template(e: ex.Experiment, report: Report) -> bool:
    """Katib's trialTemplate rules; True when the template is sound enough to check its command."""
    t = e.trial_template
    field = "spec.trialTemplate"
    if t is None:
        if not ex.written(e, "trialTemplate"):
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
        check_pod_failure_policy(t.trial_spec, report, early_stopping=e.early_stopping is not None)
    sound = check_trial_parameters(e, report)
    if t.primary_container_name and job and ex.primary_container(e) is None:
        names = ", ".join(str(c.get("name")) for c in ex.containers(e)) or "none"
        report.problem(f"{field}.primaryContainerName", f"{t.primary_container_name!r} is not a container "
                                                        f"of the trial Job (containers: {names})")
        return False
    return sound and job and bool(t.primary_container_name)


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
        elif ex.meta_key(tp.reference):
            check_meta_value(e, tp, label, report)
    for used in sorted(set(ex.PARAM_REF.findall(text)) - names):
        report.problem(field, f"${{trialParameters.{used}}} is used in the trialSpec but not declared here")
        sound = False
    for name in sorted(parameters - refs):
        report.problem(f"spec.parameters[{name}]", "no trialParameter references it: the search would vary a "
                                                   "value no trial receives")
    return sound


def check_meta_value(e: ex.Experiment, tp: ex.TrialParameter, label: str, report: Report) -> None:
    """What a meta reference (${trialSpec.Annotations[x]}, Labels[x], Namespace, ...) resolves to reaches
    `sh -c` unquoted when the trial's command or args use it: it must be as plain as a literal argument."""
    container = ex.primary_container(e) or {}
    argv = [str(a) for key in ("command", "args") for a in (container.get(key) or []) if isinstance(a, str)]
    if not any("${trialParameters.%s}" % tp.name in arg for arg in argv):
        return  # used elsewhere (an env value, a label): no shell reads it
    value = ex.meta_value(e, tp.reference, f"{e.name}-trial")
    problem = shell_problem(value, template=False)
    if problem:
        report.problem(f"{label}.reference", f"{tp.reference} resolves to {value!r}, which contains {problem}; "
                                             "Katib puts it unquoted into the trial's sh -c command line")


# ---------------------------------------------------------------- trial command


def check_trial_command(e: ex.Experiment, report: Report) -> None:
    container = ex.primary_container(e)
    field = "spec.trialTemplate.trialSpec.containers[%s]" % container.get("name")
    for key in ("command", "args"):
        value = container.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(a, str) for a in value)):
            report.problem(f"{field}.{key}", f"must be a list of strings, e.g. [\"--seed=1\"] (got {value!r})")
            return
    shell = f'command: [sh, -c], args: ["{ex.SHELL_TRAP}", trainer, --flag=value ..., "{ex.SHELL_WAIT}"]'
    if not container.get("command"):
        report.problem(f"{field}.command", f"missing: spell out {shell} (Katib's collector rewrites command+args "
                                           "into sh -c and would otherwise look the image ENTRYPOINT up in the registry)")
        return
    raw = ex.container_argv(e)
    if len(raw) > 1 and raw[1] == "-c" and not ex.in_trial_shell(raw):
        report.problem(f"{field}.args", f"a {raw[0]} -c trial command must be the trainer's trial shell, {shell}, "
                                        "which passes an eviction's SIGTERM on and waits for the checkpoint")
        return
    argv = ex.template_argv(e)
    if argv[0] != "trainer":
        report.problem(f"{field}.command", f"runs {argv[0]!r}: trials run the trainer itself, one process "
                                           f"({shell}; a launcher defeats early stopping)")
        return
    if not ex.in_trial_shell(raw):
        report.warn(f"{field}.command", "the trainer runs right under Katib's sh -c, which an eviction's SIGTERM ends "
                                        "at once; containerd then kills the trainer before it saves its checkpoint: "
                                        f"use {shell}")
    command, args = ex.trial_command(argv)
    check_values(e, check_arguments(args, f"{field}.args", report, command), report)


def check_arguments(args: list[str], field: str, report: Report, command: str = "train") -> dict[str, str]:
    """{flag: argument} of the usable `--flag=value` arguments; the others are reported."""
    flags = {}
    for arg in args:
        name = flag_name(arg)
        if shell_problem(arg):
            report.problem(field, f"{arg!r} contains {shell_problem(arg)} (Katib joins command and args "
                                  "unquoted into sh -c); write one --flag=value per argument")
        elif not arg.startswith("--"):
            report.problem(field, f"{arg!r} is not a --flag=value argument")
        elif name not in COMMAND_FLAGS[command]:
            report.problem(field, f"{arg!r}: {unknown_flag_message(name, command)}")
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
    base = {p.name: (ex.sample_values(e, p) or ["0"])[0] for p in e.parameters}
    field = "spec.trialTemplate.trialSpec.args"
    static_error = trainer_error(e, base, static)
    if static_error:
        report.problem(field, f"rejected by the trainer: {static_error}")
    seen = set()
    for p in e.parameters:
        for value in ex.sample_values(e, p):
            flags = ([] if static_error else static) + by_param.get(p.name, [])
            message = trainer_error(e, {**base, p.name: value}, flags)
            if message and message not in seen:
                seen.add(message)
                report.problem(f"spec.parameters[{p.name}]", f"value {value!r} is rejected by the trainer: {message}")
    points = safe_grid(e) if e.algorithm and e.algorithm.name == "grid" else []
    if not static_error and not seen and not points:
        check_pairs(e, base, static, by_param, report)
    if not static_error and not seen and len(points) <= FULL_GRID_CHECK_LIMIT:
        for point in points:
            message = trainer_error(e, point, list(flag_args))
            if message and message not in seen:
                seen.add(message)
                shown = " ".join(f"{k}={v}" for k, v in point.items())
                report.problem("spec.parameters", f"grid point {shown} is rejected by the trainer: {message}")


def check_pairs(e: ex.Experiment, base: dict[str, str], static: list[str], by_param: dict[str, list[str]],
                report: Report) -> None:
    """Every pair of two parameters' sample values together: a sampler may draw any combination,
    and some only fail together (--num_beams=1 with a --length_penalty other than 1)."""
    seen = set()
    for i, p in enumerate(e.parameters):
        for q in e.parameters[i + 1:]:
            flags = static + by_param.get(p.name, []) + by_param.get(q.name, [])
            for a in ex.sample_values(e, p):
                for b in ex.sample_values(e, q):
                    message = trainer_error(e, {**base, p.name: a, q.name: b}, flags)
                    if message and message not in seen:
                        seen.add(message)
                        report.problem("spec.parameters", f"{p.name}={a} with {q.name}={b} is rejected by the "
                                                          f"trainer: {message}")


def safe_grid(e: ex.Experiment) -> list[dict[str, str]]:
    try:
        return katib_grid.grid_points(e)
    except UsageError:
        return []


def trainer_error(e: ex.Experiment, assignment: dict[str, str], names: list[str]) -> str | None:
    """What the trainer says about the named flags of this assignment's trial argv (None: accepted)."""
    try:
        argv = ex.trial_args(e, assignment, f"{e.name or 'trial'}-check")
        command, args = ex.trial_command(argv)
        # A preset file is read inside the trial pod (the outputs volume): not here.
        build_config({k: v for k, v in parse_flags(args).items()
                      if k in names and (k != "preset" or v in PRESETS)}, command=command)
    except UsageError as error:
        return str(error)
    return None
