"""A small stand-in for a Kubernetes API server with Katib installed, on 127.0.0.1.

It serves only what `trainer katib` asks for, the way kube-apiserver answers it:

    POST /apis/kubeflow.org/v1beta1/namespaces/{ns}/experiments          create (201, 409)
    GET  /apis/kubeflow.org/v1beta1/namespaces/{ns}/experiments[/{name}] list / get (404 Status)
    GET  /apis/kubeflow.org/v1beta1/namespaces/{ns}/trials?labelSelector=katib.kubeflow.org/experiment=NAME

`mode` switches the whole server to a broken cluster: "no-katib" answers every Katib path
with the plain-text 404 an API server gives for an unknown API group (no CRDs), "forbidden"
with the 403 Status RBAC gives, "unauthorized" with the 401 of a rejected token. Every request and every POSTed body is recorded.
`frames[(ns, name)]` is a list of statuses served one per GET (the last one repeats), so a
watch sees an Experiment move on.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

GROUP, VERSION = "kubeflow.org", "v1beta1"
PATH = re.compile(rf"^/apis/{GROUP}/{VERSION}/namespaces/([^/]+)/(experiments|trials)(?:/([^/]+))?$")
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
USER = "system:serviceaccount:ml:viewer"


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details or {}, "code": code}


class FakeKube:
    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name) -> object
        self.frames: dict[tuple[str, str], list[dict]] = {}
        self.posted: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.mode = ""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, obj: dict) -> None:
        meta = obj["metadata"]
        plural = {"Experiment": "experiments", "Trial": "trials"}[obj["kind"]]
        self.objects[(plural, meta["namespace"], meta["name"])] = copy.deepcopy(obj)

    def reset(self) -> None:
        self.objects.clear()
        self.frames.clear()
        self.posted.clear()
        self.requests.clear()
        self.mode = ""

    # ------------------------------------------------------------ answers

    def answer(self, method: str, url: str, body: bytes) -> tuple[int, object]:
        parsed = urlparse(url)
        self.requests.append((method, url))
        match = PATH.match(parsed.path)
        if not match or self.mode == "no-katib":
            return 404, "404 page not found\n"
        namespace, plural, name = match.groups()
        verb = {"GET": "get" if name else "list", "POST": "create"}.get(method, method.lower())
        if self.mode == "unauthorized":  # an expired token
            return 401, status_body(401, "Unauthorized", "Unauthorized")
        if self.mode == "forbidden":
            target = f'{plural}.{GROUP} "{name}"' if name else f"{plural}.{GROUP}"
            return 403, status_body(403, "Forbidden", f'{target} is forbidden: User "{USER}" cannot {verb} '
                                    f'resource "{plural}" in API group "{GROUP}" in the namespace "{namespace}"',
                                    {"name": name or "", "group": GROUP, "kind": plural})
        if verb == "get":
            return self.get(plural, namespace, name)
        if verb == "list":
            return self.list(plural, namespace, parse_qs(parsed.query).get("labelSelector", [""])[0])
        if verb == "create" and plural == "experiments" and not name:
            return self.create(namespace, json.loads(body))
        return 405, status_body(405, "MethodNotAllowed", f"{method} is not supported here")

    def get(self, plural: str, namespace: str, name: str) -> tuple[int, object]:
        obj = self.objects.get((plural, namespace, name))
        if obj is None:
            return 404, status_body(404, "NotFound", f'{plural}.{GROUP} "{name}" not found',
                                    {"name": name, "group": GROUP, "kind": plural})
        obj = copy.deepcopy(obj)
        frames = self.frames.get((namespace, name)) if plural == "experiments" else None
        if frames:
            obj["status"] = frames.pop(0) if len(frames) > 1 else frames[0]
        return 200, obj

    def list(self, plural: str, namespace: str, selector: str) -> tuple[int, object]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        items = [copy.deepcopy(obj) for (p, ns, _), obj in sorted(self.objects.items())
                 if p == plural and ns == namespace
                 and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
        kind = {"experiments": "ExperimentList", "trials": "TrialList"}[plural]
        return 200, {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                     "metadata": {"resourceVersion": "1000"}, "items": items}

    def create(self, namespace: str, obj: dict) -> tuple[int, object]:
        self.posted.append(copy.deepcopy(obj))
        name = obj.get("metadata", {}).get("name", "")
        if ("experiments", namespace, name) in self.objects:
            return 409, status_body(409, "AlreadyExists", f'experiments.{GROUP} "{name}" already exists',
                                    {"name": name, "group": GROUP, "kind": "experiments"})
        stored = copy.deepcopy(obj)
        stored["metadata"] = {**stored.get("metadata", {}), "namespace": namespace,
                              "uid": f"uid-{len(self.posted)}", "resourceVersion": str(len(self.posted)),
                              "creationTimestamp": "2026-11-28T03:00:00Z"}
        self.objects[("experiments", namespace, name)] = stored
        return 201, stored

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def respond(self):
                length = int(self.headers.get("Content-Length") or 0)
                code, payload = fake.answer(self.command, self.path, self.rfile.read(length))
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8" if isinstance(payload, str)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = respond

            def log_message(self, *args):
                pass

        return Handler


def kubeconfig(url: str, namespace: str = "default", context: str = "fake") -> str:
    """A kubeconfig with one context pointing at `url` (token auth, as a cloud cluster gives)."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
    })


