"""Katib's `hyperband`: its settings, its validation and its bracket schedule, as plain functions.

Ported from kubeflow/katib pkg/suggestion/v1beta1/hyperband/service.py (HyperBandParam.convert,
_new_hbParameters, _make_master_bracket, _make_child_bracket, _get_top_trial and
ValidateAlgorithmSettings), float arithmetic included: s_max = int(log(r_l) / log(eta)) is 4, not
5, for r_l=243, eta=3, as in Katib. Each rung is a set of trials with the resource parameter set to
the rung's value; a promoted configuration is a NEW trial retrained from scratch at the larger
value (Katib copies the parameter assignments, not a checkpoint).

Where Katib's service departs from its own arithmetic on a cluster (see CLUSTER_PROBLEM), the
local search follows the arithmetic: bracket s starts n = ceil((s_max+1) * eta^s / (s+1))
configurations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.experiment import vocabulary as vocab

DEFAULT_ETA = vocab.HYPERBAND_DEFAULT_ETA

# Why no hyperband Experiment ships for the cluster (read in service.py and the controller's
# suggestionclient.go / experiment_controller.go).
CLUSTER_PROBLEM = (
    "on a cluster Katib's hyperband does not get past the first rung: its service sizes each answer by "
    "the number of trials the controller asks for (n = current_request_number), answers a request for "
    "k promoted trials with ceil(k/eta) of them, which the controller rejects unless k is 1 ('The "
    "response contains unexpected trials'), and fails while a rung has a trial not Succeeded "
    "(kubeflow/katib#1389, open); `trainer search` runs its schedule locally")


@dataclass(frozen=True)
class Rung:
    bracket: int  # s, from s_max down to 0
    index: int  # i: 0 is the bracket's first rung (new random configurations)
    trials: int  # configurations in the rung (promoted ones: at most this many)
    resource: int  # the resource parameter's value for its trials

    @property
    def label(self) -> str:
        return f"bracket {self.bracket} rung {self.index}"


def katib_eta(settings: dict) -> float:
    """The service's eta: the setting as a float, 3 where unset or not above 0."""
    eta = float(settings["eta"]) if "eta" in settings else DEFAULT_ETA
    return eta if eta > 0 else DEFAULT_ETA


def s_max(r_l: float, eta: float) -> int:
    return int(math.log(r_l) / math.log(eta))


def total_budget(r_l: float, eta: float) -> float:
    """Katib's b_l: the resource one bracket uses, (s_max + 1) * r_l."""
    return (s_max(r_l, eta) + 1) * r_l


def schedule(r_l: float, eta: float = DEFAULT_ETA) -> list[Rung]:
    """Every rung of every bracket, in the order Katib's service makes them."""
    top = s_max(r_l, eta)
    rungs = []
    for s in range(top, -1, -1):
        n = int(math.ceil(float(top + 1) * (float(eta**s) / float(s + 1))))  # _new_hbParameters
        r = r_l * eta ** (-s)
        rungs.append(Rung(s, 0, n, int(r)))  # _make_master_bracket: str(int(param.r))
        for i in range(s):  # _make_child_bracket, then _update_hbParameters
            n_i = math.ceil(n * eta ** (-i))
            rungs.append(Rung(s, i + 1, int(math.ceil(n_i / eta)), int(r * eta ** (i + 1))))
    return rungs


def top_configurations(ranked: list[tuple[float, object]], count: int, maximize: bool) -> list:
    """_get_top_trial: the rung's trials sorted by objective (a stable sort: ties keep start order),
    the best `count`."""
    ordered = sorted(ranked, key=lambda pair: pair[0], reverse=maximize)
    return [item for _, item in ordered[:count]]


def validation_problems(settings: dict, parameter_names: list[str], parallel: int) -> list[tuple[str, str]]:
    """(setting, message) for what Katib's ValidateAlgorithmSettings rejects, in its words, and
    what passes it but then fails in the service."""
    if "r_l" not in settings or "resource_name" not in settings:
        return [("", vocab.HYPERBAND_MISSING)]
    problems = []
    try:
        r_l = float(str(settings["r_l"]))
    except ValueError:
        r_l = None
    if r_l is None or not math.isfinite(r_l) or r_l < 0:
        problems.append(("r_l", vocab.HYPERBAND_BAD_R_L))
        r_l = None
    elif r_l == 0:
        problems.append(("r_l", vocab.HYPERBAND_BAD_R_L + " (Katib's check lets 0 through, then fails on log(0))"))
        r_l = None
    try:
        eta = int(float(str(settings.get("eta", DEFAULT_ETA))))  # the validation truncates eta
    except ValueError:
        eta = None
    if eta is None or eta == 1:
        problems.append(("eta", f"{settings.get('eta')!r} must be a number >= 2 (Katib's service divides by "
                                "log(eta) and fails)"))
    elif r_l is not None:
        need = int(math.ceil((eta if eta > 0 else DEFAULT_ETA) ** s_max(r_l, eta if eta > 0 else DEFAULT_ETA)))
        if parallel < need:
            problems.append(("", vocab.HYPERBAND_LOW_PARALLEL % need))
    if settings["resource_name"] not in parameter_names:
        problems.append(("resource_name", vocab.HYPERBAND_BAD_RESOURCE))
    return problems


def describe(rungs: list[Rung], resource_name: str) -> str:
    """`bracket 2: 9 x 1, 3 x 3, 1 x 9; ...`: configurations x resource value, per bracket."""
    brackets = []
    for s in dict.fromkeys(r.bracket for r in rungs):
        brackets.append(f"bracket {s}: " + ", ".join(f"{r.trials} x {r.resource}" for r in rungs if r.bracket == s))
    trials = sum(r.trials for r in rungs)
    used = sum(r.trials * r.resource for r in rungs)
    return f"{'; '.join(brackets)} (trials x {resource_name}; {trials} trials, {resource_name} {used} in all)"
