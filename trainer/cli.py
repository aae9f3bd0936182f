"""`trainer` console script: bare --flags train once; the first word names a subcommand.

Each subcommand is a plain function (or class) handed to python-fire; it returns None (fire
would print anything else) and ends with SystemExit(code) when the exit status must say more.
User mistakes raise UsageError: one line on stderr, exit 2. The training, evaluate and predict
commands' signatures come from config.COMMAND_FLAGS, so --help lists each one's flags with defaults. Every --option is
checked against the command's own names first (a did-you-mean, never silently ignored), and the
help is fire's without its noise (the INFO line, short flags, a bare `-` synopsis).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import os
import re
import sys

from trainer import DISTRIBUTION, install_hint
from trainer.console import fail
from trainer.errors import UsageError
from trainer.flags import flag_names
from trainer.run.config import COMMAND_FLAGS, FLAGS, command_signature, help_text, unknown_flag_message

# name -> (where it lives, its usage, one line of what it does): the one list of subcommands.
SUBCOMMANDS = {
    "evaluate": ("trainer.run.evaluate:evaluate_command", "evaluate --model_name_or_path DIR ...",
                 "score a saved model with given decoding settings (one metric line)"),
    "predict": ("trainer.run.predict:predict_command", "predict --model_name_or_path DIR --test_file F",
                "the submission CSV (fname,summary) for a test file"),
    "search": ("trainer.search.command:search", "search EXPERIMENT.yaml",
               "run a Katib Experiment on this machine with Optuna"),
    "check": ("trainer.experiment.check:check", "check PATH...",
              "what Katib's webhook or the trainer would reject in Experiments, offline"),
    "katib": ("trainer.cluster.katib:Katib", "katib submit|status|trials|best",
              "drive Katib Experiments on a cluster"),
    "bench": ("trainer.bench.command:bench", "bench", "where a trial's time goes, ours against the baseline"),
    "bench search": ("trainer.bench.search:bench_search", "bench search",
                     "how many trial-epochs grid, random and TPE spend to reach the grid's best"),
    "bench search record": ("trainer.bench.record:record", "bench search record",
                            "train a grid, every epoch evaluated: the learning-curve table bench search replays"),
}
# The pyproject extra that brings each subcommand's own packages (the image carries only a trial's).
EXTRAS = {"search": "search", "bench search": "search", "bench search record": "search"}  # katib: cluster/kube.py says it where it connects
HELP_FLAGS = {"help", "h", "helpfull", "trace", "verbose", "interactive", "separator"}
# Launchers' variables: torchrun/accelerate/deepspeed start one process per rank, each printing every metric line.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "LOCAL_WORLD_SIZE")


def train_command(**flags):
    refuse_distributed_launch()
    from trainer.run.config import build_config

    config = build_config(flags)
    from trainer.run.train import run

    run(config)


train_command.__signature__ = command_signature("train")
train_command.__doc__ = help_text()


def refuse_distributed_launch(environ=None) -> None:
    """One process per trial: Katib's early stopping signals that one process, and its collector
    (and medianstop) would count each rank's metric lines as more evaluations."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_VARIABLES:
        if environ.get(name, "1").strip() not in ("", "1"):
            raise UsageError(f"{name}={environ[name]}: a distributed launch (torchrun, accelerate launch) is not "
                             "supported: a trial is one process on one GPU (Katib's early stopping signals one "
                             "process, and every rank would print each metric line); run `trainer` directly")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def completion_script() -> str:
    """A bash completion of the subcommands and the training flags: eval "$(trainer --completion)"."""
    words = sorted({key.split()[0] for key in SUBCOMMANDS} | {f"--{n}" for n in COMMAND_FLAGS["train"]}
                   | {"--help", "--version", "--completion"})
    return 'complete -o default -W "' + " ".join(words) + '" trainer\n'


def load(target: str, command: str = ""):
    module, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as error:
        if command not in EXTRAS or (error.name or "").startswith("trainer"):
            raise
        raise UsageError(f"`trainer {command}` needs the {error.name} package: "
                         + install_hint(EXTRAS[command])) from None


