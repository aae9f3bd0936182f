"""`trainer katib ...` against a fake Kubernetes API on 127.0.0.1 (tests/fake_kube.py).

The real CLI runs as a subprocess with KUBECONFIG pointing at the fake, so the real
kubernetes and kubeflow-katib clients make real HTTP requests; nothing is patched.
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from fake_kube import FakeKube, kubeconfig, managed_field, metrics, trial
from trainer.experiment.check import check_all
from trainer.experiment.spec import load_experiments, trial_args
from trainer.search.results import TrialRow, docker_line, format_table

ROOT = Path(__file__).resolve().parents[1]
TRAINER = [sys.executable, "-m", "trainer.cli"]
NS = "kobart-tuning"
NAME = "kobart-tpe"
T0 = "2026-11-28T03:00:00Z"

BEST_PARAMS = {"optim": "adamw_torch", "learning_rate": "3.2e-05", "per_device_train_batch_size": "16",
               "num_train_epochs": "20", "gradient_accumulation_steps": "2", "warmup_ratio": "0.1",
               "lr_scheduler_type": "cosine", "fp16": "false"}


def run(*args, env, timeout=120, **kwargs):
    return subprocess.run([*TRAINER, *args], capture_output=True, text=True, env=env, timeout=timeout, **kwargs)


def run_side_by_side(commands: dict) -> dict:
    """{key: (args, env)} -> {key: result}. Each `trainer katib` process spends seconds importing
    the clients; independent ones run at the same time to keep the file fast."""
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        futures = {key: pool.submit(run, *args, env=env) for key, (args, env) in commands.items()}
        return {key: future.result() for key, future in futures.items()}


def cli_env(tmp_path: Path, url: str | None, namespace: str = "default") -> dict:
    """The test's environment with only the fake cluster reachable: no proxies, no real kubeconfig."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy") and k != "KUBERNETES_SERVICE_HOST"}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    config = tmp_path / "kubeconfig"
    if url:
        config.write_text(kubeconfig(url, namespace), encoding="utf-8")
    env["KUBECONFIG"] = str(config)
    return env


def error_line(result) -> str:
    """The CLI's one-line error: exactly one line on stderr, no traceback, non-zero exit."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("trainer: error: "), result.stderr
    return lines[0].removeprefix("trainer: error: ")


# ---------------------------------------------------------------- served objects


def tpe_experiment() -> dict:
    """manifests' tpe.yaml as the API server stores it: namespaced, defaulted, with a Katib status."""
    doc = yaml.safe_load((ROOT / "manifests/experiments/tpe.yaml").read_text(encoding="utf-8"))
    doc["metadata"].update(
        namespace=NS, uid="0b6c", creationTimestamp=T0, generation=1, resourceVersion="4242",
        labels={"app.kubernetes.io/part-of": "kobart-tuning"},
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        finalizers=["update-prometheus-metrics"],
        managedFields=[managed_field("kubectl-client-side-apply", T0), managed_field("katib-controller", T0)])
    doc["status"] = running_status()
    return doc


def running_status() -> dict:
    return {
        "startTime": T0,
        "conditions": [
            {"type": "Created", "status": "True", "reason": "ExperimentCreated", "message": "Experiment is created",
             "lastUpdateTime": T0, "lastTransitionTime": T0},
            {"type": "Running", "status": "True", "reason": "ExperimentRunning", "message": "Experiment is running",
             "lastUpdateTime": "2026-11-28T03:00:05Z", "lastTransitionTime": "2026-11-28T03:00:05Z"},
        ],
        "currentOptimalTrial": {
            "bestTrialName": "kobart-tpe-b8x2k9qd",
            "parameterAssignments": [{"name": k, "value": v} for k, v in BEST_PARAMS.items()],
            "observation": {"metrics": metrics(rouge_avg=("0.3012", "0.4321", "0.4290"),
                                               rouge1=("0.41", "0.52", "0.51"), eval_loss=("1.80", "2.50", "1.84"))},
        },
        "runningTrialList": ["kobart-tpe-r2l9c4xs"],
        "succeededTrialList": ["kobart-tpe-a7h3m2pw", "kobart-tpe-b8x2k9qd"],
        "failedTrialList": ["kobart-tpe-f4k8n1zq"],
        "metricsUnavailableTrialList": ["kobart-tpe-m5t6v7wx"],
        "earlyStoppedTrialList": ["kobart-tpe-e1s2t3op"],
        "trials": 6, "trialsRunning": 1, "trialsSucceeded": 2, "trialsFailed": 1,
        "trialMetricsUnavailable": 1, "trialsEarlyStopped": 1,
    }


