"""Katib v1beta1 Experiment YAML -> a plain typed spec, and what a trial of it would run.

The Experiment file is the one place a search space is written. `trainer check` validates it
offline, `trainer search` runs it locally; both read it through `load_experiments`.

Parsing is lenient on purpose: fields keep the values as written (Katib wants strings for
feasibleSpace min/max/step/list, but a user may write numbers) so that `trainer check` can
report every problem instead of stopping at the first. The helpers below (`trial_args`,
`grid_points`, `metric_filters`) raise UsageError when the spec is too broken to use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import UsageError
from trainer.experiment import vocabulary as vocab
from trainer.experiment.safe_yaml import load_documents
from trainer.flags import format_value, parse_flags
from trainer.run.report import KATIB_DEFAULT_FILTER

PARAM_REF = re.compile(r"\$\{trialParameters\.(.+?)\}")
META_REF = re.compile(r"^\$\{trialSpec\.(.+)\}$")
# Trainer subcommands a trial may run instead of training (the decode Experiment's evaluate).
TRIAL_COMMANDS = ("evaluate",)


@dataclass
class Objective:
    type: str = ""
    objective_metric_name: str = ""
    goal: Any = None
    additional_metric_names: list[str] = field(default_factory=list)
    metric_strategies: dict[str, str] = field(default_factory=dict)  # metric name -> min|max|latest


@dataclass
class Algorithm:
    name: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # algorithmSettings name -> value


@dataclass
class Parameter:
    name: str
    parameter_type: str = ""  # int | double | categorical | discrete
    min: Any = None  # as written; Katib wants strings ("1e-5")
    max: Any = None
    step: Any = None
    list: list[Any] | None = None
    distribution: str = ""  # "" (uniform) | uniform | logUniform | normal | logNormal
    feasible_space: dict = field(default_factory=dict)  # the raw mapping


@dataclass
class TrialParameter:
    name: str
    reference: str = ""
    description: str = ""


@dataclass
class TrialTemplate:
    primary_container_name: str = ""
    trial_parameters: list[TrialParameter] | None = None
    success_condition: str = ""
    failure_condition: str = ""
    trial_spec: dict | None = None
    config_map: dict | None = None


@dataclass
class MetricsCollector:
    kind: str = vocab.DEFAULT_COLLECTOR
    metrics_format: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    namespace: str
    source: str  # file path, or "<stdin>"
    objective: Objective | None
    algorithm: Algorithm | None
    early_stopping: Algorithm | None
    parameters: list[Parameter]
    max_trial_count: Any
    parallel_trial_count: Any
    max_failed_trial_count: Any
    resume_policy: str
    metrics_collector: MetricsCollector
    trial_template: TrialTemplate | None
    raw: dict  # the whole document, for checks that need more


# ---------------------------------------------------------------- loading


def load_experiments(paths=(), text: str | None = None) -> list[Experiment]:
    """Every Experiment in the given files/folders (or in `text`, read as "<stdin>").

    Folders are searched recursively for *.yaml/*.yml; documents of other kinds are ignored.
    """
    experiments = []
    if text is not None:
        experiments += parse_documents(text, "<stdin>")
    for path in paths:
        for file in yaml_files(Path(path)):
            try:
                content = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise UsageError(f"{file}: cannot read ({error.__class__.__name__}: {error})") from None
            experiments += parse_documents(content, str(file))
    return experiments


def yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if path.is_file():
        return [path]
    raise UsageError(f"{path}: no such file or folder")


def parse_documents(text: str, source: str) -> list[Experiment]:
    import yaml

    try:
        documents = load_documents(text, source)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or error.__class__.__name__
        raise UsageError(f"{source}: not valid YAML{where}: {problem}") from None
    return [
        parse_experiment(doc, source)
        for doc in documents
        if isinstance(doc, dict) and doc.get("kind") == vocab.KIND and str(doc.get("apiVersion", "")).startswith(vocab.API_GROUP)
    ]


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _items(value) -> list:
    return value if isinstance(value, list) else []


def _settings(items) -> dict[str, Any]:
    return {str(s.get("name", "")): s.get("value") for s in _items(items) if isinstance(s, dict)}


def parse_experiment(doc: dict, source: str) -> Experiment:
    meta, spec = _mapping(doc.get("metadata")), _mapping(doc.get("spec"))
    return Experiment(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        source=source,
        objective=_objective(spec["objective"]) if isinstance(spec.get("objective"), dict) else None,
        algorithm=_algorithm(spec["algorithm"]) if isinstance(spec.get("algorithm"), dict) else None,
        early_stopping=_algorithm(spec["earlyStopping"]) if isinstance(spec.get("earlyStopping"), dict) else None,
        parameters=[_parameter(p) for p in _items(spec.get("parameters")) if isinstance(p, dict)],
        max_trial_count=spec.get("maxTrialCount"),
        parallel_trial_count=spec.get("parallelTrialCount"),
        max_failed_trial_count=spec.get("maxFailedTrialCount"),
        resume_policy=str(spec.get("resumePolicy", "") or ""),
        metrics_collector=_collector(_mapping(spec.get("metricsCollectorSpec"))),
        trial_template=_template(spec["trialTemplate"]) if isinstance(spec.get("trialTemplate"), dict) else None,
        raw=doc,
    )


def _objective(o: dict) -> Objective:
    strategies = {
        str(s.get("name", "")): str(s.get("value", ""))
        for s in _items(o.get("metricStrategies"))
        if isinstance(s, dict)
    }
    return Objective(
        type=str(o.get("type", "") or ""),
        objective_metric_name=str(o.get("objectiveMetricName", "") or ""),
        goal=o.get("goal"),
        additional_metric_names=[str(n) for n in _items(o.get("additionalMetricNames"))],
        metric_strategies=strategies,
    )


def _algorithm(a: dict) -> Algorithm:
    return Algorithm(name=str(a.get("algorithmName", "") or ""), settings=_settings(a.get("algorithmSettings")))


def _parameter(p: dict) -> Parameter:
    space = _mapping(p.get("feasibleSpace"))
    values = space.get("list")
    return Parameter(
        name=str(p.get("name", "") or ""),
        parameter_type=str(p.get("parameterType", "") or ""),
        min=space.get("min"),
        max=space.get("max"),
        step=space.get("step"),
        list=list(values) if isinstance(values, list) else None,
        distribution=str(space.get("distribution", "") or ""),
        feasible_space=space,
    )


def _collector(m: dict) -> MetricsCollector:
    source = _mapping(m.get("source"))
    formats = _mapping(source.get("filter")).get("metricsFormat")
    kind = _mapping(m.get("collector")).get("kind") or vocab.DEFAULT_COLLECTOR
    return MetricsCollector(kind=str(kind), metrics_format=[str(f) for f in _items(formats)], source=source)


def _template(t: dict) -> TrialTemplate:
    params = t.get("trialParameters")
    return TrialTemplate(
        primary_container_name=str(t.get("primaryContainerName", "") or ""),
        trial_parameters=None if params is None else [
            TrialParameter(
                name=str(p.get("name", "") or ""),
                reference=str(p.get("reference", "") or ""),
                description=str(p.get("description", "") or ""),
            )
            for p in _items(params)
            if isinstance(p, dict)
        ],
        success_condition=str(t.get("successCondition", "") or ""),
        failure_condition=str(t.get("failureCondition", "") or ""),
        trial_spec=t.get("trialSpec") if isinstance(t.get("trialSpec"), dict) else None,
        config_map=t.get("configMap") if isinstance(t.get("configMap"), dict) else None,
    )


# ---------------------------------------------------------------- helpers


def written(experiment: Experiment, key: str) -> bool:
    """spec.<key> is there, whatever its shape (`trainer check` reports a wrong one)."""
    return isinstance(experiment.raw.get("spec"), dict) and key in experiment.raw["spec"]


def is_int(value) -> bool:
    """A YAML integer (Katib's int32 fields), not a bool or a quoted number."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_batch_job(spec: dict | None) -> bool:
    return isinstance(spec, dict) and spec.get("apiVersion") == "batch/v1" and spec.get("kind") == "Job"


def containers(experiment: Experiment) -> list[dict]:
    """The containers of the trial Job's pod template ([] when there is no Job-shaped trialSpec)."""
    template = experiment.trial_template
    spec = template.trial_spec if template else None
    pod = _mapping(_mapping(_mapping(_mapping(spec).get("spec")).get("template")).get("spec"))
    return [c for c in _items(pod.get("containers")) if isinstance(c, dict)]


def primary_container(experiment: Experiment) -> dict | None:
    name = experiment.trial_template.primary_container_name if experiment.trial_template else ""
    return next((c for c in containers(experiment) if c.get("name") == name), None)


# The shell each trial's trainer runs under: command: [sh, -c], args: [SHELL_TRAP, trainer, its
# flags..., SHELL_WAIT]. Katib's StdOut collector keeps a given `sh -c`, joins the rest with spaces
# and appends `1>metrics.log 2>&1 || ... && ...` (pkg/webhook/v1beta1/pod/utils.go,
# wrapWorkerContainer); the braces take that redirect for the whole group. That shell is the
# container's process: the kubelet's SIGTERM at an eviction goes to it, and once it ends the runtime
# SIGKILLs what is left in the container (containerd's runc shim kills all when the pod shares its
# process namespace, as Katib's collector makes it). So it passes SIGTERM on to the trainer, waits
# again while the trainer saves its checkpoint, and ends with the trainer's exit status. The
# trainer stays its one child, which Katib's collector signals to stop a trial early.
SHELL_COMMAND = ["sh", "-c"]
SHELL_TRAP = "{ trap 'kill -TERM $p' TERM;"
SHELL_WAIT = "& p=$!; wait $p; s=$?; if kill -0 $p 2>/dev/null; then wait $p; s=$?; fi; (exit $s); }"


def container_argv(experiment: Experiment) -> list[str]:
    """The primary container's command + args as written, unsubstituted."""
    container = primary_container(experiment)
    if container is None:
        raise UsageError(f"{experiment.source}: {experiment.name}: trialTemplate has no primary container "
                         f"named {experiment.trial_template.primary_container_name if experiment.trial_template else ''!r}")
    command, args = container.get("command"), container.get("args")
    return [str(a) for a in _items(command)] + [str(a) for a in _items(args)]


def in_trial_shell(argv: list[str]) -> bool:
    """Whether a container's command + args are the trainer under SHELL_TRAP ... SHELL_WAIT."""
    return len(argv) > 4 and argv[:2] == SHELL_COMMAND and argv[2] == SHELL_TRAP and argv[-1] == SHELL_WAIT


def template_argv(experiment: Experiment) -> list[str]:
    """The trainer's argv in the trial template, unsubstituted: command + args, without the trial shell."""
    argv = container_argv(experiment)
    return argv[3:-1] if in_trial_shell(argv) else argv


def edit_trainer_args(container: dict, change) -> None:
    """container["args"] with the trainer's own arguments (after the program, before SHELL_WAIT where
    the trial shell is there) replaced by change(those arguments)."""
    args = [str(a) for a in _items(container.get("args"))]
    if in_trial_shell([str(a) for a in _items(container.get("command"))] + args):
        container["args"] = [*args[:2], *change(args[2:-1]), args[-1]]
    else:
        container["args"] = change(args)


def in_shell(argv: list[str]) -> list[str]:
    """A trainer argv as the trial container's command + args (SHELL_TRAP ... SHELL_WAIT)."""
    return [*SHELL_COMMAND, SHELL_TRAP, *argv, SHELL_WAIT]


def meta_key(reference: str) -> str | None:
    """'Name' for '${trialSpec.Name}', 'Labels' for '${trialSpec.Labels[x]}'; None if not a meta key."""
    match = META_REF.match(reference)
    if not match:
        return None
    key = match.group(1)
    sub = re.fullmatch(r"(.+)\[(.+)\]", key)
    key = sub.group(1) if sub else key
    return key if key in vocab.META_KEYS else None


def meta_value(experiment: Experiment, reference: str, trial_name: str) -> str:
    key = META_REF.match(reference).group(1)
    spec = _mapping(experiment.trial_template.trial_spec)
    sub = re.fullmatch(r"(Labels|Annotations)\[(.+)\]", key)
    if sub:
        return str(_mapping(_mapping(spec.get("metadata")).get(sub.group(1).lower())).get(sub.group(2), ""))
    return {
        "Name": trial_name,
        "Namespace": experiment.namespace or "default",
        "Kind": str(spec.get("kind", "")),
        "APIVersion": str(spec.get("apiVersion", "")),
    }.get(key, "")


def trial_args(experiment: Experiment, assignment: dict[str, Any], trial_name: str) -> list[str]:
    """The argv a trial pod would run: command + args with every ${trialParameters.x} replaced.

    `assignment` maps Experiment parameter names to values; meta references such as
    ${trialSpec.Name} get `trial_name` (Name), the namespace, kind, ... as Katib fills them.
    """
    argv = template_argv(experiment)
    values = {}
    for tp in experiment.trial_template.trial_parameters or []:
        if meta_key(tp.reference):
            values[tp.name] = meta_value(experiment, tp.reference, trial_name)
        elif tp.reference in assignment:
            values[tp.name] = format_value(assignment[tp.reference])
        else:
            raise UsageError(f"{experiment.source}: {experiment.name}: no value for parameter "
                             f"{tp.reference!r} (trialParameter {tp.name})")

    def substitute(match: re.Match) -> str:
        if match.group(1) not in values:
            raise UsageError(f"{experiment.source}: {experiment.name}: {match.group(0)} is not declared in "
                             "trialTemplate.trialParameters")
        return values[match.group(1)]

    return [PARAM_REF.sub(substitute, arg) for arg in argv]


def searched_flags(e: Experiment) -> set[str]:
    """Trainer flags whose argument carries a searched parameter."""
    refs = {tp.name: tp.reference for tp in e.trial_template.trial_parameters or []}
    params = {p.name for p in e.parameters}
    return {flag for flag, value in parse_flags(template_argv(e)[1:]).items()
            if any(refs.get(n) in params for n in PARAM_REF.findall(value))}


def trial_command(argv: list[str]) -> tuple[str, list[str]]:
    """(trainer command, its arguments) of a trial argv: `trainer evaluate --...` is a decoding
    trial, checked against evaluate's flags; `trainer --...` is training."""
    if len(argv) > 1 and argv[1] in TRIAL_COMMANDS:
        return argv[1], argv[2:]
    return "train", argv[1:]


def sample_values(e: Experiment, p: Parameter) -> list[str]:
    """Values a trial may receive: the list, the grid axis, or the bounds as Katib formats them."""
    if p.parameter_type in ("categorical", "discrete"):
        return [format_value(v) for v in (p.list or [])]
    if e.algorithm and e.algorithm.name == "grid":
        from trainer.experiment.grid import grid_axis  # grid.py reads this module's types

        try:
            return grid_axis(p)
        except UsageError:
            return []
    try:
        low, high = float(str(p.min)), float(str(p.max))
        return [str(int(low)), str(int(high))] if p.parameter_type == "int" else [str(low), str(high)]
    except (ValueError, OverflowError):  # reported by check_range
        return []


def trial_job(experiment: Experiment) -> dict:
    """The trialSpec as a standalone object named after the Experiment, for tools that do not
    look inside custom resources (kubernetes-validate, checkov). Placeholders stay unsubstituted."""
    import copy

    spec = copy.deepcopy(experiment.trial_template.trial_spec if experiment.trial_template else None)
    if not isinstance(spec, dict):
        raise UsageError(f"{experiment.source}: {experiment.name}: no trialTemplate.trialSpec")
    meta = spec.setdefault("metadata", {})
    meta["name"] = f"{experiment.name}-trial"
    if experiment.namespace:
        meta["namespace"] = experiment.namespace
    return spec


def metric_filters(experiment: Experiment) -> list[str]:
    """The regexes Katib's collector applies to each stdout line (its default when none is set)."""
    return list(experiment.metrics_collector.metrics_format) or [KATIB_DEFAULT_FILTER]


def metric_names(experiment: Experiment) -> list[str]:
    """Objective first, then the additional metrics."""
    if experiment.objective is None:
        return []
    return [experiment.objective.objective_metric_name, *experiment.objective.additional_metric_names]


def metric_strategies(objective: Objective) -> dict[str, str]:
    """min | max | latest for every metric: the objective's metricStrategies, else Katib's default."""
    default = vocab.default_strategy(objective.type)
    names = [objective.objective_metric_name, *objective.additional_metric_names]
    return {**{n: default for n in names}, **objective.metric_strategies}


def parallel_trial_count(experiment: Experiment):
    """parallelTrialCount as written, or Katib's default when it is omitted."""
    count = experiment.parallel_trial_count
    return count if count is not None else vocab.DEFAULT_PARALLEL_TRIAL_COUNT


def active_deadline_s(experiment: Experiment) -> float | None:
    """The trial Job's activeDeadlineSeconds, when it sets a positive one."""
    spec = _mapping(_mapping(experiment.trial_template.trial_spec if experiment.trial_template else None).get("spec"))
    deadline = spec.get("activeDeadlineSeconds")
    return float(deadline) if isinstance(deadline, (int, float)) and not isinstance(deadline, bool) and deadline > 0 else None


def katib_container_command(e: Experiment, argv: list[str], metrics_dir: str = "/var/log/katib") -> list[str]:
    """The command Katib's metrics-collector webhook gives the training container under the StdOut
    collector (pkg/webhook/v1beta1/pod/utils.go: wrapWorkerContainer, getEarlyStoppingCommand,
    getMarkCompletedCommand) for the trainer argv `argv`, in the Experiment's trial shell where its
    template has one, as the shell sees it once Kubernetes has turned `$$$$` into `$$`: the
    arguments joined by spaces without quoting, all output into metrics.log, and with earlyStopping
    every failure turned into exit 1."""
    if in_trial_shell(container_argv(e)):
        argv = in_shell(argv)[2:]  # Katib keeps the given sh -c and joins the rest
    parts = [" ".join(argv), f"1>{metrics_dir}/metrics.log 2>&1"]
    if e.early_stopping is not None:
        parts += ["||", f"if test -f {metrics_dir}/$$.pid && [ $(head -n 1 {metrics_dir}/$$.pid) = early-stopped ]; "
                        "then echo Training Container was Early Stopped; "
                        "else echo Training Container was Failed; exit 1; fi"]
    parts += ["&&", f"echo completed > {metrics_dir}/$$.pid"]
    return ["sh", "-c", " ".join(parts)]
