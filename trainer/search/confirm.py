"""Confirmation across seeds: is the search's winner ahead of training noise, or one lucky draw?

Every trial of a search trains with one seed, so its objective is one draw of the seed's noise (data
order, initialisation, dropout), which the example-bootstrap intervals do not cover. `trainer search
FILE --confirm K --seeds N` reruns the K best configurations (Succeeded trials, best objective first,
one per distinct configuration) with N other seeds (1, 2, ... skipping the search's own seed): real
trial processes of the same runner, in their own folders (TRIAL-seedS), recorded in a study of their
own (EXPERIMENT-confirm), so a rerun runs only what is missing.

The comparison uses the new seeds only (the search's seed picked these configurations, so their
values there are biased upwards): each configuration's mean and standard deviation over the seeds,
next to the example-bootstrap interval of its per-example scores averaged over the seeds; then the
configuration with the best mean against each other one, paired by seed: the 95% t-interval of the
per-seed differences. It is the winner (best.yaml written) only when every interval excludes 0 on its
side; otherwise the configurations whose intervals hold 0 are a tie (no best.yaml).
"""

from __future__ import annotations

import dataclasses
import math
import queue
import statistics
from dataclasses import dataclass, field

from trainer.console import say
from trainer.errors import UsageError
from trainer.experiment import spec as ex
from trainer.experiment.vocabulary import FINISHED, SUCCEEDED
from trainer.flags import number_flag, parse_flags
from trainer.run import config
from trainer.search import workers

LEVEL = 0.95
STUDY_SUFFIX = "-confirm"


@dataclass
class Configuration:
    name: str  # the search trial it comes from
    params: dict  # as the search study holds them
    search_value: float | None  # at the search's seed
    values: dict[int, float] = field(default_factory=dict)  # seed -> objective
    interval: tuple[float, float] | None = None  # examples, averaged over the seeds

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else None


@dataclass
class Comparison:
    leader: str | None
    winner: str | None
    tied: list[str]  # the leader and every configuration it is not ahead of
    paired: dict[str, tuple[float, tuple[float, float] | None]]  # name -> (mean difference, its interval)