# ---------------------------------------------------------------- Katib-shaped objects


def managed_field(manager: str, at: str) -> dict:
    return {"manager": manager, "operation": "Update", "apiVersion": f"{GROUP}/{VERSION}", "time": at,
            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}


def condition(kind: str, status: str, reason: str, message: str, at: str) -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": at, "lastTransitionTime": at}


def metrics(**values: tuple[str, str, str]) -> list[dict]:
    """observation.metrics as the trial controller writes them: name, min, max, latest (strings)."""
    return [{"name": name, "min": low, "max": high, "latest": latest} for name, (low, high, latest) in values.items()]


def trial(experiment: dict, name: str, params: dict[str, str], state: str, started: str,
          finished: str | None = None, observed: list[dict] | None = None) -> dict:
    """A Trial of `experiment` in one of Katib's states, conditions as the trial controller sets them."""
    meta, spec = experiment["metadata"], experiment["spec"]
    conditions = [condition("Created", "True", "TrialCreated", "Trial is created", started)]
    running = "True" if state == "Running" else "False"
    if state != "Pending":
        conditions.append(condition("Running", running, "TrialRunning", "Trial is running", started))
    final = {
        "Succeeded": ("Succeeded", "TrialSucceeded", "Trial has succeeded"),
        "Failed": ("Failed", "TrialFailed", "Trial has failed. Job message: Job has reached the specified backoff limit"),
        "MetricsUnavailable": ("MetricsUnavailable", "TrialMetricsUnavailable", "Metrics are not available"),
        "EarlyStopped": ("EarlyStopped", "TrialEarlyStopped", "Trial is early stopped"),
    }.get(state)
    if final:
        conditions.append(condition(final[0], "True", final[1], final[2], finished))
    status = {"startTime": started, "conditions": conditions}
    if finished:
        status["completionTime"] = finished
    if observed is not None:
        status["observation"] = {"metrics": observed}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Trial",
        "metadata": {"name": name, "namespace": meta["namespace"], "creationTimestamp": started,
                     "labels": {EXPERIMENT_LABEL: meta["name"]}, "finalizers": ["clean-metrics-in-db"],
                     "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "Experiment",
                                          "name": meta["name"], "uid": meta.get("uid", ""),
                                          "controller": True, "blockOwnerDeletion": True}],
                     "managedFields": [managed_field("katib-controller", started)]},
        "spec": {
            "objective": spec["objective"],
            "parameterAssignments": [{"name": k, "value": v} for k, v in params.items()],
            "primaryContainerName": spec["trialTemplate"]["primaryContainerName"],
            "runSpec": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}},
            "metricsCollector": {"collector": {"kind": "StdOut"}},
        },
        "status": status,
    }
