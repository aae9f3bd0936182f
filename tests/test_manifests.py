"""The manifests render, validate, carry the settings the issue asks for, and pass the scanners.

Real tools, offline: kubectl's built-in kustomize, kubernetes-validate, hadolint, checkov (its
own virtualenv), and the trainer's own flag parsing for every trial command.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from trainer import cli
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.flags import parse_flags
from trainer.run.config import FLAGS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KATIB_API = "kubeflow.org/v1beta1"


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} not found next to {sys.executable} nor on PATH (a dev dependency)"
    return found


def render(directory: Path) -> list[dict]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def with_opt_ins(folder: Path, components: list[str], files: list[str] = ()) -> Path:
    """A kustomization beside the top-level one: the same base and image, plus opt-in components (and
    Experiment files copied in, as a user fills in decode.yaml)."""
    top_level = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(ROOT / name, folder / Path(name).name)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [os.path.relpath(ROOT / "manifests", folder), *(Path(n).name for n in files)],
                     "components": [os.path.relpath(ROOT / c, folder) for c in components],
                     "images": top_level["images"]}
    if files:  # as the base sets them for its own files
        kustomization["namespace"] = "kobart-tuning"
        kustomization["labels"] = [{"pairs": {"app.kubernetes.io/part-of": "kobart-tuning"}}]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def top(tmp_path_factory) -> list[dict]:
    """The four single searches (tpe, grid, random, decode), rendered as a user who opts into them would."""
    folder = tmp_path_factory.mktemp("searches")
    return render(with_opt_ins(folder, ["manifests/experiments"], ["manifests/experiments/decode.yaml"]))


@pytest.fixture(scope="module")
def experiments(top) -> list[ex.Experiment]:
    return [ex.parse_experiment(doc, "rendered") for doc in top if doc["kind"] == "Experiment"]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_spec(e: ex.Experiment) -> dict:
    return e.trial_template.trial_spec["spec"]["template"]["spec"]


# ---------------------------------------------------------------- rendering and schemas


def test_the_default_apply_runs_the_one_recommended_search():
    """`kubectl apply -k .` (and -k manifests/) submits kobart-tpe alone: the others cost GPUs and are opt-in."""
    for directory in (ROOT, ROOT / "manifests"):
        docs = render(directory)
        assert [d["metadata"]["name"] for d in by_kind(docs, "Experiment")] == ["kobart-tpe"]
        assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "NetworkPolicy",
                                            "Experiment"}


@pytest.mark.parametrize("component, names", [
    ("manifests/experiments", {"kobart-grid", "kobart-random"}),
    ("manifests/stages", {"kobart-stage1-lr-batch", "kobart-stage2-epochs-schedule", "kobart-stage3-details"}),
    ("manifests/components/storage-class", set()), ("manifests/components/gpu-nodes", set())])
def test_each_opt_in_renders_beside_the_default(tmp_path, component, names):
    docs = render(with_opt_ins(tmp_path, [component]))
    assert {d["metadata"]["name"] for d in by_kind(docs, "Experiment")} == names | {"kobart-tpe"}
    kustomization = (ROOT / "kustomization.yaml").read_text(encoding="utf-8")
    assert f"#   - {component}" in kustomization, "the top-level kustomization names the opt-in"


def test_cluster_components_set_the_storage_class_and_the_trials_nodes(tmp_path):
    docs = render(with_opt_ins(tmp_path, ["manifests/components/storage-class", "manifests/components/gpu-nodes"]))
    classes = {d["metadata"]["name"]: d["spec"].get("storageClassName") for d in by_kind(docs, "PersistentVolumeClaim")}
    assert len(classes) == 3 and len(set(classes.values())) == 1 and None not in classes.values()
    [e] = [ex.parse_experiment(d, "rendered") for d in by_kind(docs, "Experiment")]
    pod = pod_spec(e)
    assert "nvidia.com/gpu.product" in pod["nodeSelector"]
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys[0] == "nvidia.com/gpu" and "cloud.google.com/gke-spot" in keys  # the GPU toleration kept


def test_the_data_loader_pod_validates_and_mounts_the_data_volume():
    [pod] = [d for d in yaml.safe_load_all((ROOT / "manifests/tools/data-loader.yaml").read_text()) if d]
    kubernetes_validate.validate(pod, "1.31", strict=True)
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "trainer-data"


def test_the_opt_ins_hold_every_shipped_experiment(tmp_path):
    docs = render(with_opt_ins(tmp_path, ["manifests/experiments", "manifests/stages"],
                               ["manifests/experiments/decode.yaml"]))
    shipped = {e.name for e in ex.load_experiments([ROOT / "manifests"])}
    assert {d["metadata"]["name"] for d in by_kind(docs, "Experiment")} == shipped


def matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for rule in selector.get("matchExpressions") or []:
        key, operator, values = rule["key"], rule["operator"], rule.get("values") or []
        if not {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[operator]:
            return False
    return True


def test_network_policy_closes_trial_pods_and_leaves_katibs_services_open():
    """Labels as Katib sets them: trial pods get the trial's labels plus katib.kubeflow.org/trial
    (pkg/webhook/v1beta1/pod/utils.go); suggestion pods the suggestion's (pkg/controller.v1beta1/util/labels.go)."""
    [policy] = by_kind(render(ROOT), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"] and not policy["spec"].get("ingress")  # nothing admitted
    trial_pod = {"katib.kubeflow.org/experiment": "kobart-tpe", "katib.kubeflow.org/trial": "kobart-tpe-x7k2",
                 "app.kubernetes.io/part-of": "kobart-tuning"}
    suggestion_pod = {"katib.kubeflow.org/experiment": "kobart-tpe", "katib.kubeflow.org/suggestion": "kobart-tpe",
                      "deployment": "kobart-tpe-multivariate-tpe", "sidecar.istio.io/inject": "false"}
    assert matches(policy["spec"]["podSelector"], trial_pod)
    assert not matches(policy["spec"]["podSelector"], suggestion_pod)
    assert not matches(policy["spec"]["podSelector"], {"app": "katib-ui"})


@pytest.mark.parametrize("directory", ["manifests", "."])
def test_core_objects_validate_against_kubernetes_schemas(directory):
    docs = render(ROOT / directory)
    core = [d for d in docs if d["apiVersion"] != KATIB_API]
    assert {d["kind"] for d in core} >= {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "NetworkPolicy"}
    for doc in core:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_trial_jobs_validate_as_batch_v1_jobs(experiments):
    for e in experiments:
        kubernetes_validate.validate(ex.trial_job(e), kubernetes_validate.latest_version(), strict=True)


def test_schema_validation_is_not_vacuous(experiments):
    job = ex.trial_job(experiments[0])
    # A typo'd field would silently drop the setting; strict validation catches it.
    job["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsNonroot"):
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)