def did_you_mean(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def find_subcommand(argv: list[str]) -> str | None:
    """The SUBCOMMANDS key argv starts with, the longest first (`bench search` before `bench`)."""
    for words in (3, 2, 1):
        key = " ".join(argv[:words])
        if len(argv) >= words and key in SUBCOMMANDS:
            return key
    return None


def options_of(component, argv: list[str], name: str) -> tuple[str, set[str]] | None:
    """(command name, its --option names) for `trainer NAME [METHOD] ...`; None where fire decides
    (a class without a method named yet: fire lists its methods)."""
    target = component
    if inspect.isclass(component):
        methods = [m for m in vars(component) if not m.startswith("_") and callable(getattr(component, m))]
        if len(argv) < 2 or argv[1].startswith("-"):
            return None
        if argv[1] not in methods:
            raise UsageError(f"unknown command `trainer {name} {argv[1]}`{did_you_mean(argv[1], methods)} "
                             f"(commands: {', '.join(methods)})")
        target, name = getattr(component, argv[1]), f"{name} {argv[1]}"
    parameters = inspect.signature(target).parameters.values()
    names = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
    return name, names


def refuse_unknown_options(component, argv: list[str], name: str) -> None:
    """argv starts at the subcommand's last word; `name` is the whole subcommand (`bench search`)."""
    found = options_of(component, argv, name)
    if found is None:
        return
    command, names = found
    for name in flag_names(argv[1:], known=names):
        if name in HELP_FLAGS or name in names:
            continue
        if command in COMMAND_FLAGS:  # evaluate, predict: the trainer's flags, with their own line
            raise UsageError(unknown_flag_message(name, command))
        choices = [f"--{n}" for n in sorted(names)]
        raise UsageError(f"unknown option --{name} of `trainer {command}`{did_you_mean('--' + name, choices)} "
                         f"(options: {', '.join(choices) or 'none'})")


def refuse_short_flags(argv: list[str]) -> None:
    """Single-dash flags other than -h: fire would read -f as --fp16; the trainer's flags are spelled out."""
    for token in argv:
        if re.fullmatch(r"-[A-Za-z]\w*(=.*)?", token) and token != "-h":
            raise UsageError(f"{token}: flags are spelled out (--fp16, --bf16, ...); run `trainer --help` for the list")


def tidy_help(text: str, commands: str = "") -> str:
    """fire's help without its noise, and the subcommands listed where there are any."""
    lines = [line for line in text.splitlines() if not line.startswith("INFO: Showing help with the command")]
    lines = [re.sub(r"^(\s+)-\w, (--\w)", r"\1\2", line) for line in lines]
    lines = [re.sub(r"^(\s+trainer(?: \w+)*) -$", r"\1 COMMAND", line) for line in lines]
    lines = [re.sub(r"'(trainer [\w ]+)'", r"\1", line) for line in lines]  # fire quotes a name with a space
    text = "\n".join(lines).strip("\n") + "\n"
    if commands:
        text = text.replace("\nDESCRIPTION\n", f"\nCOMMANDS\n{commands}\nDESCRIPTION\n", 1)
    return text


def command_list() -> str:
    width = max(len(usage) for _, usage, _ in SUBCOMMANDS.values()) + len("trainer ")
    lines = [f"    {'trainer --flag=value ...'.ljust(width)}   one training run (every flag below)"]
    lines += [f"    {('trainer ' + usage).ljust(width)}   {summary}" for _, usage, summary in SUBCOMMANDS.values()]
    lines.append("    `trainer COMMAND --help` for one command's options")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv in (["--version"], ["-V"]):
            print(f"trainer {version()} ({DISTRIBUTION})")
        elif argv == ["--completion"]:
            print(completion_script(), end="")
        elif not argv:  # a 20-epoch run on data/train.csv is never what a bare `trainer` means
            show_help(["--help"])
            raise SystemExit(2)
        elif {"-h", "--help"} & set(argv[:4]) or (argv and argv[0] == "katib" and len(argv) == 1):
            show_help(argv)
        else:
            dispatch(argv)
    except UsageError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def fire_call(component, argv: list[str], name: str = "trainer") -> None:
    import fire

    fire.Fire(component, command=argv, name=name)


def show_help(argv: list[str]) -> None:
    """fire's help text, captured (fire writes it to stderr and may page it) and tidied, on stdout."""
    key = find_subcommand(argv)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        with contextlib.suppress(SystemExit):
            if key is None:
                fire_call(train_command, argv)
            else:
                run_subcommand(key, argv if {"-h", "--help"} & set(argv) else [*argv, "--help"])
    print(tidy_help(captured.getvalue(), command_list() if key is None else ""), end="")


def run_subcommand(key: str, argv: list[str]) -> None:
    """`trainer KEY ...`: only that subcommand's module is imported; fire sees its last word."""
    words = key.split()
    nested = [k.split()[-1] for k in SUBCOMMANDS if k.startswith(key + " ")]
    if nested and len(argv) > len(words) and not argv[len(words)].startswith("-"):
        word = argv[len(words)]  # not a positional value: `trainer bench serch` is a typo of a command
        raise UsageError(f"unknown command `trainer {key} {word}`{did_you_mean(word, nested)} "
                         f"(commands: {', '.join(nested)}, or {key}'s own --options)")
    if key in COMMAND_FLAGS:  # evaluate, predict: the trainer's own flags, spelled out as in training
        refuse_short_flags(argv[1:])
    component = load(SUBCOMMANDS[key][0], key)
    rest = argv[len(words) - 1:]
    refuse_unknown_options(component, rest, key)
    fire_call({words[-1]: component}, rest, name=" ".join(["trainer", *words[:-1]]))


def dispatch(argv: list[str]) -> None:
    key = find_subcommand(argv)
    if key is not None:
        run_subcommand(key, argv)
        return
    if argv and not argv[0].startswith("-"):
        raise UsageError(f"unknown command {argv[0]!r}{did_you_mean(argv[0], SUBCOMMANDS)} (commands: "
                         f"{', '.join(SUBCOMMANDS)}, or --flags to train: trainer --help)")
    refuse_short_flags(argv)
    for name in flag_names(argv, known=FLAGS):
        if name not in COMMAND_FLAGS["train"] and name not in HELP_FLAGS:
            raise UsageError(unknown_flag_message(name))
    fire_call(train_command, argv)


if __name__ == "__main__":
    main()