def params(**changes) -> dict:
    return {**BEST_PARAMS, **changes}


# (name, state, parameters, start, end, (min, max, latest) of rouge_avg or None, expected objective, duration)
TRIALS = [
    ("kobart-tpe-a7h3m2pw", "Succeeded", params(learning_rate="0.00012", lr_scheduler_type="linear"),
     "2026-11-28T03:00:10Z", "2026-11-28T05:10:10Z", ("0.2500", "0.4012", "0.3990"), 0.4012, 7800.0),
    ("kobart-tpe-b8x2k9qd", "Succeeded", BEST_PARAMS,
     "2026-11-28T03:00:20Z", "2026-11-28T05:30:50Z", ("0.3012", "0.4321", "0.4290"), 0.4321, 9030.0),
    ("kobart-tpe-f4k8n1zq", "Failed", params(optim="adafactor", per_device_train_batch_size="32"),
     "2026-11-28T03:00:30Z", "2026-11-28T03:02:05Z", None, None, 95.0),
    ("kobart-tpe-m5t6v7wx", "MetricsUnavailable", params(learning_rate="0.00049"),
     "2026-11-28T05:10:20Z", "2026-11-28T05:40:20Z", ("unavailable",) * 3, None, 1800.0),
    ("kobart-tpe-e1s2t3op", "EarlyStopped", params(learning_rate="1.1e-05", warmup_ratio="0.2"),
     "2026-11-28T05:31:00Z", "2026-11-28T06:21:41Z", ("0.1010", "0.2020", "0.1990"), 0.2020, 3041.0),
    ("kobart-tpe-r2l9c4xs", "Running", params(num_train_epochs="30"),
     "2026-11-28T05:40:30Z", None, ("0.2200", "0.3300", "0.3300"), 0.3300, None),
]


def served_trials(experiment: dict) -> list[dict]:
    served = []
    for name, state, values, start, end, rouge, _, _ in TRIALS:
        observed = None if rouge is None else metrics(rouge_avg=rouge, rouge1=rouge, eval_loss=("1.9", "2.4", "2.0"))
        served.append(trial(experiment, name, values, state, start, end, observed))
    return served


@pytest.fixture(scope="module")
def server():
    with FakeKube() as fake:
        yield fake


@pytest.fixture
def kube(server, tmp_path):
    """The fake cluster holding kobart-tpe and its six trials, and an environment pointing at it."""
    server.reset()
    experiment = tpe_experiment()
    server.add(experiment)
    for t in served_trials(experiment):
        server.add(t)
    # A trial of another Experiment: the label selector must leave it out.
    other = copy.deepcopy(experiment)
    other["metadata"]["name"] = "kobart-random"
    server.add(trial(other, "kobart-random-zz9", params(), "Succeeded", T0, T0, metrics(rouge_avg=("0.9",) * 3)))
    return server, cli_env(tmp_path, server.url)


# ---------------------------------------------------------------- submit


def rendered_experiments() -> list[dict]:
    kubectl = Path(sys.executable).parent / "kubectl"
    text = subprocess.run([str(kubectl), "kustomize", str(ROOT / "manifests")], capture_output=True, text=True,
                          check=True).stdout
    return [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "Experiment"]


def test_submit_sends_exactly_the_rendered_experiments(kube, tmp_path):
    server, env = kube
    server.reset()
    tpe_file = ROOT / "manifests/experiments/tpe.yaml"
    other = tmp_path / "other"
    other.mkdir()
    with FakeKube() as taken:
        # A second cluster where kobart-tpe already exists in the context's namespace.
        taken.add({**yaml.safe_load(tpe_file.read_text(encoding="utf-8")), "metadata": {"name": NAME, "namespace": "team"}})
        results = run_side_by_side({
            "kustomize": (["katib", "submit", str(ROOT / "manifests")], env),
            "file": (["katib", "submit", str(tpe_file)], cli_env(other, taken.url, namespace="team")),
        })
    result = results["kustomize"]
    assert result.returncode == 0, result.stderr
    expected = rendered_experiments()
    assert [e["metadata"]["name"] for e in expected] == ["kobart-tpe"]  # the base: the one recommended search
    assert server.posted == expected
    assert server.requests == [("POST", f"/apis/kubeflow.org/v1beta1/namespaces/{NS}/experiments")]
    for name in ("kobart-tpe",):
        assert f"experiment.kubeflow.org/{name} created in namespace {NS}" in result.stdout
    # The Namespace, PVCs, ... of the kustomize output are kubectl apply's job.
    assert "not created here" in result.stderr and "PersistentVolumeClaim" in result.stderr

    # A plain file without a namespace goes to the context's namespace, as written.
    again = results["file"]
    assert taken.posted == [yaml.safe_load(tpe_file.read_text(encoding="utf-8"))]
    assert taken.requests == [("POST", "/apis/kubeflow.org/v1beta1/namespaces/team/experiments")]
    assert error_line(again) == ("Experiment 'kobart-tpe' already exists in namespace 'team'; delete it first "
                                 "(kubectl delete experiment kobart-tpe -n team) or rename it")
    assert again.returncode == 1


