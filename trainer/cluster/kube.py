"""Cluster access for `trainer katib`: which cluster, the calls made to it, and one clear line
for each way a call can fail.

The cluster is found as kubectl finds it: the kubeconfig ($KUBECONFIG, else ~/.kube/config)
and its current context or --context; inside a pod without a kubeconfig, the pod's service
account. The clients are imported only when a command talks to the cluster (the Katib SDK
takes seconds to import, so only `submit` loads it).

KatibClient turns every failure into a bare Exception/RuntimeError ("Failed to create Katib
Experiment: ns/name"); the HTTP status or network error behind it is still on the exception
chain, and `explain` reads it from there.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import install_hint
from trainer.errors import UsageError

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Neither client sets a connect timeout: without one an unreachable address hangs for minutes.
REQUEST_TIMEOUT_S = 30
GROUP, VERSION = "kubeflow.org", "v1beta1"
KATIB_API = f"experiments.{GROUP}/{VERSION}"
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"  # set by Katib on each Trial


@dataclass
class Cluster:
    configuration: Any  # kubernetes.client.Configuration
    namespace: str  # the context's namespace (or the pod's), used when --namespace is not given
    host: str
    source: str  # "context NAME" or "in-cluster service account", for messages

    def objects(self):
        """Custom resources through the kubernetes client (reads: JSON as the API serves it)."""
        from kubernetes import client

        return client.CustomObjectsApi(client.ApiClient(self.configuration))

    def katib(self):
        """The Katib SDK's client (creates Experiments)."""
        from kubeflow.katib import KatibClient

        return KatibClient(client_configuration=self.configuration, namespace=self.namespace)


