"""The real KoBART checkpoints' layouts (tests/kobart_checkpoints.py, tiny weights, offline): each one
trains a few steps, evaluates and predicts, with one decoder start token throughout."""

import csv
import json
import subprocess
import sys

import pytest

from kobart_checkpoints import CHECKPOINTS, build
from trainer.run.report import KATIB_DEFAULT_FILTER, parse_line

TRAINER = [sys.executable, "-m", "trainer.cli"]
DECODING = ["--num_beams=2", "--generation_max_length=40"]
ROUGE = ("rouge1", "rouge2", "rougeL", "rouge_avg")


def run(*args, timeout=900):
    return subprocess.run([*TRAINER, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def figures(stdout: str, names) -> dict:
    found = {}
    for line in stdout.split("\n"):
        found.update(parse_line(line, set(names), [KATIB_DEFAULT_FILTER])[1])
    return found


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_checkpoint_trains_evaluates_and_predicts(name, tmp_path, cache):
    model = build(name, tmp_path / name.replace("/", "--"))
    out = tmp_path / "trained"
    trained = run(f"--model_name_or_path={model}", "--train_file=builtin:sample", "--eval_file=builtin:sample",
                  "--max_eval_samples=8", "--num_train_epochs=1", "--learning_rate=3e-3",
                  "--per_device_train_batch_size=16", "--early_stopping_patience=0", *DECODING,
                  f"--output_dir={out}", f"--cache_dir={cache}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    best = out / "best_model"
    config = json.loads((best / "config.json").read_text())
    generation = json.loads((best / "generation_config.json").read_text())
    start = CHECKPOINTS[name]["decoder_start_token_id"]
    # labels are shifted right from config's start token; generate() starts from generation_config's
    assert config["decoder_start_token_id"] == generation["decoder_start_token_id"] == start

    evaluated = run("evaluate", f"--model_name_or_path={best}", "--eval_file=builtin:sample",
                    "--max_eval_samples=8", *DECODING, f"--output_dir={tmp_path / 'evaluated'}", f"--cache_dir={cache}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    final = figures(trained.stdout, ["final_" + n for n in ROUGE])
    assert figures(evaluated.stdout, ROUGE) == {n: final["final_" + n] for n in ROUGE}

    with (tmp_path / "evaluated" / "predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    test = tmp_path / "test.csv"
    with test.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "dialogue"])
        from trainer.run import builtin

        with builtin.sample_csv("dev", cache).open(encoding="utf-8") as dev:
            writer.writerows([r["fname"], r["dialogue"]] for r in list(csv.DictReader(dev))[:8])
    submission = tmp_path / "submission.csv"
    predicted = run("predict", f"--model_name_or_path={best}", f"--test_file={test}", f"--output={submission}",
                    *DECODING, f"--cache_dir={cache}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with submission.open(encoding="utf-8") as f:
        summaries = list(csv.DictReader(f))
    assert [(r["fname"], r["summary"]) for r in summaries] == [(r["id"], r["prediction"]) for r in rows]
    text = " ".join(r["summary"] for r in summaries)
    assert all(r["summary"].strip() for r in summaries)
    assert "#Person" in text  # the speaker tags survive decoding
    assert not any(token in text for token in ("<s>", "</s>", "<pad>", "<usr>"))

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(best)
    ids = tokenizer(["#Person1#: 안녕하세요"], add_special_tokens=False, return_tensors="pt")
    output = AutoModelForSeq2SeqLM.from_pretrained(best).generate(**ids, max_length=8)
    assert int(output[0, 0]) == start


def test_a_checkpoint_with_only_pytorch_model_bin_is_one_line_naming_the_way_out(tmp_path, cache):
    model = build("digit82/kobart-summarization", tmp_path / "main", safetensors=False)
    assert (model / "pytorch_model.bin").is_file() and not list(model.glob("*.safetensors"))
    for command in ([], ["evaluate"], ["predict", "--test_file=builtin:sample"]):
        extra = ["--train_file=builtin:sample", "--eval_file=builtin:sample"] if not command else (
            ["--eval_file=builtin:sample"] if command == ["evaluate"] else [])
        result = run(*command, f"--model_name_or_path={model}", *extra, f"--cache_dir={cache}",
                     f"--output_dir={tmp_path / 'out'}" if command != ["predict", "--test_file=builtin:sample"]
                     else f"--output={tmp_path / 'sub.csv'}", timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (command, lines)
        assert "only pytorch_model.bin" in lines[0] and "--revision=refs/pr/1" in lines[0]


def test_revision_reaches_every_from_pretrained(monkeypatch):
    """A hub id with --revision: config, tokenizer and weights are all asked for that revision."""
    import transformers

    from trainer.errors import UsageError
    from trainer.run import model
    from trainer.run.config import build_config

    asked = []

    def refuse(what):
        def from_pretrained(path, **kwargs):
            asked.append((what, path, kwargs.get("revision")))
            raise OSError("offline test")
        return from_pretrained

    for cls in ("AutoConfig", "AutoTokenizer", "AutoModelForSeq2SeqLM"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", refuse(cls))
    settings = build_config({"model_name_or_path": "digit82/kobart-summarization", "revision": "refs/pr/1"},
                            command="evaluate")
    path = model.resolve_model_path(settings)
    for load in (lambda: model.load_model_config(path, settings.revision),
                 lambda: model.load_tokenizer(path, [], settings.revision),
                 lambda: model.load_model(path, None, None, settings.revision)):
        with pytest.raises((UsageError, OSError)):
            load()
    assert asked == [(cls, "digit82/kobart-summarization", "refs/pr/1")
                     for cls in ("AutoConfig", "AutoTokenizer", "AutoModelForSeq2SeqLM")]


def test_revision_with_a_local_folder_is_refused(tmp_path):
    result = run("evaluate", f"--model_name_or_path={tmp_path}", "--revision=refs/pr/1",
                 "--eval_file=builtin:sample", f"--cache_dir={tmp_path}", timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "is a local folder" in lines[0], lines
