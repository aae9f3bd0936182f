"""`trainer` console script.

    trainer --learning_rate 3e-5 ...      one training run (the image entrypoint, every Katib trial)
    trainer evaluate --model_name_or_path DIR ...   score a saved model with given decoding settings
    trainer predict --model_name_or_path DIR ...    the submission CSV for a test file
    trainer check PATH...                 offline check of Katib Experiments
    trainer search EXPERIMENT.yaml        run an Experiment locally with Optuna
    trainer bench                         where a trial's time goes
    trainer katib submit|status|trials|best   drive Katib on a cluster

Each subcommand is a plain function (or class) handed to python-fire; it returns None (fire
would print anything else) and ends with SystemExit(code) when the exit status must say more.
User mistakes raise config.UsageError: one line on stderr, exit 2. The training, evaluate and
predict commands' signatures are generated from config.COMMAND_FLAGS, so --help lists each one's
flags with their defaults, and a flag the command does not take is refused before fire parses.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

from trainer.run.config import COMMAND_FLAGS, FLAGS, UsageError, command_signature, help_text, unknown_flag_message

SUBCOMMANDS = {
    "evaluate": "trainer.run.evaluate:evaluate_command",
    "predict": "trainer.run.predict:predict_command",
    "check": "trainer.experiment.check:check",
    "search": "trainer.experiment.search:search",
    "bench": "trainer.bench.command:bench",
    "katib": "trainer.cluster.katib:Katib",
}

HELP_FLAGS = {"help", "h", "helpfull", "trace", "verbose", "interactive", "separator", "completion"}


def fail(message: str, code: int = 2) -> None:
    print(f"trainer: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def flag_names(argv: list[str]) -> list[str]:
    """Names of the --flags in argv, normalised as fire does (dashes -> underscores, --noX -> X)."""
    names = []
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name not in FLAGS and name.startswith("no") and name[2:] in FLAGS:
            name = name[2:]
        names.append(name)
    return names


def train_command(**flags):
    from trainer.run.config import build_config

    config = build_config(flags)
    from trainer.run.train import run

    run(config)


train_command.__signature__ = command_signature("train")
train_command.__doc__ = help_text()


def check_flag_names(argv: list[str], command: str) -> None:
    """Refuse a flag the command does not take before fire parses anything: one line, a did-you-mean."""
    for name in flag_names(argv):
        if name not in COMMAND_FLAGS[command] and name not in HELP_FLAGS:
            fail(unknown_flag_message(name, command))


def load(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def main(argv: list[str] | None = None) -> None:
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    # fire writes help to stderr; `trainer --help | less` should work.
    help_to_stdout = contextlib.redirect_stderr(sys.stdout) if {"-h", "--help"} & set(argv) else contextlib.nullcontext()
    try:
        with help_to_stdout:
            dispatch(fire, argv)
    except UsageError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def dispatch(fire, argv: list[str]) -> None:
    if argv and argv[0] in SUBCOMMANDS and argv[0] in COMMAND_FLAGS:
        check_flag_names(argv[1:], argv[0])
    if argv and argv[0] in SUBCOMMANDS:
        # Only the named subcommand is imported; fire still sees `trainer NAME ...` for its help.
        fire.Fire({argv[0]: load(SUBCOMMANDS[argv[0]])}, command=argv, name="trainer")
        return
    check_flag_names(argv, "train")
    if argv and not argv[0].startswith("-"):
        fail(f"unknown command {argv[0]!r}; commands: {', '.join(SUBCOMMANDS)}, "
             "or --flags to train (trainer --help)")
    fire.Fire(train_command, command=argv, name="trainer")


if __name__ == "__main__":
    main()