# ---------------------------------------------------------------- what the issue asks of the objects


def test_namespace_service_account_volumes(top):
    [namespace] = by_kind(top, "Namespace")
    assert namespace["metadata"]["labels"]["katib.kubeflow.org/metrics-collector-injection"] == "enabled"
    assert all(d["metadata"].get("namespace") == namespace["metadata"]["name"]
               for d in top if d["kind"] != "Namespace")
    [account] = by_kind(top, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    claims = {d["metadata"]["name"]: d for d in by_kind(top, "PersistentVolumeClaim")}
    assert claims["trainer-cache"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert set(claims) == {"trainer-data", "trainer-cache", "trainer-outputs"}


def test_image_is_pinned_in_one_place(top):
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    [image] = kustomization["images"]
    pinned = f"{image['newName']}:{image['newTag']}"
    for e in ex.load_experiments([], text=yaml.safe_dump_all(top)):
        assert [c["image"] for c in pod_spec(e)["containers"]] == [pinned]
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "manifests").rglob("*.yaml"))
    assert image["newTag"] not in sources and image["newName"] not in sources


def is_decoding(e: ex.Experiment) -> bool:
    """A decode Experiment's trial is `trainer evaluate` on a trained model; the others train."""
    return ex.template_argv(e)[1] == "evaluate"


def test_experiments_follow_the_issue(experiments):
    named = {e.name: e for e in experiments}
    assert sorted(named) == ["kobart-decode", "kobart-grid", "kobart-random", "kobart-tpe"]
    for e in (e for e in experiments if not is_decoding(e)):
        assert (e.objective.type, e.objective.objective_metric_name) == ("maximize", "rouge_avg")
        # the kept model's figures, each its last (only) report: one model per row, not each metric's best epoch
        finals = ["final_rouge1", "final_rouge2", "final_rougeL", "final_rouge_avg", "final_eval_loss"]
        assert e.objective.additional_metric_names == finals
        assert all(e.objective.metric_strategies[name] == "latest" for name in finals)
        # a subset each epoch for the objective; final_rouge_avg is the whole dev set, once
        assert "--epoch_eval_samples=250" in pod_spec(e)["containers"][0]["args"]
        assert e.metrics_collector.kind == "StdOut"
    grid, rand, tpe = named["kobart-grid"], named["kobart-random"], named["kobart-tpe"]
    assert grid.algorithm.name == "grid" and grid.max_trial_count == len(katib_grid.grid_points(grid)) == 18
    assert {p.parameter_type for p in grid.parameters} <= {"discrete", "categorical"}
    assert rand.algorithm.name == "random"
    # hyperopt's `tpe` duplicates suggestions within a parallel batch; multivariate-tpe does not.
    assert tpe.algorithm.name == "multivariate-tpe" and tpe.parallel_trial_count > 1
    assert {p.name for p in tpe.parameters} == {"optim", "learning_rate", "per_device_train_batch_size",
                                                "num_train_epochs", "gradient_accumulation_steps",
                                                "warmup_ratio", "lr_scheduler_type", "fp16"}
    for e in (rand, tpe):
        assert e.early_stopping.name == "medianstop"
        lr = next(p for p in e.parameters if p.name == "learning_rate")
        assert (lr.distribution, lr.min, lr.max) == ("logUniform", "1e-5", "5e-4")
    assert grid.early_stopping is None


