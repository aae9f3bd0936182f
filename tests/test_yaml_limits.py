"""Experiments that would hang `trainer check` / `trainer search` or eat their memory are refused
in bounded time and memory: alias bombs, self-referencing aliases, grids of a billion points,
metricsFormat filters that backtrack, counts beyond Katib's int32."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.errors import UsageError
from trainer.experiment import check as check_module
from trainer.experiment import grid as katib_grid
from trainer.experiment import safe_yaml
from trainer.experiment import spec as ex
from trainer.experiment.check_space import check_grid
from trainer.experiment.check_trial import check_collector
from trainer.experiment.findings import Report
from trainer.run.report import KATIB_DEFAULT_FILTER, parse_line

ROOT = Path(__file__).resolve().parents[1]
TPE = ROOT / "manifests" / "experiments" / "tpe.yaml"
TRAINER = [sys.executable, "-m", "trainer.cli"]
# 9 ** 9 = 387 million "lol"s once expanded, from 10 lines.
LAUGHS = "\n".join(["lols:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)])


def good_text() -> str:
    return TPE.read_text(encoding="utf-8")


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("trainer: error: "), result.stderr[-2000:]
    return lines[0]


def test_alias_bomb_is_refused_without_expanding_it(tmp_path):
    # The bomb sits in an annotation of the trial Job, which check walks (json.dumps) and search copies.
    text = good_text().replace("kind: Experiment\n", f"kind: Experiment\n{LAUGHS}\n", 1).replace(
        "          checkov.io/skip1:", "          bomb: *l9\n          checkov.io/skip1:", 1)
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    for command in (["check", str(path)], ["search", str(path), f"--output_dir={tmp_path / 'out'}"]):
        result = subprocess.run([*TRAINER, *command], capture_output=True, text=True, timeout=120)
        assert one_line(result) == (f"trainer: error: {path}: YAML too big once its aliases are expanded (more "
                                    f"than {safe_yaml.MAX_YAML_NODES} values; an alias bomb?)")
    assert not (tmp_path / "out").exists()


def test_shared_aliases_within_the_limit_still_load():
    text = "a: &x [1, 2, 3]\nb: *x\nc: *x\n"
    assert safe_yaml.load_documents(text, "t.yaml") == [{"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, 3]}]
    assert safe_yaml.expanded_size(yaml.compose(text), "t.yaml") == 1 + 3 + 3 * (1 + 3)  # mapping, 3 keys, 3 lists of 3


@pytest.mark.parametrize("text, line", [
    ("loop: &loop [1, *loop]\n", 1),
    ("spec:\n  trialSpec: &spec\n    kind: Job\n    again: *spec\n", 2),
])
def test_self_referencing_alias_is_refused(text, line):
    with pytest.raises(UsageError, match=rf"^x.yaml: YAML alias that refers to itself \(line {line}\)$"):
        ex.parse_documents(text, "x.yaml")


def grid_experiment(tmp_path, parameter: dict) -> Path:
    doc = yaml.safe_load(good_text())
    doc["spec"]["algorithm"] = {"algorithmName": "grid"}
    # Every other axis one value, so the big one is the Experiment's only problem.
    doc["spec"]["parameters"] = [parameter if p["name"] == parameter["name"] else
                                 {"name": p["name"], "parameterType": "categorical",
                                  "feasibleSpace": {"list": [str(p["feasibleSpace"].get("min") or
                                                                 p["feasibleSpace"]["list"][0])]}}
                                 for p in doc["spec"]["parameters"]]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("parameter, size", [
    ({"name": "per_device_train_batch_size", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "1000000000"}},
     "1e+09"),
    ({"name": "learning_rate", "parameterType": "double",
      "feasibleSpace": {"min": "0.00001", "max": "0.1", "step": "0.000000001"}}, "1e+08"),
])
def test_a_grid_axis_of_a_billion_points_is_refused_before_it_is_built(tmp_path, capsys, parameter, size):
    path = grid_experiment(tmp_path, parameter)
    with pytest.raises(SystemExit):
        check_module.check(str(path))
    out = capsys.readouterr().out
    assert (f"spec.parameters[{parameter['name']}]: not a finite grid axis: parameter {parameter['name']}: a grid "
            f"axis of {size} values (at most {katib_grid.MAX_GRID_POINTS};") in out
    result = subprocess.run([*TRAINER, "search", str(path), f"--output_dir={tmp_path / 'out'}"],
                            capture_output=True, text=True, timeout=120)
    assert f"a grid axis of {size} values (at most {katib_grid.MAX_GRID_POINTS};" in one_line(result)
    assert not (tmp_path / "out" / "study.db").exists()


def test_a_grid_whose_axes_multiply_past_the_limit_is_refused(tmp_path, capsys):
    doc = yaml.safe_load(good_text())
    doc["spec"]["algorithm"] = {"algorithmName": "grid"}
    for p in doc["spec"]["parameters"]:
        p.clear()
        p.update(name=p.get("name") or "", parameterType="int", feasibleSpace={"min": "1", "max": "100"})
    names = [p["name"] for p in yaml.safe_load(good_text())["spec"]["parameters"]]
    for p, name in zip(doc["spec"]["parameters"], names):
        p["name"] = name
    experiment = ex.parse_documents(yaml.safe_dump(doc), "g.yaml")[0]
    with pytest.raises(UsageError, match=rf"the grid has {100 ** len(names)} points \(at most {katib_grid.MAX_GRID_POINTS}"):
        katib_grid.grid_points(experiment)
    report = Report()
    check_grid(experiment, report)
    assert [f.field for f in report.problems] == ["spec.parameters"]
    assert f"the grid has {100 ** len(names)} points" in report.problems[0].message


def collector_experiment(pattern: str) -> ex.Experiment:
    doc = yaml.safe_load(good_text())
    doc["spec"]["metricsCollectorSpec"] = {"collector": {"kind": "StdOut"},
                                           "source": {"filter": {"metricsFormat": [pattern]}}}
    return ex.parse_documents(yaml.safe_dump(doc), "m.yaml")[0]


def test_a_backtracking_metrics_filter_is_refused_by_check():
    report = Report()
    check_collector(collector_experiment(r"((?:a|a)+)\s*=\s*([+-]?\d*(\.\d+)?)"), report)
    assert len(report.problems) == 1
    assert "takes over 1 s on a line of 4096 'a' (nested repetition backtracks" in report.problems[0].message
    clean = Report()
    check_collector(collector_experiment(KATIB_DEFAULT_FILTER), clean)
    assert clean.problems == []


def test_reading_a_long_line_with_a_nested_filter_ends():
    # With Python's re this filter takes longer than a search would wait on a 40-letter word (2**40 paths).
    script = ("from trainer.run.report import parse_line\n"
              "line = '2026-12-01T00:00:00Z checkpoint ' + 'a' * 40 + ' saved rouge_avg=0.5'\n"
              "print(parse_line(line, {'rouge_avg'}, [r'((?:\\w+)+)=([\\d.]+)'])[1])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[('rouge_avg', '0.5')]", result.stderr
    assert parse_line("x " + "a" * 4096, {"rouge_avg"}, [r"((?:a|a)+)=(\d)"]) == (None, [])  # timed out: skipped


@pytest.mark.parametrize("field, value", [("maxTrialCount", 2**31), ("parallelTrialCount", 2**40),
                                          ("maxFailedTrialCount", -(2**31) - 1)])
def test_counts_beyond_int32_are_refused(field, value):
    doc = yaml.safe_load(good_text())
    doc["spec"][field] = value
    report = Report()
    check_module.check_counts(ex.parse_documents(yaml.safe_dump(doc), "c.yaml")[0], report)
    messages = [f.message for f in report.problems if f.field == f"spec.{field}"]
    assert messages == [f"{value} does not fit the int32 Katib stores it in (-2147483648..2147483647)"]
    doc["spec"][field] = 2**31 - 1 if field != "maxFailedTrialCount" else 0
    report = Report()
    check_module.check_counts(ex.parse_documents(yaml.safe_dump(doc), "c.yaml")[0], report)
    assert not any("int32" in f.message for f in report.problems)