def test_submit_refuses_what_check_rejects_before_contacting_the_cluster(kube, tmp_path):
    server, env = kube
    server.reset()
    doc = yaml.safe_load((ROOT / "manifests/experiments/tpe.yaml").read_text(encoding="utf-8"))
    doc["metadata"]["name"] = "KoBART_tpe"
    doc["spec"]["parameters"][0]["feasibleSpace"]["list"].append("adamw_hf")
    text = yaml.safe_dump(doc)
    result = run("katib", "submit", "-", env=env, input=text)  # rendered YAML piped in
    [experiment] = load_experiments(text=text)
    [report] = check_all([experiment])
    problems = [f"<stdin>: KoBART_tpe: {p.field}: {p.message}" for p in report.problems]  # as `trainer check` prints
    assert len(problems) >= 2 and any("adamw_hf" in p for p in problems)
    lines = result.stderr.strip().splitlines()
    assert lines[:-1] == problems
    assert lines[-1] == f"trainer: error: nothing submitted: `trainer check` found {len(problems)} problem(s) (listed above)"
    assert result.returncode == 2
    assert server.requests == []


def test_submit_refuses_a_namespace_conflict(kube, tmp_path):
    server, env = kube
    server.reset()
    result = run("katib", "submit", str(ROOT / "manifests"), "--namespace=elsewhere", env=env)
    assert "puts it in namespace 'kobart-tuning' but --namespace=elsewhere" in error_line(result)
    assert server.requests == []


# ---------------------------------------------------------------- status


