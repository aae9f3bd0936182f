"""`trainer check`'s rules for the trial Job itself: its podFailurePolicy (batch/v1, stable since
Kubernetes 1.31), which retries preempted pods and ends the Job at once on a failure that would repeat."""

from __future__ import annotations

from trainer.experiment.findings import Report

POD_FAILURE_ACTIONS = ("FailJob", "Ignore", "Count", "FailIndex")
EXIT_CODE_OPERATORS = ("In", "NotIn")
CONDITION_STATUSES = ("True", "False", "Unknown")


# With earlyStopping, Katib's metrics-collector webhook appends `|| if <early-stopped marker>; then ...; else
# echo Training Container was Failed; exit 1; fi` to the container's command (pkg/webhook/v1beta1/pod/
# utils.go, getEarlyStoppingCommand): the container exits 1 whatever the trainer's exit status was.
WRAPPED_FAILURE_EXIT = 1


def check_pod_failure_policy(job: dict, report: Report, early_stopping: bool = False) -> None:
    """The Job API's podFailurePolicy rules (batch/v1, stable since Kubernetes 1.31); with early
    stopping, rules on the trainer's own exit codes that Katib's wrapper makes unreachable."""
    spec = job.get("spec") if isinstance(job.get("spec"), dict) else {}
    policy = spec.get("podFailurePolicy")
    if policy is None:
        return
    field = "spec.trialTemplate.trialSpec.spec.podFailurePolicy"
    rules = policy.get("rules") if isinstance(policy, dict) else None
    if not isinstance(rules, list) or not rules:
        report.problem(f"{field}.rules", "must be a non-empty list of rules")
        return
    template = spec.get("template") if isinstance(spec.get("template"), dict) else {}
    pod = template.get("spec") if isinstance(template.get("spec"), dict) else {}
    if pod.get("restartPolicy") != "Never":
        report.problem(f"{field}", f"needs template.spec.restartPolicy Never (it is {pod.get('restartPolicy')!r})")
    names = [c.get("name") for key in ("containers", "initContainers") for c in pod.get(key) or []
             if isinstance(c, dict)]
    for index, rule in enumerate(rules):
        label = f"{field}.rules[{index}]"
        if not isinstance(rule, dict):
            report.problem(label, "must be a mapping")
            continue
        if rule.get("action") not in POD_FAILURE_ACTIONS:
            report.problem(f"{label}.action", f"{rule.get('action')!r} is not one of {', '.join(POD_FAILURE_ACTIONS)}")
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            report.problem(label, "needs exactly one of onExitCodes and onPodConditions")
        if "onExitCodes" in rule:
            check_on_exit_codes(rule["onExitCodes"], names, f"{label}.onExitCodes", report)
            if early_stopping:
                check_wrapped_exit_codes(rule["onExitCodes"], f"{label}.onExitCodes", report)
        if "onPodConditions" in rule:
            conditions = rule["onPodConditions"]
            if not isinstance(conditions, list) or not conditions:
                report.problem(f"{label}.onPodConditions", "must be a non-empty list of {type: ...}")
                continue
            for number, condition in enumerate(conditions):
                where = f"{label}.onPodConditions[{number}]"
                if not isinstance(condition, dict) or not condition.get("type"):
                    report.problem(where, "needs a type (e.g. DisruptionTarget)")
                elif condition.get("status", "True") not in CONDITION_STATUSES:
                    report.problem(f"{where}.status", f"{condition['status']!r} is not one of "
                                                      f"{', '.join(CONDITION_STATUSES)}")


def check_on_exit_codes(codes, names: list, label: str, report: Report) -> None:
    if not isinstance(codes, dict):
        report.problem(label, "must be a mapping of containerName, operator, values")
        return
    name = codes.get("containerName")
    # Without containerName every container's exit code matches, the Katib sidecar's included.
    if name is not None and name not in names:
        report.problem(f"{label}.containerName", f"{name!r} is not a container of the trial Job "
                                                 f"(containers: {', '.join(map(str, names)) or 'none'})")
    operator = codes.get("operator")
    if operator not in EXIT_CODE_OPERATORS:
        report.problem(f"{label}.operator", f"{operator!r} is not one of {', '.join(EXIT_CODE_OPERATORS)}")
    values = codes.get("values")
    if not isinstance(values, list) or not values or not all(type(v) is int for v in values):
        report.problem(f"{label}.values", "must be a non-empty list of integer exit codes")
    elif operator == "In" and 0 in values:
        report.problem(f"{label}.values", "0 is not allowed with operator In (a successful exit)")
    elif values != sorted(set(values)):
        report.problem(f"{label}.values", "must be in increasing order without repeats")


def check_wrapped_exit_codes(codes, label: str, report: Report) -> None:
    """Under earlyStopping every failure reaches the Job as exit 1: a rule on other codes never fires."""
    if not isinstance(codes, dict) or not isinstance(codes.get("values"), list):
        return
    values, operator = codes["values"], codes.get("operator")
    if (operator == "In" and WRAPPED_FAILURE_EXIT not in values) or (operator == "NotIn" and WRAPPED_FAILURE_EXIT in values):
        report.problem(f"{label}", f"never matches: with earlyStopping Katib's wrapper ends every failed trial with "
                                   f"exit {WRAPPED_FAILURE_EXIT} (the trainer's own exit status is lost); use "
                                   "operator NotIn, values [0] to end the Job on any failure")
