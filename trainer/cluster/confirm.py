"""`trainer katib confirm`: the confirmation across seeds on a cluster.

Without --compare it writes one Experiment per configuration of the best trials: its parameters fixed in
the trial command, a grid over `seed` (the seeds `trainer search --confirm` would use), no early stopping
and no goal, annotated with the trial it confirms. With --compare it reads those Experiments' trials back
and prints the same table and verdict as the local confirmation (trainer/search/confirm.py): a winner only
when it is ahead of every other configuration beyond seed noise, paired by seed.
"""

from __future__ import annotations

import copy
from pathlib import Path

from trainer.cluster import katib, kube
from trainer.errors import UsageError
from trainer.experiment import spec as ex
from trainer.experiment.vocabulary import SUCCEEDED
from trainer.flags import number_flag, parse_flags, with_flags
from trainer.run import config
from trainer.search import narrow
from trainer.search.confirm import STUDY_SUFFIX, Configuration, compare, new_seeds, show
from trainer.search.results import docker_line, preset_flags, write_preset

ANNOTATION = "trainer.search/confirms-trial"  # on each generated Experiment: the search trial it reruns


def search_seed(e: ex.Experiment, source: str) -> int:
    """The seed the Experiment's trials trained with (refused where it searches seed itself)."""
    given = parse_flags(ex.template_argv(e)[1:]).get("seed", str(config.TrainConfig.seed))
    if any(p.name == "seed" for p in e.parameters) or "${" in given:
        raise UsageError(f"{source}: it searches seed itself; confirmation varies it")
    return int(given)


def confirm_experiments(document: dict, rows: list, source: str, top=3, seeds=3) -> tuple[list[dict], list[str]]:
    """One Experiment per configuration of the `top` best distinct Succeeded trials: its parameters fixed
    in the trial command, a grid over `seed` (the other seeds), no early stopping and no goal (every seed
    runs to the end). Returns the documents and a header comment."""
    e = ex.parse_experiment(document, source)
    top, count = number_flag(top, "top"), number_flag(seeds, "seeds", 2)
    own = search_seed(e, source)
    seed_list = new_seeds(own, count)
    picked, seen = [], set()
    for row in narrow.top_rows(rows, e.objective.type == "maximize", count=len(rows)):
        key = tuple(sorted(row.params.items()))
        if key not in seen and len(picked) < top:
            seen.add(key)
            picked.append(row)
    if not picked:
        raise UsageError(f"{source}: no Succeeded trial with an objective: nothing to confirm")
    docs, lines = [], []
    for index, row in enumerate(picked, 1):
        doc = copy.deepcopy(document)
        suffix = f"{STUDY_SUFFIX}{index}"
        narrow.clean_metadata(doc, e.name[:narrow.NAME_LIMIT - len(suffix)].rstrip("-") + suffix)
        doc["metadata"]["annotations"] = {ANNOTATION: row.name}
        narrow.fix_parameters(doc, {p.name: str(row.params[p.name]) for p in e.parameters if p.name in row.params})
        spec = doc["spec"]
        spec["parameters"] = [{"name": "seed", "parameterType": "discrete",
                               "feasibleSpace": {"list": [str(s) for s in seed_list]}}]
        spec["algorithm"] = {"algorithmName": "grid"}
        spec.pop("earlyStopping", None)
        spec["objective"].pop("goal", None)
        template = spec["trialTemplate"]
        template["trialParameters"].append({"name": "seed", "reference": "seed",
                                            "description": "training seed (confirmation)"})
        for container in template["trialSpec"]["spec"]["template"]["spec"]["containers"]:
            if container.get("name") == template.get("primaryContainerName"):
                ex.edit_trainer_args(container, lambda args: with_flags(args, {"seed": "${trialParameters.seed}"}))
        narrow.set_budget(doc, len(seed_list))
        docs.append(doc)
        objective = "-" if row.objective is None else f"{row.objective:.4f}"
        lines.append(f"{doc['metadata']['name']}: trial {row.name} ({e.objective.objective_metric_name} {objective} "
                     f"at seed {own}): {' '.join(f'{k}={v}' for k, v in row.params.items())}")
    header = [f"Confirmation across seeds of Katib Experiment {e.name} ({source}), written by trainer katib confirm:",
              f"its {len(picked)} best configurations, each a grid over seeds {', '.join(map(str, seed_list))} "
              f"(it trained with seed {own}).",
              *lines,
              "Compare the configurations seed by seed (trainer katib trials NAME); a gap inside the seeds' spread is a tie."]
    return docs, header