TRAINING = ("kobart-grid", "kobart-random", "kobart-tpe")
SEARCH_SPACE = ("parameters", "algorithm", "earlyStopping", "maxTrialCount", "parallelTrialCount",
                "maxFailedTrialCount")


def without_search(e: ex.Experiment) -> dict:
    """The Experiment with its name, search space, trialParameters and trial args taken out."""
    doc = json.loads(json.dumps(e.raw))
    doc["metadata"].pop("name")
    for key in SEARCH_SPACE:
        doc["spec"].pop(key, None)
    doc["spec"]["trialTemplate"].pop("trialParameters")
    for container in doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"]:
        container.pop("args")
    return doc


def test_training_experiments_differ_only_in_search_space_and_args(experiments):
    """Each file keeps a whole trialSpec (it must run alone); everything but what a search varies is
    the same in all three, so a fix to one trial template cannot miss the others."""
    training = [e for e in experiments if e.name in TRAINING]
    assert sorted(e.name for e in training) == sorted(TRAINING)
    first, *others = [without_search(e) for e in training]
    for other in others:
        assert other == first
    # The args differ, but where they read and write does not.
    places = [{k: v for k, v in parse_flags(ex.primary_container(e)["args"]).items()
               if k in ("train_file", "eval_file", "output_dir", "cache_dir")} for e in training]
    assert places[0] and all(p == places[0] for p in places)


def test_decode_experiment_searches_decoding_on_the_search_half(experiments):
    decode = next(e for e in experiments if e.name == "kobart-decode")
    assert is_decoding(decode)
    assert (decode.objective.type, decode.objective.objective_metric_name) == ("maximize", "rouge_avg")
    assert decode.objective.additional_metric_names == ["rouge1", "rouge2", "rougeL"]  # what evaluate prints
    assert decode.algorithm.name == "multivariate-tpe" and decode.early_stopping is None  # one report per trial
    assert {p.name for p in decode.parameters} == {"num_beams", "length_penalty", "no_repeat_ngram_size",
                                                   "min_new_tokens", "repetition_penalty"}
    assert {p.parameter_type for p in decode.parameters} == {"discrete"}
    beams = next(p for p in decode.parameters if p.name == "num_beams")
    assert "1" not in beams.list  # length_penalty needs beam search
    args = pod_spec(decode)["containers"][0]["args"]
    assert "--eval_split_part=search" in args and "--eval_file=/data/dev.csv" in args
    assert any(a.startswith("--model_name_or_path=/output/") and a.endswith("/best_model") for a in args)


