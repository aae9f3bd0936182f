"""`trainer katib best TRAINING --decode-experiment OUT.yaml`: the decoding search on the model a finished
training search kept, filled in from its optimal trial.

manifests/experiments/decode.yaml is the template (in no kustomization): its model path names no real
trial, so it is never applied as it is. The training trial saved its kept model in
<its --output_dir>/best_model on the outputs volume (train.py), which the decode trials mount too.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainer.errors import UsageError
from trainer.flags import parse_flags

TEMPLATE = "manifests/experiments/decode.yaml"
MODEL_ARG = re.compile(r"(--model_name_or_path=)\S+")


def model_of(argv: list[str], trial: str, source: str) -> str:
    """Where the training trial `argv` (its command, filled in) left its kept model."""
    from trainer.run.train import BEST_MODEL_DIR

    if argv[1:2] == ["evaluate"]:
        raise UsageError(f"{source} is a decoding search: its trials train no model; pass the training "
                         "Experiment whose model to decode with (e.g. kobart-tpe)")
    output_dir = parse_flags(argv[1:]).get("output_dir")
    if not output_dir:
        raise UsageError(f"{source}: trial {trial} ran without --output_dir: no saved model to name")
    return f"{output_dir.rstrip('/')}/{BEST_MODEL_DIR}"


def write(path, template, model: str, namespace: str, header: list[str]) -> Path:
    """The template with `model` as its --model_name_or_path and `namespace` set, checked as
    `trainer check` checks files; nothing is written when it would not pass."""
    from trainer.experiment import check
    from trainer.experiment import spec as ex
    from trainer.run.files import atomic_write

    template, path = Path(template), Path(path)
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--decode_template={template}: {error.strerror or error} (the decoding Experiment "
                         f"to fill in; {TEMPLATE} in this project)") from None
    if len(MODEL_ARG.findall(text)) != 1:
        raise UsageError(f"--decode_template={template}: needs exactly one --model_name_or_path= argument "
                         f"to fill in, found {len(MODEL_ARG.findall(text))}")
    text = MODEL_ARG.sub(lambda m: m.group(1) + model, text)
    text = re.sub(r"(?m)^metadata:\n(?!  namespace:)", f"metadata:\n  namespace: {namespace}\n", text, count=1)
    text = "".join(f"# {line}\n" for line in header) + text
    findings = check.check_experiment(ex.parse_documents(text, str(path))[0])
    if findings.problems:
        first = findings.problems[0]
        raise UsageError(f"{path}: the filled-in decoding Experiment would not pass trainer check: "
                         f"{first.field}: {first.message}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return path