def write_experiments(path, docs: list[dict], header: list[str]):
    """The Experiments as one multi-document file, each checked as `trainer check` checks files."""
    import yaml

    from trainer.experiment import check
    from trainer.run.files import atomic_write

    path = Path(path)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True)
    for experiment in ex.parse_documents(text, str(path)):
        problems = check.check_experiment(experiment).problems
        if problems:
            raise UsageError(f"{path}: {experiment.name} would not pass trainer check: "
                             f"{problems[0].field}: {problems[0].message}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return path


def write(name: str, namespace=None, output=None, top=3, seeds=3, context=None) -> None:
    experiment, rows, source = katib.finished_rows(name, namespace, context)
    docs, header = confirm_experiments(experiment, rows, source, top, seeds)
    path = write_experiments(output or f"{name}{STUDY_SUFFIX}.yaml", docs, header)
    print(f"confirmation: {path} ({len(docs)} Experiments: {', '.join(d['metadata']['name'] for d in docs)})")
    for line in header[1:]:
        print(f"  {line}")
    print(f"submit it: kubectl apply -f {path}; when they end: trainer katib confirm {name} --compare")


def compare_served(name: str, namespace=None, output=None, context=None) -> None:
    """--compare: the generated Experiments' trials, by seed, against each other."""
    cluster, ns = katib.connected(context, namespace)
    experiment = kube.get_experiment(cluster, ns, name)
    objective = katib.field(experiment, "spec", "objective", default={})
    metric = objective.get("objectiveMetricName", "objective")
    searched = {r.name: r for r in katib.trial_rows(kube.list_trials(cluster, ns, name), objective)}
    with kube.api_errors(cluster, ns, name):
        served = cluster.objects().list_namespaced_custom_object(kube.GROUP, kube.VERSION, ns, "experiments")
    # Those generated from this Experiment: their annotation names one of its trials.
    confirms = sorted((e for e in served.get("items") or []
                       if katib.field(e, "metadata", "annotations", ANNOTATION) in searched),
                      key=lambda e: e["metadata"]["name"])
    if not confirms:
        raise UsageError(f"no confirmation Experiments of {ns}/{name} (annotated {ANNOTATION}): write them with "
                         f"trainer katib confirm {name} -o FILE, then kubectl apply -f FILE")
    configs, seeds = [], set()
    for served_confirm in confirms:
        trial = served_confirm["metadata"]["annotations"][ANNOTATION]
        origin = searched.get(trial)
        c = Configuration(trial, dict(origin.params) if origin else {}, origin.objective if origin else None)
        confirm_name = served_confirm["metadata"]["name"]
        for row in katib.trial_rows(kube.list_trials(cluster, ns, confirm_name), objective):
            if row.state == SUCCEEDED and row.objective is not None and "seed" in row.params:
                c.values[int(row.params["seed"])] = row.objective
                seeds.add(int(row.params["seed"]))
        configs.append(c)
    outcome = compare(configs, objective.get("type") == "maximize")
    own = search_seed(ex.parse_experiment(experiment, f"{ns}/{name}"), f"{ns}/{name}")
    show(metric, configs, sorted(seeds), own, outcome, out=print)
    if len(configs) < 2:
        print("one configuration only: its spread over seeds is above; nothing to compare it with")
        return
    if outcome.winner is None:
        print(f"tie across seeds: {', '.join(outcome.tied) or 'no configuration has a finished seed'} cannot be "
              "told apart beyond seed noise: no winner")
        return
    winner = next(c for c in configs if c.name == outcome.winner)
    argv = ex.trial_args(ex.parse_experiment(experiment, f"{ns}/{name}"), winner.params, winner.name)
    path = write_preset(output or f"{name}-confirmed.yaml", preset_flags(argv), [
        f"configuration of trial {winner.name} of Katib Experiment {ns}/{name}, confirmed across seeds "
        f"{', '.join(map(str, sorted(winner.values)))}: {metric} mean {winner.mean:.4f}, sd {winner.sd:.4f}",
        "written by trainer katib confirm --compare; use: trainer --preset THIS_FILE --train_file=... --eval_file=..."])
    print(f"confirmed: {winner.name}'s configuration is ahead of the others beyond seed noise ({metric} mean "
          f"{winner.mean:.4f})")
    print(docker_line(argv))
    print(f"preset: {path}")