def test_trial_job_is_hardened_and_gets_one_gpu(experiments):
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    uid = int(re.search(r"^USER (\d+)", dockerfile, re.M).group(1))
    for e in experiments:
        job = e.trial_template.trial_spec
        assert ex.is_batch_job(job)
        assert job["spec"]["activeDeadlineSeconds"] > 0
        # preemption retries for free, a usage error (exit 2) ends the Job, other failures retry twice
        assert job["spec"]["backoffLimit"] == 2
        assert job["spec"]["podFailurePolicy"]["rules"] == [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "training-container", "operator": "NotIn",
                                                  "values": [0]}}]
        pod = pod_spec(e)
        assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        main = ex.primary_container(e)
        assert main["name"] == "training-container" and ex.in_trial_shell(ex.container_argv(e))
        assert ex.template_argv(e)[0] == "trainer"
        assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"cpu", "memory"} <= set(main["resources"]["requests"])
        context = main["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        assert mounts["/data"]["readOnly"] is True
        assert {"/tmp", "/cache", "/output"} <= set(mounts)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/tmp"]["name"]].get("emptyDir") is not None
        assert volumes[mounts["/cache"]["name"]]["persistentVolumeClaim"]["claimName"] == "trainer-cache"
        if not is_decoding(e):  # training trials log to W&B; decoding trials only print their line
            secret = next(v for v in main["env"] if v["name"] == "WANDB_API_KEY")["valueFrom"]["secretKeyRef"]
            assert secret["optional"] is True


# ---------------------------------------------------------------- trial commands vs the trainer


def sample_assignments(e: ex.Experiment, draws: int = 10) -> list[dict]:
    """Bounds and list values one parameter at a time, plus seeded random draws of everything."""
    rng = random.Random(0)

    def draw(p: ex.Parameter) -> str:
        if p.list:
            return rng.choice(p.list)
        low, high = float(p.min), float(p.max)
        if p.parameter_type == "int":
            step = int(p.step or 1)
            return str(rng.randrange(int(low), int(high) + 1, step))
        if p.distribution == "logUniform":
            return str(low * (high / low) ** rng.random())
        return str(low + (high - low) * rng.random())

    base = {p.name: draw(p) for p in e.parameters}
    samples = [{p.name: draw(p) for p in e.parameters} for _ in range(draws)]
    for p in e.parameters:
        for value in p.list or [p.min, p.max]:
            samples.append({**base, p.name: value})
    return samples


def test_every_trial_command_is_accepted_by_the_trainer(experiments, monkeypatch):
    """Sample trial argv through the real CLI (fire parsing + build_config); training is stubbed."""
    from trainer.run import evaluate

    received = []
    monkeypatch.setattr(evaluate, "evaluate", received.append)  # the decoding trial: scoring is stubbed
    fake_train = type(sys)("trainer.run.train")
    fake_train.run = received.append
    monkeypatch.setitem(sys.modules, "trainer.run.train", fake_train)
    for e in experiments:
        assignments = katib_grid.grid_points(e) if e.algorithm.name == "grid" else sample_assignments(e)
        for number, assignment in enumerate(assignments):
            argv = ex.trial_args(e, assignment, f"{e.name}-{number}")
            assert argv[0] == "trainer" and all(" " not in arg for arg in argv)
            assert set(cli.flag_names(argv[1:])) <= set(FLAGS)
            received.clear()
            cli.main(argv[1:])
            [config] = received
            assert config.output_dir == f"/output/{e.name}-{number}"
            assert config.eval_file == "/data/dev.csv"
            if is_decoding(e):
                assert config.num_beams == int(assignment["num_beams"])
                assert config.length_penalty == pytest.approx(float(assignment["length_penalty"]))
                assert config.min_new_tokens == int(assignment["min_new_tokens"])
                assert config.eval_split_part == "search"
            else:
                assert config.learning_rate == pytest.approx(float(assignment["learning_rate"]))
                assert config.train_file == "/data/train.csv"


# ---------------------------------------------------------------- scanners


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_the_image_installs_pinned_versions_and_keeps_the_base_images_torch():
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    base_torch = re.search(r"^FROM pytorch/pytorch:([\d.]+)-", dockerfile, re.M).group(1)
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["torch"] == base_torch
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["wandb"]
    assert {re.split(r"[<>=!~\[ ]", d)[0] for d in needed} == set(pins)  # every dependency pinned, nothing else
    assert "-c constraints.txt" in dockerfile and "!constraints.txt" in (ROOT / ".dockerignore").read_text()


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", base)
    assert text.index("COPY pyproject.toml") < text.index("pip install --no-cache-dir -c constraints.txt -r") < text.index(
        "COPY trainer/")
    assert 'ENTRYPOINT ["trainer"]' in text and "PYTHONUNBUFFERED=1" in text
    assert "HF_HOME=/cache/" in text and "TRAINER_CACHE_DIR=/cache/" in text


def test_checkov_finds_no_unsuppressed_problem():
    checkov = os.environ.get("CHECKOV", str(ROOT / ".venv-checkov" / "bin" / "checkov"))
    if not Path(checkov).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"checkov not found at {checkov}: CI must install it (its own venv)")
        pytest.skip(f"checkov not installed at {checkov} (python3 -m venv .venv-checkov && "
                    ".venv-checkov/bin/pip install checkov)")
    env = {**os.environ, "CHECKOV": checkov, "KUBECTL": tool("kubectl"), "PYTHON": sys.executable}
    result = subprocess.run(["sh", str(ROOT / "scripts" / "checkov.sh")], capture_output=True, text=True,
                            env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = [tuple(map(int, m)) for m in re.findall(r"Passed checks: (\d+), Failed checks: (\d+)", output)]
    assert len(counts) == 2 and all(failed == 0 for _, failed in counts), output
    # The second scan is the trial Jobs: it must have looked at pods, not at nothing.
    assert counts[1][0] >= 50, output
