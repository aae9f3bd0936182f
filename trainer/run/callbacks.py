"""What the Trainer is told to do at each step and evaluation: print the metric line Katib reads
(and record it), print the loss without `=`, stop on a non-finite value, leave at once after a
SIGTERM checkpoint, and say when early stopping ends the run."""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import sys
from pathlib import Path

from trainer.run import report
from trainer.run.config import TrainConfig
from trainer.run.evaluation import Evaluation, epoch_beams


class TrainingDiverged(Exception):
    """A non-finite loss or metric: the trial must fail, never report nan."""


def settle_output(trainer) -> None:
    """transformers' own output goes: PrinterCallback prints a dict of every log (LossLine and
    MetricLine replace it). On a terminal its ProgressCallback gives way to one bar without the dict
    echo or a second bar per evaluation; report.emit writes the lines above that bar."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:  # there on a terminal only (disable_tqdm)
        trainer.add_callback(one_bar())


def one_bar():
    from transformers import ProgressCallback

    class OneBar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # LossLine prints the loss; the dict would be a second copy

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            pass  # the evaluation's own bar would push the metric line around

    return OneBar()


def make_callbacks(config: TrainConfig, metrics_path: Path, sigterm: dict, evaluation: Evaluation, stopped: dict):
    from transformers import TrainerCallback

    class MetricLine(TrainerCallback):
        """One metric line per epoch's evaluation on stdout, and the same record in metrics.jsonl."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if f"eval_{report.OBJECTIVE}" not in metrics:
                return  # the final evaluation: final_evaluation() reports it
            values = {name: metrics.get(name if name == "eval_loss" else f"eval_{name}", math.nan)
                      for name in report.METRIC_NAMES}
            epoch = round(state.epoch or 0.0, 2)
            try:
                line = report.format_metric_line(values, epoch)
            except report.NonFiniteMetric as error:
                raise TrainingDiverged(str(error)) from None
            report.emit(line)
            record = {"timestamp": line.split(" ", 1)[0], "epoch": epoch, "step": state.global_step, **values}
            with metrics_path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
            if epoch_beams(config) == config.num_beams:  # else the final evaluation decodes again
                evaluation.note(state.global_step, values[report.OBJECTIVE])

    class LossLine(TrainerCallback):
        """Training loss, in a form Katib's name=value filter ignores; stops on a non-finite loss."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            if not math.isfinite(loss):
                raise TrainingDiverged(f"training loss is {loss} at step {state.global_step} "
                                       "(try a lower --learning_rate or --max_grad_norm)")
            lr = logs.get("learning_rate", 0.0)
            report.emit(f"{report.utc_timestamp()} step {state.global_step} epoch {state.epoch:.2f} "
                        f"loss {loss:.4f} lr {lr:.3g}")

    class NoEvaluationOnSigterm(TrainerCallback):
        """After the SIGTERM checkpoint, leave at once: an epoch-end evaluation (generate())
        would eat the pod's grace period and report a partial epoch."""

        def on_epoch_end(self, args, state, control, **kwargs):
            if sigterm["seen"] and control.should_training_stop:
                control.should_evaluate = False
                control.should_save = False

    callbacks = [MetricLine(), LossLine(), NoEvaluationOnSigterm()]
    if config.report_to == "wandb":
        callbacks.append(wandb_records(config))
    if config.early_stopping_patience:
        callbacks.append(announced_early_stopping(config, stopped))
    return callbacks


def wandb_records(config: TrainConfig):
    """After transformers' WandbCallback has started the run: the config says warmup_ratio (the Trainer
    takes the ratio as warmup_steps=0.1, and the run showed only that) with the steps it came to, and
    the evaluation charts run over epochs, so trials of different batch sizes line up."""
    from transformers import TrainerCallback

    class WandbRecords(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            import wandb

            if wandb.run is None:
                return
            wandb.run.config.update({"warmup_ratio": config.warmup_ratio,
                                     "warmup_steps": args.get_warmup_steps(state.max_steps)}, allow_val_change=True)
            from trainer.run.train import wandb_key

            wandb.define_metric("train/epoch")
            for name in report.METRIC_NAMES:  # by name: a glob loses to transformers' "*" for some of them
                wandb.define_metric(wandb_key(name), step_metric="train/epoch")

    return WandbRecords()


def announced_early_stopping(config: TrainConfig, stopped: dict):
    """transformers' EarlyStoppingCallback, which also says when and why it stops and notes it in
    `stopped` for metrics.json. The line has no `=`: Katib's collector must not read it as a metric."""
    from transformers import EarlyStoppingCallback

    class AnnouncedEarlyStopping(EarlyStoppingCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            super().on_evaluate(args, state, control, metrics=metrics, **kwargs)
            # Its own verdict, not should_training_stop: the Trainer sets that on the last step anyway.
            ran_out = self.early_stopping_patience_counter >= self.early_stopping_patience
            if ran_out and not stopped and (state.epoch or 0.0) < config.num_train_epochs:
                epoch = round(state.epoch or 0.0, 2)
                best = state.best_metric if state.best_metric is not None else math.nan
                reason = (f"{report.OBJECTIVE} has not improved on {best:.4f} for {self.early_stopping_patience} "
                          "evaluations")
                stopped.update(epoch=epoch, of=config.num_train_epochs, reason=reason)
                report.emit(f"trainer: early stopping after epoch {epoch:g} of {config.num_train_epochs:g}: {reason} "
                            "(--early_stopping_patience 0 trains every epoch)", sys.stderr)

    return AnnouncedEarlyStopping(early_stopping_patience=config.early_stopping_patience)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def sigterm_when_parent_dies() -> int:
    """Katib's metrics collector runs the trainer as `sh -c "trainer ... 1>metrics.log 2>&1 || ..."`
    (pkg/webhook/v1beta1/pod/utils.go, wrapWorkerContainer): the kubelet's SIGTERM at an eviction
    reaches that shell, which ends without passing it on, and the trainer would run on to the
    SIGKILL without its checkpoint. The kernel sends SIGTERM when the parent ends instead.
    Only under such a `sh -c` parent: `nohup trainer ... &` from a terminal must outlive its shell.
    Returns the parent's pid (stop.cause tells a gone parent by it)."""
    parent = os.getppid()
    if not sys.platform.startswith("linux") or not run_by_shell_command(parent):
        return parent
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return parent
    except (OSError, AttributeError):  # no libc prctl (a static or unusual runtime): as before
        return parent
    if os.getppid() != parent:  # the parent ended before the kernel was asked
        os.kill(os.getpid(), signal.SIGTERM)
    return parent


def run_by_shell_command(pid: int) -> bool:
    """Whether process `pid` is a non-interactive shell running a command line (`sh -c ...`)."""
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and os.path.basename(argv[0]).decode(errors="replace") in ("sh", "bash", "dash") \
        and argv[1] == b"-c"


def watch_sigterm(sigterm: dict) -> None:
    """Note that SIGTERM came, then let the handler installed before it (transformers' JIT
    checkpointing, set up by the Trainer) do its work."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        sigterm["seen"] = True
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