def test_status_prints_what_the_served_objects_say(kube):
    server, env = kube
    result = run("katib", "status", NAME, "-n", NS, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Experiment {NS}/{NAME}: Running (multivariate-tpe, maximize rouge_avg)"
    assert lines[1] == "conditions:"
    assert lines[2].split(None, 3) == ["Created", "True", "ExperimentCreated", "Experiment is created"]
    assert lines[3].split(None, 3) == ["Running", "True", "ExperimentRunning", "Experiment is running"]
    assert lines[4] == ("trials: 6 of 30: Running 1, Succeeded 2, Failed 1, MetricsUnavailable 1, EarlyStopped 1")
    # The objective by its metric strategy (max), as Katib picks the optimal trial.
    assert lines[5] == "optimal trial: kobart-tpe-b8x2k9qd  rouge_avg=0.4321 (max)"
    assert lines[6] == "  latest: rouge1=0.51 eval_loss=1.84"
    assert lines[7] == "  parameters: " + " ".join(f"{k}={v}" for k, v in BEST_PARAMS.items())
    assert server.requests == [("GET", f"/apis/kubeflow.org/v1beta1/namespaces/{NS}/experiments/{NAME}")]


def test_watch_refreshes_until_the_experiment_fails_and_exits_1(kube):
    server, env = kube
    running, more, failed = running_status(), running_status(), running_status()
    more.update(trials=7, trialsFailed=2, trialsRunning=1)
    failed.update(trials=7, trialsFailed=3, trialsRunning=0, completionTime="2026-11-28T07:00:00Z")
    failed["conditions"][1]["status"] = "False"
    failed["conditions"].append({
        "type": "Failed", "status": "True", "reason": "ExperimentFailed",
        "message": "Experiment has failed because max failed count has reached",
        "lastUpdateTime": "2026-11-28T07:00:00Z", "lastTransitionTime": "2026-11-28T07:00:00Z"})
    # Two identical polls in a row print once.
    server.frames[(NS, NAME)] = [running, running, more, failed]
    result = run("katib", "status", NAME, f"--namespace={NS}", "--watch", "--interval=0.05", env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    heads = [line for line in result.stdout.splitlines() if line.startswith("Experiment ")]
    assert heads == [f"Experiment {NS}/{NAME}: {s} (multivariate-tpe, maximize rouge_avg)"
                     for s in ("Running", "Running", "Failed")]
    assert "trials: 7 of 30: Running 0, Succeeded 2, Failed 3," in result.stdout
    assert "Failed      True   ExperimentFailed" in result.stdout
    assert len([r for r in server.requests if r[1].endswith(f"/experiments/{NAME}")]) == 4


# ---------------------------------------------------------------- trials and best


def test_trials_table_has_the_local_search_columns(kube):
    server, env = kube
    result = run("katib", "trials", NAME, f"--namespace={NS}", env=env)
    assert result.returncode == 0, result.stderr
    rows = [TrialRow(name=name, state=state, params=values, objective=objective, duration_s=duration, number=i)
            for i, (name, state, values, _, _, _, objective, duration) in enumerate(TRIALS)]
    names = [p["name"] for p in tpe_experiment()["spec"]["parameters"]]
    expected = format_table(rows, "rouge_avg", names).splitlines()
    lines = result.stdout.rstrip("\n").splitlines()
    assert len(lines) == len(expected) == 1 + len(TRIALS)  # kobart-random's trial is not listed
    assert lines[:-1] == expected[:-1]
    # The running trial's duration is its age so far.
    assert lines[-1].startswith(expected[-1].rstrip("-").rstrip())
    lists = [urlparse(url) for method, url in server.requests if "/trials" in url]
    assert [u.path for u in lists] == [f"/apis/kubeflow.org/v1beta1/namespaces/{NS}/trials"]
    assert parse_qs(lists[0].query) == {"labelSelector": [f"katib.kubeflow.org/experiment={NAME}"]}


def test_best_gives_a_docker_line_and_a_preset_that_trains(kube, tmp_path):
    server, env = kube
    preset = tmp_path / "best.yaml"
    result = run("katib", "best", NAME, f"--namespace={NS}", f"--output={preset}", env=env)
    assert result.returncode == 0, result.stderr
    experiment = load_experiments([ROOT / "manifests/experiments/tpe.yaml"])[0]
    argv = trial_args(experiment, BEST_PARAMS, "kobart-tpe-b8x2k9qd")
    lines = result.stdout.splitlines()
    assert lines[0] == "best trial: kobart-tpe-b8x2k9qd  rouge_avg=0.4321 (max)"
    assert lines[1] == docker_line(argv)
    assert "--learning_rate=3.2e-05" in lines[1] and "--output_dir=/output/kobart-tpe-b8x2k9qd" in lines[1]
    assert yaml.safe_load(preset.read_text(encoding="utf-8")) == {
        "optim": "adamw_torch", "learning_rate": 3.2e-05, "per_device_train_batch_size": 16,
        "num_train_epochs": 20.0, "gradient_accumulation_steps": 2, "warmup_ratio": 0.1,
        "lr_scheduler_type": "cosine", "fp16": False, "epoch_eval_samples": 250,  # the template's fixed flag
        # every decoding flag, at the default the trial decoded with: the preset is the whole recipe
        "num_beams": 4, "no_repeat_ngram_size": 2, "generation_max_length": 100, "min_new_tokens": 0,
        "length_penalty": 1.0, "repetition_penalty": 1.0}

    out = tmp_path / "run"
    trained = run("--preset", str(preset), "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
                  "--eval_file=builtin:sample", "--num_train_epochs=1", "--max_train_samples=32",
                  "--max_eval_samples=8", "--num_beams=1", f"--output_dir={out}", f"--cache_dir={tmp_path / 'cache'}",
                  env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "rouge_avg=" in trained.stdout


def test_best_fills_the_decoding_experiment_from_the_optimal_trial(kube, tmp_path):
    server, env = kube
    out = tmp_path / "decode.yaml"
    result = run("katib", "best", NAME, f"--namespace={NS}", f"--output={tmp_path / 'best.yaml'}",
                 f"--decode_experiment={out}", env=env, cwd=ROOT)  # the template: manifests/experiments/
    assert result.returncode == 0, result.stderr
    model = "/output/kobart-tpe-b8x2k9qd/best_model"  # the optimal trial's --output_dir, its kept model
    assert result.stdout.splitlines()[-1] == (f"decoding Experiment: {out} (on {model}); "
                                              f"submit it: trainer katib submit {out}")
    [decoding] = load_experiments([out])
    assert decoding.namespace == NS and decoding.name == "kobart-decode"
    args = decoding.trial_template.trial_spec["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--model_name_or_path={model}" in args and not any("TRAINING-TRIAL" in a for a in args)
    assert not check_all([decoding])[0].problems  # what `trainer katib submit` runs first
    # A decoding search's best trial trained nothing: refused in one line, nothing written
    served = yaml.safe_load(out.read_text())
    decoded = {"num_beams": "4", "length_penalty": "1.0", "no_repeat_ngram_size": "2", "min_new_tokens": "0",
               "repetition_penalty": "1.0"}
    served["status"] = {"currentOptimalTrial": {
        "bestTrialName": "kobart-decode-x1", "parameterAssignments": [{"name": k, "value": v} for k, v in decoded.items()],
        "observation": {"metrics": metrics(rouge_avg=("0.40", "0.42", "0.41"))}}}
    server.add(served)
    again = run("katib", "best", "kobart-decode", f"--namespace={NS}", f"--output={tmp_path / 'b.yaml'}",
                f"--decode_experiment={tmp_path / 'again.yaml'}", env=env, cwd=ROOT)
    assert "is a decoding search: its trials train no model" in error_line(again)
    assert not (tmp_path / "again.yaml").exists()


def test_best_without_an_optimal_trial_says_so(kube):
    server, env = kube
    fresh = tpe_experiment()
    fresh["status"] = {"conditions": fresh["status"]["conditions"][:1]}
    server.add(fresh)
    result = run("katib", "best", NAME, f"--namespace={NS}", env=env)
    assert error_line(result) == (f"Experiment {NS}/{NAME} has no trial with rouge_avg yet "
                                  f"(Created; trainer katib status {NAME} --namespace={NS})")


# ---------------------------------------------------------------- access errors


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_access_error_is_one_clear_line(tmp_path):
    port = closed_port()
    for case in ("down", "no-katib", "forbidden", "unauthorized", "not-found"):
        (tmp_path / case).mkdir()
    with FakeKube() as plain, FakeKube() as no_katib, FakeKube() as forbidden, FakeKube() as unauthorized:
        no_katib.mode, forbidden.mode, unauthorized.mode = "no-katib", "forbidden", "unauthorized"
        cases = {
            "down": (f"http://127.0.0.1:{port}", ["status", NAME],
                     f"cannot reach the Kubernetes API at http://127.0.0.1:{port} (context fake): Connection refused; "
                     "is the cluster up? (kubectl cluster-info)"),
            "no-katib": (no_katib.url, ["trials", NAME],
                         f"Katib is not installed on the cluster at {no_katib.url}: it does not serve "
                         "experiments.kubeflow.org/v1beta1 (install Katib, or pick another --context)"),
            "forbidden": (forbidden.url, ["best", NAME, f"--namespace={NS}"],
                          f'forbidden by RBAC: experiments.kubeflow.org "{NAME}" is forbidden: User '
                          f'"system:serviceaccount:ml:viewer" cannot get resource "experiments" in API group '
                          f'"kubeflow.org" in the namespace "{NS}" (trainer katib needs create, get, list on '
                          f'experiments and get, list on trials of API group kubeflow.org in namespace {NS})'),
            "unauthorized": (unauthorized.url, ["status", NAME],
                             f"the Kubernetes API at {unauthorized.url} rejected the credentials of context fake "
                             "(401 Unauthorized); log in again or pick another --context"),
            "not-found": (plain.url, ["status", "kobart-nope"],
                          "no Experiment 'kobart-nope' in namespace 'team' (give --namespace; "
                          "`kubectl get experiments -A` lists them all)"),
        }

        results = run_side_by_side({case: (["katib", *args], cli_env(tmp_path / case, url, namespace="team"))
                                    for case, (url, args, _) in cases.items()})
    for case, (_, _, expected) in cases.items():
        assert error_line(results[case]) == expected, case
    assert forbidden.requests and no_katib.requests and unauthorized.requests and plain.requests


def test_cluster_configuration_errors(tmp_path):
    env = cli_env(tmp_path, None)
    result = run("katib", "status", NAME, env=env)
    assert error_line(result) == (f"no cluster configured: no kubeconfig at {tmp_path / 'kubeconfig'} "
                                  "(set KUBECONFIG) and not running inside a pod")
    env = cli_env(tmp_path, "http://127.0.0.1:1")
    result = run("katib", "status", NAME, "--context=staging", env=env)
    assert error_line(result) == f"--context=staging is not a context in {tmp_path / 'kubeconfig'} (contexts: fake)"
    result = run("katib", "status", NAME, "--watch", "--interval=soon", env=env)
    assert error_line(result) == "--interval='soon' must be a number of seconds > 0"
    result = run("katib", "submit", env=env, stdin=subprocess.DEVNULL)
    assert error_line(result) == "no Katib Experiment (apiVersion kubeflow.org/v1beta1, kind Experiment) in <stdin>"
