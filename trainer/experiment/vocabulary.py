"""Katib's vocabulary in one place: the words, defaults and limits of v1beta1 Experiments and Trials.

Checked against kubeflow/katib (pkg/apis/controller, pkg/webhook, pkg/controller.v1beta1 and the
suggestion / early-stopping services). `trainer check`, `trainer search` and `trainer katib` all
read them from here.
"""

from __future__ import annotations

import re

KIND = "Experiment"
API_GROUP = "kubeflow.org/"

# metadata.name: the webhook's regex (anchored here: stricter) and length limit.
NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME_LENGTH = 40

OBJECTIVE_TYPES = ("minimize", "maximize")
STRATEGIES = ("min", "max", "latest")
RESUME_POLICIES = ("", "Never", "LongRunning", "FromVolume")
PARAMETER_TYPES = ("int", "double", "categorical", "discrete")
RANGE_TYPES = ("int", "double")  # need min and max, no list
LIST_TYPES = ("categorical", "discrete")  # need a list, no min/max/step
DISTRIBUTIONS = ("", "uniform", "logUniform", "normal", "logNormal")
COLLECTORS = ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "Push")
# Katib's default katib-config suggestion services; enas/darts search architectures (nasConfig).
ALGORITHMS = ("random", "tpe", "multivariate-tpe", "grid", "cmaes", "sobol", "hyperband",
              "bayesianoptimization", "pbt")
NAS_ALGORITHMS = ("enas", "darts")
EARLY_STOPPING = ("medianstop",)

# ExperimentSpec holds maxTrialCount, parallelTrialCount and maxFailedTrialCount as *int32.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# Defaults Katib's mutating webhook fills in where a field is omitted.
DEFAULT_PARALLEL_TRIAL_COUNT = 3
DEFAULT_COLLECTOR = "StdOut"
# medianstop's algorithmSettings defaults (pkg/earlystopping/v1beta1/medianstop/service.py).
MEDIANSTOP_DEFAULT_MIN_TRIALS_REQUIRED = 3
MEDIANSTOP_DEFAULT_START_STEP = 4
# hyperband's algorithmSettings (pkg/suggestion/v1beta1/hyperband/service.py): what a user writes, the
# service's own state (it stores it beside them), eta's default and ValidateAlgorithmSettings' messages.
HYPERBAND_SETTINGS = ("r_l", "resource_name", "eta")
HYPERBAND_STATE_SETTINGS = ("s_max", "b_l", "r", "n", "current_s", "current_i", "evaluating_trials")
HYPERBAND_DEFAULT_ETA = 3
HYPERBAND_MISSING = "r_l and resource_name must be set."
HYPERBAND_BAD_R_L = "r_l must be a positive float number."
HYPERBAND_LOW_PARALLEL = "parallelTrialCount must be not less than %d."
HYPERBAND_BAD_RESOURCE = "value of resource_name setting must be in parameters."

# Katib's meta references in trialParameters: ${trialSpec.Name}, ${trialSpec.Labels[key]}, ...
META_KEYS = ("Name", "Namespace", "Kind", "APIVersion", "Labels", "Annotations")

# Trial conditions (pkg/apis/controller/trials/v1beta1): the states a trial ends in.
RUNNING, PENDING = "Running", "Pending"
SUCCEEDED, EARLY_STOPPED, FAILED, METRICS_UNAVAILABLE = "Succeeded", "EarlyStopped", "Failed", "MetricsUnavailable"
KILLED = "Killed"
FINISHED = (SUCCEEDED, EARLY_STOPPED, FAILED, METRICS_UNAVAILABLE)  # count toward maxTrialCount
FAILED_STATES = (FAILED, METRICS_UNAVAILABLE)  # count toward maxFailedTrialCount
WITH_OBJECTIVE = (SUCCEEDED, EARLY_STOPPED)  # may be the optimal trial
UNAVAILABLE = "unavailable"  # an observation's value for a metric never reported


def default_strategy(objective_type: str) -> str:
    """Katib's defaulting webhook: a metric without a strategy gets the objective type's."""
    return {"maximize": "max", "minimize": "min"}.get(objective_type, "latest")