def require_cluster_packages() -> None:
    """The Kubernetes client and the Katib SDK are the `cluster` extra: one line where they are missing."""
    import importlib.util

    for module, package in (("kubernetes", "kubernetes"), ("kubeflow.katib", "kubeflow-katib")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package (kubeflow) is missing
            found = False
        if not found:
            raise UsageError(f"`trainer katib` needs the {package} package: {install_hint('cluster')}")


def kubeconfig_paths() -> list[Path]:
    value = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return paths or [Path.home() / ".kube" / "config"]


def connect(context: str | None = None) -> Cluster:
    """The kubeconfig's context (or --context), else the pod's service account."""
    require_cluster_packages()
    from kubernetes import client, config

    configuration = client.Configuration()
    paths = kubeconfig_paths()
    shown = os.pathsep.join(str(p) for p in paths)
    if any(p.is_file() for p in paths):
        try:
            contexts, current = config.list_kube_config_contexts()
            names = [c.get("name") for c in contexts]
            if context and context not in names:
                raise UsageError(f"--context={context} is not a context in {shown} (contexts: {', '.join(names)})")
            config.load_kube_config(context=context, client_configuration=configuration)
        except (config.ConfigException, OSError, ValueError) as error:
            raise UsageError(f"kubeconfig {shown}: {one_line(str(error))}") from None
        chosen = next(c for c in contexts if c.get("name") == context) if context else current
        namespace = (chosen.get("context") or {}).get("namespace") or "default"
        source = f"context {chosen.get('name')}"
    elif context:
        raise UsageError(f"--context={context}: there is no kubeconfig ({shown}); set KUBECONFIG")
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as error:
            raise UsageError(f"in-cluster config: {error}") from None
        namespace = read_text(SERVICE_ACCOUNT_NAMESPACE) or "default"
        source = "in-cluster service account"
    else:
        raise UsageError(f"no cluster configured: no kubeconfig at {shown} (set KUBECONFIG) "
                         "and not running inside a pod")
    configuration.retries = 1
    socket.setdefaulttimeout(REQUEST_TIMEOUT_S)
    return Cluster(configuration=configuration, namespace=namespace, host=configuration.host, source=source)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- calls


def create_experiment(cluster: Cluster, namespace: str, doc: dict) -> None:
    """POST the document as it is (a dict goes to the API server unchanged)."""
    with api_errors(cluster, namespace, doc.get("metadata", {}).get("name", "")):
        cluster.katib().create_experiment(doc, namespace=namespace)


# KatibClient.get_experiment/list_trials are not used for reading: they turn the JSON into SDK
# models with a parser that knows only `dict(str, str)` type names, while the kubernetes 37 models
# declare `Dict[str, str]`: any object with labels or annotations (every Trial) fails there.
def get_experiment(cluster: Cluster, namespace: str, name: str) -> dict:
    with api_errors(cluster, namespace, name):
        return cluster.objects().get_namespaced_custom_object(GROUP, VERSION, namespace, "experiments", name)


def list_trials(cluster: Cluster, namespace: str, experiment: str) -> list[dict]:
    with api_errors(cluster, namespace, experiment):
        answer = cluster.objects().list_namespaced_custom_object(
            GROUP, VERSION, namespace, "trials", label_selector=f"{EXPERIMENT_LABEL}={experiment}")
    return list(answer.get("items") or [])


# ---------------------------------------------------------------- errors


class AlreadyExists(UsageError):
    """409 on create: an Experiment of that name is there already."""


@contextmanager
def api_errors(cluster: Cluster, namespace: str, name: str = ""):
    """Turn a failed Kubernetes/Katib call into a UsageError with one clear line."""
    try:
        yield
    except Exception as error:  # KatibClient raises bare Exception/RuntimeError; the cause is chained
        api = api_exception(error)
        kind = AlreadyExists if api is not None and api.status == 409 else UsageError
        raise kind(explain(error, cluster, namespace, name)) from None


def chain(error: BaseException):
    """The error, what caused it, what caused that, ... (urllib3 keeps its cause in `.reason`)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        reason = getattr(error, "reason", None)
        following = error.__cause__ or error.__context__
        error = reason if isinstance(reason, BaseException) and following is None else following


def api_exception(error: BaseException):
    """The HTTP answer behind an error (kubernetes ApiException), or None (network, config, ...)."""
    from kubernetes.client.exceptions import ApiException

    return next((e for e in chain(error) if isinstance(e, ApiException) and e.status), None)


def explain(error: BaseException, cluster: Cluster, namespace: str, name: str = "") -> str:
    errors = list(chain(error))
    api = api_exception(error)
    if api is not None:
        return explain_status(api, cluster, namespace, name)
    where = f"the Kubernetes API at {cluster.host} ({cluster.source})"
    if any(isinstance(e, (TimeoutError, socket.timeout)) for e in errors):
        return f"{where} did not answer within {REQUEST_TIMEOUT_S} s; is the cluster up? (kubectl cluster-info)"
    os_error = next((e for e in reversed(errors) if isinstance(e, OSError)), None)
    if os_error is not None:
        reason = os_error.strerror or str(os_error)
        return f"cannot reach {where}: {reason}; is the cluster up? (kubectl cluster-info)"
    root = errors[-1]
    detail = f" ({root.__class__.__name__}: {one_line(str(root))})" if root is not error else ""
    return f"{one_line(str(error))}{detail}"


def server_message(api) -> tuple[str, dict]:
    """The message and details of a Kubernetes Status body; ("", {}) when the body is not one."""
    try:
        body = json.loads(api.body or "")
    except (TypeError, ValueError):
        return "", {}
    if not isinstance(body, dict) or body.get("kind") != "Status":
        return "", {}
    return one_line(str(body.get("message", ""))), body.get("details") or {}


def explain_status(api, cluster: Cluster, namespace: str, name: str) -> str:
    message, details = server_message(api)
    status = api.status
    if status == 401:
        return (f"the Kubernetes API at {cluster.host} rejected the credentials of {cluster.source} "
                "(401 Unauthorized); log in again or pick another --context")
    if status == 403:
        return (f"forbidden by RBAC: {message or api.reason} (trainer katib needs create, get, list on "
                f"experiments and get, list on trials of API group kubeflow.org in namespace {namespace})")
    if status == 404:
        kind = details.get("kind", "")
        if kind == "namespaces":
            return f"namespace {details.get('name') or namespace!r} does not exist on {cluster.host}"
        if kind == "experiments" and details.get("name"):
            return (f"no Experiment {details['name']!r} in namespace {namespace!r} "
                    "(give --namespace; `kubectl get experiments -A` lists them all)")
        return (f"Katib is not installed on the cluster at {cluster.host}: it does not serve {KATIB_API} "
                "(install Katib, or pick another --context)")
    if status == 409:
        return (f"Experiment {name!r} already exists in namespace {namespace!r}; delete it first "
                f"(kubectl delete experiment {name} -n {namespace}) or rename it")
    if status in (400, 422):
        return f"the cluster rejected Experiment {name!r}: {message or api.reason}"
    return f"the Kubernetes API at {cluster.host} answered {status} {api.reason}: {message or one_line(api.body or '')}"


def one_line(text: str) -> str:
    return " ".join(text.split())