def t_interval(differences: list[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The t-interval of the mean difference (None below two seeds: no spread to judge by)."""
    from scipy import stats

    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = stats.t.ppf((1 + level) / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return mean - half, mean + half


def compare(configs: list[Configuration], maximize: bool) -> Comparison:
    """The leader (best mean over seeds), each other one's paired difference to it (positive: the
    leader is better), and the winner only where every difference's interval is above 0."""
    scored = [c for c in configs if c.values]
    if not scored or len(configs) < 2:  # one configuration is ahead of nothing
        return Comparison(None, None, [], {})
    sign = 1 if maximize else -1
    leader = max(scored, key=lambda c: sign * c.mean)
    paired, tied = {}, [leader.name]
    for other in configs:
        if other is leader:
            continue
        seeds = sorted(set(leader.values) & set(other.values))
        differences = [sign * (leader.values[s] - other.values[s]) for s in seeds]
        found = t_interval(differences)
        paired[other.name] = (statistics.fmean(differences) if differences else math.nan, found)
        if found is None or found[0] <= 0:
            tied.append(other.name)
    return Comparison(leader.name, None if len(tied) > 1 else leader.name, tied, paired)


def new_seeds(search_seed: int, count: int) -> list[int]:
    """count seeds from 1 up, leaving out the one the search trained with."""
    return [s for s in range(1, count + 2) if s != search_seed][:count]


def check_options(plan, top, seeds) -> tuple[int, int]:
    """--confirm K --seeds N, refused before the search runs where they cannot work."""
    from trainer.search.plan import trial_command

    top = number_flag(top, "confirm")
    seeds = number_flag(3 if seeds is None else seeds, "seeds", 2)  # one seed has no spread to compare
    if trial_command(plan) != "train":
        raise UsageError(f"--confirm: {plan.experiment.name}'s trials run `trainer {trial_command(plan)}`, "
                         "which trains nothing: seeds do not change it")
    if "seed" in ex.searched_flags(plan.experiment):
        raise UsageError(f"--confirm: {plan.experiment.name} searches seed itself; confirmation varies it")
    return top, seeds


def search_seed(plan, params: dict) -> int:
    from trainer.search.plan import local_argv

    return int(parse_flags(local_argv(plan, params, "seed-check")[1:]).get("seed", config.TrainConfig.seed))


def pick(plan, study, count: int) -> list[Configuration]:
    """The `count` best distinct configurations among the search's Succeeded trials."""
    from trainer.search.study import katib_state

    done = [t for t in study.get_trials(deepcopy=False)
            if katib_state(t) == SUCCEEDED and t.user_attrs.get("objective") is not None]
    done.sort(key=lambda t: -t.user_attrs["objective"] if plan.maximize else t.user_attrs["objective"])
    picked, seen = [], set()
    for t in done:
        key = tuple(sorted((k, str(v)) for k, v in t.params.items()))
        if key not in seen and len(picked) < count:
            seen.add(key)
            picked.append(Configuration(t.user_attrs["trial_name"], dict(t.params), t.user_attrs["objective"]))
    return picked


def open_confirm_study(plan):
    import optuna

    study = optuna.create_study(storage=workers.storage(plan.storage), study_name=plan.experiment.name + STUDY_SUFFIX,
                                direction="maximize" if plan.maximize else "minimize", load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.NopPruner())  # every seed runs to its end
    clear_stale(study)
    return study


def clear_stale(study) -> None:
    """Trials a killed confirmation left Running or Waiting end as Interrupted; their pairs run again."""
    from optuna.trial import TrialState

    from trainer.search.runner import kill_orphan

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        kill_orphan(trial)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.tell(study.ask(), state=TrialState.FAIL)


def finished_names(study) -> dict:
    from trainer.search.study import katib_state

    return {t.user_attrs.get("trial_name"): t for t in study.get_trials(deepcopy=False) if katib_state(t) in FINISHED}


def run_pairs(plan, study, pairs: list[tuple[Configuration, int, str]]) -> None:
    """Each (configuration, seed, name) as a trial process, `plan.parallel` at a time, as the search runs them."""
    from trainer.search import gpus as devices
    from trainer.search.runner import finish, pump, signals_raise, start_trial, stop_all

    events: queue.Queue = queue.Queue()
    running, pending, gpu = {}, list(pairs), None
    with signals_raise():
        try:
            while pending or running:
                while pending and len(running) < plan.parallel:
                    configuration, seed, name = pending.pop(0)
                    study.enqueue_trial(configuration.params, user_attrs={"trial_name": name, "seed": seed})
                    gpu = devices.next_gpu(plan.gpus, [r.gpu for r in running.values()], plan.trials_per_gpu, gpu)
                    seeded = dataclasses.replace(plan, overrides={**plan.overrides, "seed": str(seed)})
                    run = start_trial(seeded, study, None, events, gpu)
                    if run is not None:
                        running[run.trial.number] = run
                for number, code in pump(plan, running, events):
                    finish(plan, study, running.pop(number), code)
        except BaseException:
            if running:
                stop_all(plan, study, running, events)
            raise


def gather(plan, study, configs: list[Configuration], seeds: list[int]) -> None:
    """Each configuration's objective per seed, and its example interval over the seeds' mean scores."""
    from trainer.search import noise
    from trainer.search.plan import trial_dir
    from trainer.search.study import katib_state

    done = finished_names(study)
    metric = plan.objective.removeprefix("final_")
    for c in configs:
        per_example = []
        for seed in seeds:
            trial = done.get(f"{c.name}-seed{seed}")
            if trial is None or katib_state(trial) != SUCCEEDED or trial.user_attrs.get("objective") is None:
                continue
            c.values[seed] = trial.user_attrs["objective"]
            scores = noise.read_scores(trial_dir(plan, f"{c.name}-seed{seed}") / "predictions.csv", metric)
            if scores is not None and scores.values:
                per_example.append(scores)
        if per_example and all(s.ids == per_example[0].ids for s in per_example):
            c.interval = noise.interval([statistics.fmean(v) for v in zip(*(s.values for s in per_example))])


def confirm_study(plan, study, top: int, seed_count: int, keep_models: bool = False) -> Comparison:
    """`trainer search FILE --confirm K --seeds N`: run what is missing, show the comparison, write best.yaml
    only for a winner beyond seed noise."""
    configs = pick(plan, study, top)
    if not configs:
        say(f"\nconfirmation: no Succeeded trial with {plan.objective}: nothing to confirm")
        return Comparison(None, None, [], {})
    own = search_seed(plan, configs[0].params)
    seeds = new_seeds(own, seed_count)
    confirm = open_confirm_study(plan)
    done = finished_names(confirm)
    pairs = [(c, s, f"{c.name}-seed{s}") for c in configs for s in seeds if f"{c.name}-seed{s}" not in done]
    say(f"\nconfirmation: the {len(configs)} best configurations with seeds {', '.join(map(str, seeds))} (the search "
        f"trained with seed {own}): {len(pairs)} of {len(configs) * len(seeds)} runs to go, study "
        f"{plan.experiment.name + STUDY_SUFFIX} in {workers.shown(plan.storage)}")
    run_pairs(plan, confirm, pairs)
    gather(plan, confirm, configs, seeds)
    outcome = compare(configs, plan.maximize)
    show(plan.objective, configs, seeds, own, outcome)
    conclude(plan, configs, seeds, outcome)
    if not keep_models:
        remove_models(plan, [f"{c.name}-seed{s}" for c in configs for s in seeds])
    return outcome


def show(objective: str, configs: list[Configuration], seeds: list[int], own: int, outcome: Comparison,
         out=say) -> None:
    """The table: each configuration per seed, mean, sd, example interval, the paired difference to the leader."""
    from trainer.search.results import describe, format_interval

    header = ["config", "parameters", f"seed {own} (search)", *(f"seed {s}" for s in seeds), "mean", "sd",
              "examples 95%", "leader ahead by (paired by seed)"]
    lines = [header]
    for c in configs:
        if c.name == outcome.leader:
            versus = "leader"
        elif c.name in outcome.paired:
            difference, found = outcome.paired[c.name]
            versus = f"{difference:+.4f} {format_interval(found)}" if found else "-"
            versus += " tie" if c.name in outcome.tied else " behind"
        else:
            versus = "-"
        lines.append([c.name, describe(c.params), "-" if c.search_value is None else f"{c.search_value:.4f}",
                      *(f"{c.values[s]:.4f}" if s in c.values else "failed" for s in seeds),
                      "-" if c.mean is None else f"{c.mean:.4f}", "-" if c.sd is None else f"{c.sd:.4f}",
                      format_interval(c.interval), versus])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out("\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines))
    out(f"{objective} per seed; mean and sd over seeds {', '.join(map(str, seeds))} (the search's seed {own} "
        f"picked these configurations, so it is left out); examples 95%: bootstrap over the evaluation examples "
        f"of the seeds' mean scores; paired: 95% t-interval of the per-seed differences")


def conclude(plan, configs: list[Configuration], seeds: list[int], outcome: Comparison) -> None:
    from trainer.search.results import docker_lines, preset_flags, ran_argv, write_preset

    e = plan.experiment
    by_name = {c.name: c for c in configs}
    best_yaml = plan.output_dir / "best.yaml"
    if len(configs) < 2:
        say(f"\none configuration only: its spread over seeds is above; nothing to compare it with "
            f"({best_yaml} is left as the search wrote it)")
        return
    if outcome.winner is None:
        group = outcome.tied or [c.name for c in configs]
        say(f"\ntie across seeds: {', '.join(group)} cannot be told apart beyond seed noise: no best trial "
            "(more seeds narrow the intervals). Their configurations:")
        for name in group:
            for line in docker_lines(plan, ran_argv(plan, by_name[name].params, name)):
                say(f"  {line}")
        if best_yaml.exists():
            best_yaml.unlink()  # the search's single-seed winner is not confirmed
            say(f"removed {best_yaml}: its single-seed winner is not ahead beyond seed noise")
        return
    winner = by_name[outcome.winner]
    argv = ran_argv(plan, winner.params, winner.name)
    say(f"\nconfirmed: {winner.name}'s configuration is ahead of the others beyond seed noise ({plan.objective} "
        f"mean {winner.mean:.4f} over seeds {', '.join(map(str, seeds))}): " + "\n  ".join(docker_lines(plan, argv)))
    preset = write_preset(best_yaml, preset_flags(argv, plan.overrides.get("preset")), [
        f"configuration of trial {winner.name} of Experiment {e.name}, confirmed across seeds "
        f"{', '.join(map(str, seeds))}: {plan.objective} mean {winner.mean:.4f}, sd {winner.sd:.4f}",
        "written by trainer search --confirm; use: trainer --preset THIS_FILE --train_file=... --eval_file=...",
    ])
    say(f"preset: {preset}")


def remove_models(plan, names: list[str]) -> None:
    import shutil

    from trainer.search.plan import trial_dir

    for name in names:
        for model in [trial_dir(plan, name) / "best_model", *trial_dir(plan, name).glob("checkpoint-*")]:
            if model.is_dir():
                shutil.rmtree(model, ignore_errors=True)

