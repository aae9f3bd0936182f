"""`trainer check` and trainer/experiment/spec.py: the good Experiments pass, each broken one is caught.

Broken Experiments are derived from the good manifests/experiments/tpe.yaml, one mutation each.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.errors import UsageError
from trainer.experiment import check as check_module
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "manifests" / "experiments"
TPE = EXPERIMENTS / "tpe.yaml"


def trainer_command() -> list[str]:
    script = Path(sys.executable).parent / "trainer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainer.cli"]


def good() -> dict:
    return yaml.safe_load(TPE.read_text(encoding="utf-8"))


def param(doc: dict, name: str) -> dict:
    return next(p for p in doc["spec"]["parameters"] if p["name"] == name)


def container(doc: dict) -> dict:
    return doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]


def trial_params(doc: dict) -> list:
    return doc["spec"]["trialTemplate"]["trialParameters"]


def run_check(tmp_path: Path, doc: dict, capsys) -> tuple[int, list[str], str]:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    try:
        check_module.check(str(path))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


# ---------------------------------------------------------------- the good Experiments


def test_good_tpe_passes_in_process(tmp_path, capsys):
    code, lines, _ = run_check(tmp_path, good(), capsys)
    assert code == 0
    assert lines == ["1 Experiment OK: kobart-tpe (multivariate-tpe)"]


def test_folder_passes_through_the_cli():
    result = subprocess.run([*trainer_command(), "check", str(ROOT / "manifests")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ("7 Experiments OK: kobart-decode (multivariate-tpe), kobart-grid (grid), "
                                     "kobart-random (random), kobart-tpe (multivariate-tpe), "
                                     "kobart-stage1-lr-batch (multivariate-tpe), kobart-stage2-epochs-schedule (grid), "
                                     "kobart-stage3-details (multivariate-tpe)")


def test_rendered_kustomize_output_on_stdin_passes():
    kubectl = Path(sys.executable).parent / "kubectl"
    rendered = subprocess.run([str(kubectl), "kustomize", str(ROOT)], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    result = subprocess.run([*trainer_command(), "check", "-"], input=rendered, capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("1 Experiment OK: kobart-tpe")  # the default apply: one search


# ---------------------------------------------------------------- broken Experiments


def set_name(value):
    def mutate(doc):
        doc["metadata"]["name"] = value
    return mutate


def set_spec(key, value):
    def mutate(doc):
        doc["spec"][key] = value
    return mutate


def set_objective(key, value):
    def mutate(doc):
        doc["spec"]["objective"][key] = value
    return mutate


def set_space(name, **space):
    def mutate(doc):
        param(doc, name)["feasibleSpace"] = space
    return mutate


def set_double(name, **space):
    """The parameter as a double with this feasibleSpace (tpe.yaml writes warmup_ratio as a list)."""
    def mutate(doc):
        param(doc, name).update(parameterType="double", feasibleSpace=space)
    return mutate


def add_arg(arg):
    def mutate(doc):
        ex.edit_trainer_args(container(doc), lambda args: [*args, arg])
    return mutate


def replace_arg(prefix, arg):
    def mutate(doc):
        args = container(doc)["args"]
        args[[a.startswith(prefix) for a in args].index(True)] = arg
    return mutate


def as_grid(max_trials):
    def mutate(doc):
        doc["spec"]["algorithm"] = {"algorithmName": "grid"}
        doc["spec"]["maxTrialCount"] = max_trials
        param(doc, "learning_rate").update(parameterType="discrete",
                                           feasibleSpace={"list": ["1e-5", "3e-5", "5e-5"]})
    return mutate


def drop_template_key(key):
    def mutate(doc):
        del doc["spec"]["trialTemplate"][key]
    return mutate


def add_trial_param(name, reference):
    def mutate(doc):
        trial_params(doc).append({"name": name, "reference": reference})
    return mutate


def early_stopping_setting(name, value):
    def mutate(doc):
        doc["spec"]["earlyStopping"]["algorithmSettings"] = [{"name": name, "value": value}]
    return mutate


def job_spec(doc: dict) -> dict:
    return doc["spec"]["trialTemplate"]["trialSpec"]["spec"]


def failure_rule(index, **changes):
    """Change rule `index` of the good podFailurePolicy (0: Ignore DisruptionTarget, 1: FailJob on any failure)."""
    def mutate(doc):
        rule = job_spec(doc)["podFailurePolicy"]["rules"][index]
        for key, value in changes.items():
            target = rule["onExitCodes"] if key in ("containerName", "operator", "values") else rule
            target[key] = value
    return mutate


def trial_spec_name(doc):
    doc["spec"]["trialTemplate"]["trialSpec"]["metadata"]["name"] = "fixed"


def no_command(doc):
    del container(doc)["command"]


def unused_parameter(doc):
    doc["spec"]["parameters"].append({"name": "weight_decay", "parameterType": "double",
                                      "feasibleSpace": {"min": "0.0", "max": "0.1"}})


def one_group_filter(doc):
    doc["spec"]["metricsCollectorSpec"]["source"] = {"filter": {"metricsFormat": [r"rouge_avg=\d+"]}}


def foreign_filter(doc):
    doc["spec"]["metricsCollectorSpec"]["source"] = {"filter": {"metricsFormat": [r"(\w+):\s*(\d+\.\d+)"]}}


# (id, mutation, field fragment, message fragment): one Katib or project rule each.
BROKEN = [
    ("name-pattern", set_name("Kobart_TPE"), "metadata.name", "is not a valid Experiment name"),
    ("name-length", set_name("k" * 41), "metadata.name", "has 41 characters (at most 40"),
    ("max-trials-zero", set_spec("maxTrialCount", 0), "spec.maxTrialCount", "must be greater than 0"),
    ("max-trials-missing", lambda d: d["spec"].pop("maxTrialCount"), "spec.maxTrialCount", "missing"),
    ("max-trials-string", set_spec("maxTrialCount", "30"), "spec.maxTrialCount", "is not an integer"),
    ("parallel-zero", set_spec("parallelTrialCount", 0), "spec.parallelTrialCount", "must be greater than 0"),
    ("parallel-above-max", set_spec("parallelTrialCount", 31), "spec.parallelTrialCount",
     "31 is above maxTrialCount 30"),
    ("failed-negative", set_spec("maxFailedTrialCount", -1), "spec.maxFailedTrialCount",
     "must not be less than 0"),
    ("failed-above-max", set_spec("maxFailedTrialCount", 31), "spec.maxFailedTrialCount",
     "31 is above maxTrialCount 30"),
    ("objective-type", set_objective("type", "maximise"), "spec.objective.type", "is not minimize or maximize"),
    ("objective-direction", set_objective("type", "minimize"), "spec.objective.type",
     "would search for the worst settings (maximize it)"),
    ("objective-unknown-metric", set_objective("objectiveMetricName", "rouge_l"),
     "spec.objective.objectiveMetricName", "is not a metric the trainer prints"),
    ("objective-repeated", set_objective("additionalMetricNames", ["rouge1", "rouge_avg"]),
     "spec.objective.additionalMetricNames", "repeats the objective"),
    ("additional-unknown-metric", set_objective("additionalMetricNames", ["rouge1", "bleu"]),
     "spec.objective.additionalMetricNames", "'bleu' is not a metric the trainer prints"),
    ("goal-out-of-range", set_objective("goal", 45.0), "spec.objective.goal", "can never be reached"),
    ("strategy", set_objective("metricStrategies", [{"name": "rouge_avg", "value": "best"}]),
     "spec.objective.metricStrategies", "'best' is not a strategy"),
    ("algorithm-unknown", set_spec("algorithm", {"algorithmName": "bayesian"}), "spec.algorithm.algorithmName",
     "is not a Katib algorithm"),
    ("tpe-parallel-duplicates", set_spec("algorithm", {"algorithmName": "tpe"}), "spec.algorithm.algorithmName",
     "same suggestion (use multivariate-tpe"),
    ("algorithm-setting", set_spec("algorithm", {"algorithmName": "multivariate-tpe", "algorithmSettings": [
        {"name": "n_startup", "value": "5"}]}), "spec.algorithm.algorithmSettings[n_startup]", "unknown setting"),
    ("early-stopping-name", set_spec("earlyStopping", {"algorithmName": "median"}),
     "spec.earlyStopping.algorithmName", "is not a Katib early-stopping algorithm"),
    ("early-stopping-setting", early_stopping_setting("start_step", "0"),
     "spec.earlyStopping.algorithmSettings[start_step]", "is not an integer >= 1"),
    ("early-stopping-unquoted", early_stopping_setting("min_trials_required", 3),
     "spec.earlyStopping.algorithmSettings[min_trials_required]", "must be a quoted string"),
    ("resume-policy", set_spec("resumePolicy", "Always"), "spec.resumePolicy", "is not a resume policy"),
    ("int-with-list", set_space("num_train_epochs", min="10", max="30", list=["10", "20"]),
     "spec.parameters[num_train_epochs].feasibleSpace.list", "not allowed for parameterType int"),
    ("double-without-max", set_space("learning_rate", min="1e-5"), "spec.parameters[learning_rate].feasibleSpace",
     "needs both min and max"),
    ("categorical-with-min", set_space("optim", list=["adamw_torch"], min="1"),
     "spec.parameters[optim].feasibleSpace.min", "not allowed for parameterType categorical"),
    ("unquoted-min", set_space("learning_rate", min=1e-5, max="5e-4", distribution="logUniform"),
     "spec.parameters[learning_rate].feasibleSpace.min", "must be a quoted string"),
    ("unquoted-bool-list", set_space("fp16", list=[True, False]), "spec.parameters[fp16].feasibleSpace.list",
     "must be a quoted string (\"true\")"),
    ("min-above-max", set_space("gradient_accumulation_steps", min="4", max="1"),
     "spec.parameters[gradient_accumulation_steps].feasibleSpace", "min 4 is above max 1"),
    ("not-finite", set_double("warmup_ratio", min="0.0", max="inf"), "spec.parameters[warmup_ratio].feasibleSpace.max",
     "is not a finite number"),
    ("int-not-whole", set_space("num_train_epochs", min="10.5", max="30"),
     "spec.parameters[num_train_epochs].feasibleSpace.min", "is not a whole number"),
    ("log-uniform-zero", set_space("learning_rate", min="0", max="5e-4", distribution="logUniform"),
     "spec.parameters[learning_rate].feasibleSpace.min", "must be > 0 for distribution logUniform"),
    ("distribution", set_space("learning_rate", min="1e-5", max="5e-4", distribution="loguniform"),
     "spec.parameters[learning_rate].feasibleSpace.distribution", "is not one of"),
    ("parameter-type", lambda d: param(d, "optim").update(parameterType="string"),
     "spec.parameters[optim].parameterType", "is not one of int, double, categorical, discrete"),
    ("discrete-not-number", set_space("per_device_train_batch_size", list=["8", "sixteen"]),
     "spec.parameters[per_device_train_batch_size].feasibleSpace.list", "'sixteen' is not a number"),
    ("list-value-space", set_space("lr_scheduler_type", list=["linear", "cosine with restarts"]),
     "spec.parameters[lr_scheduler_type].feasibleSpace.list", "contains a space"),
    ("optimizer-removed", set_space("optim", list=["adamw_torch", "adamw_hf"]), "spec.parameters[optim]",
     "value 'adamw_hf' is rejected by the trainer: --optim='adamw_hf' is not an optimizer"),
    ("warmup-out-of-range", set_double("warmup_ratio", min="0.0", max="1.0", step="0.05"),
     "spec.parameters[warmup_ratio]", "--warmup_ratio=1.0 must be in [0, 1)"),
    ("batch-zero", set_space("per_device_train_batch_size", list=["0", "8"]),
     "spec.parameters[per_device_train_batch_size]", "must be >= 1"),
    ("unreferenced-parameter", unused_parameter, "spec.parameters[weight_decay]", "no trialParameter references it"),
    ("grid-above-size", as_grid(20000), "spec.maxTrialCount", "20000 is above the grid size 16200"),
    ("grid-double-without-step", lambda d: (as_grid(10)(d), param(d, "learning_rate").update(
        parameterType="double", feasibleSpace={"min": "1e-5", "max": "5e-4"})),
     "spec.parameters[learning_rate].feasibleSpace.step", "a grid needs a finite list of values"),
    ("primary-container-missing", drop_template_key("primaryContainerName"),
     "spec.trialTemplate.primaryContainerName", "missing"),
    ("primary-container-unknown", lambda d: d["spec"]["trialTemplate"].update(primaryContainerName="main"),
     "spec.trialTemplate.primaryContainerName", "'main' is not a container of the trial Job"),
    ("trial-parameters-missing", drop_template_key("trialParameters"), "spec.trialTemplate.trialParameters",
     "missing"),
    ("trial-parameter-duplicate-name", add_trial_param("optim", "learning_rate"),
     "spec.trialTemplate.trialParameters[optim]", "name declared twice"),
    ("trial-parameter-duplicate-reference", add_trial_param("optim2", "optim"),
     "spec.trialTemplate.trialParameters[optim2].reference", "is referenced twice"),
    ("trial-parameter-unknown-reference", lambda d: trial_params(d)[0].update(reference="optimizer"),
     "spec.trialTemplate.trialParameters[optim].reference", "is neither a parameter"),
    ("trial-parameter-unused", add_trial_param("seed", "${trialSpec.Namespace}"),
     "spec.trialTemplate.trialParameters[seed]", "not used in the trialSpec"),
    ("trial-parameter-undeclared", add_arg("--seed=${trialParameters.seed}"), "spec.trialTemplate.trialParameters",
     "${trialParameters.seed} is used in the trialSpec but not declared"),
    ("trial-spec-name", trial_spec_name, "spec.trialTemplate.trialSpec.metadata", "must not set name or namespace"),
    ("failure-policy-restart", lambda d: job_spec(d)["template"]["spec"].update(restartPolicy="OnFailure"),
     "podFailurePolicy", "needs template.spec.restartPolicy Never"),
    ("failure-policy-container", failure_rule(1, containerName="trainer"),
     "podFailurePolicy.rules[1].onExitCodes.containerName", "'trainer' is not a container of the trial Job"),
    ("failure-policy-operator", failure_rule(1, operator="Equals"),
     "podFailurePolicy.rules[1].onExitCodes.operator", "'Equals' is not one of In, NotIn"),
    ("failure-policy-no-values", failure_rule(1, values=[]), "podFailurePolicy.rules[1].onExitCodes.values",
     "non-empty list of integer exit codes"),
    ("failure-policy-string-values", failure_rule(1, values=["2"]), "podFailurePolicy.rules[1].onExitCodes.values",
     "non-empty list of integer exit codes"),
    ("failure-policy-zero", failure_rule(1, operator="In", values=[0, 2]), "podFailurePolicy.rules[1].onExitCodes.values",
     "0 is not allowed with operator In"),
    ("failure-policy-action", failure_rule(0, action="Retry"), "podFailurePolicy.rules[0].action",
     "'Retry' is not one of FailJob, Ignore, Count, FailIndex"),
    ("failure-policy-condition-type", failure_rule(0, onPodConditions=[{"status": "True"}]),
     "podFailurePolicy.rules[0].onPodConditions[0]", "needs a type"),
    ("failure-policy-both", failure_rule(0, onExitCodes={"operator": "In", "values": [1]}),
     "podFailurePolicy.rules[0]", "exactly one of onExitCodes and onPodConditions"),
    ("trial-spec-kind", lambda d: d["spec"]["trialTemplate"]["trialSpec"].update(kind="Pod", apiVersion="v1"),
     "spec.trialTemplate.trialSpec", "trials of this trainer are batch/v1 Jobs"),
    ("collector-none", set_spec("metricsCollectorSpec", {"collector": {"kind": "None"}}),
     "spec.metricsCollectorSpec.collector.kind", "None was removed from Katib"),
    ("collector-file", set_spec("metricsCollectorSpec", {"collector": {"kind": "TensorFlowEvent"}}),
     "spec.metricsCollectorSpec.collector.kind", "the trainer reports its metrics on stdout"),
    ("filter-one-group", one_group_filter, "metricsFormat", "needs two groups"),
    ("filter-misses-metrics", foreign_filter, "metricsFormat", "does not read rouge_avg"),
    ("command-missing", no_command, "command", "spell out command: [sh, -c], args: [\"{ trap 'kill -TERM $p' TERM;\""),
    ("command-other-shell", lambda d: container(d).update(args=["trainer --learning_rate=1e-4"]), "args",
     "a sh -c trial command must be the trainer's trial shell"),
    ("command-launcher", lambda d: container(d).update(command=["torchrun", "-m", "trainer.cli"]), "command",
     "runs 'torchrun'"),
    ("unknown-flag", add_arg("--learning-rates=1"), "args", "unknown flag --learning_rates; did you mean "
                                                            "--learning_rate?"),
    ("duplicate-flag", add_arg("--optim=adamw_torch"), "args", "--optim is given twice"),
    ("positional-arg", add_arg("train"), "args", "'train' is not a --flag=value argument"),
    ("space-in-arg", replace_arg("--output_dir=", "--output_dir=/output/my run"), "args", "contains a space"),
    ("shell-char-in-arg", add_arg("--seed=1;reboot"), "args", "the shell character ';'"),
    ("objective-not-mapping", set_spec("objective", "rouge_avg"), "spec.objective", "must be a mapping"),
    ("args-not-list", lambda d: container(d).update(args="--seed=1"), "args", "must be a list of strings"),
    ("static-value-rejected", replace_arg("--report_to=", "--report_to=tensorboard"), "args",
     "rejected by the trainer: --report_to='tensorboard' is not one of"),
]


@pytest.mark.parametrize("mutate, field, fragment", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_experiment_is_rejected(tmp_path, capsys, mutate, field, fragment):
    doc = good()
    mutate(doc)
    code, lines, _ = run_check(tmp_path, doc, capsys)
    assert code == 1, lines
    wanted = [line for line in lines if field in line and fragment in line]
    assert wanted, f"no line with {field!r} and {fragment!r} in:\n" + "\n".join(lines)
    assert all(line.startswith(f"{tmp_path / 'experiment.yaml'}: ") for line in lines)


def test_every_problem_is_reported_not_just_the_first(tmp_path, capsys):
    doc = good()
    set_name("Bad_Name")(doc)
    set_spec("maxTrialCount", 0)(doc)
    set_space("optim", list=["adamw_hf"])(doc)
    code, lines, _ = run_check(tmp_path, doc, capsys)
    assert code == 1
    assert len(lines) == 3, lines
    assert [line.split(": ")[2] for line in lines] == ["metadata.name", "spec.maxTrialCount",
                                                       "spec.parameters[optim]"]
    assert all(line.split(": ")[1] == "Bad_Name" for line in lines)


def test_broken_experiment_exits_1_through_the_cli(tmp_path):
    doc = good()
    set_objective("objectiveMetricName", "accuracy")(doc)
    del doc["spec"]["objective"]["metricStrategies"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = subprocess.run([*trainer_command(), "check", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == (f"{path}: kobart-tpe: spec.objective.objectiveMetricName: 'accuracy' is not a "
                             "metric the trainer prints (rouge1, rouge2, rougeL, rouge_avg, eval_loss, final_rouge1, "
                             "final_rouge2, final_rougeL, final_rouge_avg, final_eval_loss)\n")


def test_duplicate_names_in_one_stream_are_reported(tmp_path, capsys):
    text = TPE.read_text(encoding="utf-8")
    path = tmp_path / "both.yaml"
    path.write_text(text + "\n---\n" + text, encoding="utf-8")
    with pytest.raises(SystemExit) as exit:
        check_module.check(str(path))
    assert exit.value.code == 1
    assert "has the same name" in capsys.readouterr().out


def test_grid_double_axis_warns_with_katib_values(tmp_path, capsys):
    doc = good()
    as_grid(100)(doc)
    set_double("warmup_ratio", min="0.0", max="0.2", step="0.05")(doc)
    code, lines, err = run_check(tmp_path, doc, capsys)
    assert code == 0, lines
    assert "np.arange: 0.0, 0.05, 0.1, 0.15000000000000002, 0.2" in err


def test_a_trainer_without_the_trial_shell_is_warned_about_evictions(tmp_path, capsys):
    doc = good()
    container(doc).update(command=["trainer"], args=container(doc)["args"][2:-1])  # the flags, no shell
    code, lines, err = run_check(tmp_path, doc, capsys)
    assert code == 0, lines
    assert "the trainer runs right under Katib's sh -c, which an eviction's SIGTERM ends at once" in err
    assert "warning" not in run_check(tmp_path, good(), capsys)[2]


def test_user_errors_exit_2_with_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n", encoding="utf-8")
    empty = tmp_path / "namespace.yaml"
    empty.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", encoding="utf-8")
    for path, fragment in [(tmp_path / "missing.yaml", "no such file or folder"),
                           (broken, "not valid YAML at line"), (empty, "no Katib Experiment")]:
        result = subprocess.run([*trainer_command(), "check", str(path)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and fragment in result.stderr and str(path) in result.stderr


# ---------------------------------------------------------------- trainer/experiment/spec.py


def test_load_reads_folders_multi_documents_and_skips_other_kinds(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "all.yml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n" + TPE.read_text(encoding="utf-8"),
        encoding="utf-8")
    (tmp_path / "notes.txt").write_text("kind: Experiment", encoding="utf-8")
    [experiment] = ex.load_experiments([tmp_path])
    assert experiment.name == "kobart-tpe" and experiment.source == str(tmp_path / "sub" / "all.yml")
    [from_text] = ex.load_experiments([], text=TPE.read_text(encoding="utf-8"))
    assert from_text.source == "<stdin>"


def test_parsed_spec_fields():
    [e] = ex.load_experiments([TPE])
    assert (e.objective.type, e.objective.objective_metric_name) == ("maximize", "rouge_avg")
    assert e.objective.additional_metric_names == ["final_rouge1", "final_rouge2", "final_rougeL", "final_rouge_avg",
                                                   "final_eval_loss"]
    assert e.objective.metric_strategies == {"rouge_avg": "max", **{f"final_{m}": "latest" for m in
                                             ("rouge1", "rouge2", "rougeL", "rouge_avg", "eval_loss")}}
    assert e.algorithm.name == "multivariate-tpe" and e.algorithm.settings["random_state"] == "42"
    assert e.early_stopping.name == "medianstop"
    assert (e.max_trial_count, e.parallel_trial_count, e.max_failed_trial_count) == (30, 3, 5)
    lr = next(p for p in e.parameters if p.name == "learning_rate")
    assert (lr.parameter_type, lr.min, lr.max, lr.distribution) == ("double", "1e-5", "5e-4", "logUniform")
    assert e.metrics_collector.kind == "StdOut"
    assert e.trial_template.primary_container_name == "training-container"
    assert e.trial_template.trial_parameters[-1].reference == "${trialSpec.Name}"


def test_trial_args_substitutes_parameters_and_meta_keys():
    [e] = ex.load_experiments([TPE])
    values = {"optim": "adafactor", "learning_rate": 3e-05, "per_device_train_batch_size": "16",
              "num_train_epochs": 15, "gradient_accumulation_steps": 2, "warmup_ratio": 0.1,
              "lr_scheduler_type": "cosine", "fp16": True}
    argv = ex.trial_args(e, values, "kobart-tpe-abc123")
    assert argv[0] == "trainer"
    assert "--learning_rate=3e-05" in argv and "--fp16=true" in argv and "--optim=adafactor" in argv
    assert "--output_dir=/output/kobart-tpe-abc123" in argv
    assert not any("${" in arg for arg in argv)
    with pytest.raises(UsageError, match="no value for parameter 'optim'"):
        ex.trial_args(e, {k: v for k, v in values.items() if k != "optim"}, "t")


def test_grid_points_match_katib():
    [grid] = ex.load_experiments([EXPERIMENTS / "grid.yaml"])
    points = katib_grid.grid_points(grid)
    assert len(points) == 18 == grid.max_trial_count
    assert len({tuple(p.items()) for p in points}) == 18
    assert {p["learning_rate"] for p in points} == {"1e-5", "3e-5", "5e-5"}
    # Katib: np.arange(min, max + step, step) minus a last value above max.
    noisy = ex.Parameter("w", "double", min="0.0", max="0.3", step="0.1")
    assert katib_grid.grid_axis(noisy) == ["0.0", "0.1", "0.2"]  # 0.30000000000000004 > 0.3: dropped
    assert katib_grid.grid_axis(ex.Parameter("w", "double", min="0.0", max="0.2", step="0.05"))[3] == "0.15000000000000002"
    assert katib_grid.grid_axis(ex.Parameter("e", "int", min="10", max="30", step="5")) == ["10", "15", "20", "25", "30"]
    with pytest.raises(UsageError, match="needs a step"):
        katib_grid.grid_axis(ex.Parameter("lr", "double", min="1e-5", max="5e-4"))


def test_metric_filters_default_and_custom():
    [e] = ex.load_experiments([TPE])
    assert ex.metric_filters(e) == [ex.KATIB_DEFAULT_FILTER]
    e.metrics_collector.metrics_format = [r"(\w+)=(\d+)"]
    assert ex.metric_filters(e) == [r"(\w+)=(\d+)"]


# ---------------------------------------------------------------- the decode Experiment (trainer evaluate)


def decode() -> dict:
    return yaml.safe_load((EXPERIMENTS / "decode.yaml").read_text(encoding="utf-8"))


def test_good_decode_passes(tmp_path, capsys):
    code, lines, _ = run_check(tmp_path, decode(), capsys)
    assert (code, lines) == (0, ["1 Experiment OK: kobart-decode (multivariate-tpe)"])


@pytest.mark.parametrize("change, fragment", [
    # evaluate's own flags: a training flag is refused, a typo gets evaluate's did-you-mean
    (lambda d: ex.edit_trainer_args(container(d), lambda a: [*a, "--learning_rate=3e-5"]),
     "trainer evaluate does not take --learning_rate (a flag of training)"),
    (lambda d: ex.edit_trainer_args(container(d), lambda a: [*a, "--min_new_token=5"]),
     "did you mean --min_new_tokens?"),
    # values fine alone, ignored by generate() together: one beam with a length penalty
    (lambda d: param(d, "num_beams")["feasibleSpace"].update(list=["4", "1"]),
     "num_beams=1 with length_penalty=0.5 is rejected by the trainer: --length_penalty=0.5 has no effect"),
    (lambda d: param(d, "min_new_tokens")["feasibleSpace"].update(list=["0", "120"]),
     "--min_new_tokens=120 must be below --generation_max_length=100"),
])
def test_broken_decode_experiment_is_rejected(tmp_path, capsys, change, fragment):
    doc = decode()
    change(doc)
    code, lines, _ = run_check(tmp_path, doc, capsys)
    assert code == 1
    assert any(fragment in line for line in lines), lines
