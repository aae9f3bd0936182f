"""Narrowing: the next Experiment of a finished search, focused on where its top trials are.

The tuning guide's "coarse, then focused": 10-15 trials find the good region, 15-20 more search inside
it. From an Experiment and its trials (a local study or a Katib Experiment's), `narrowed` writes:
- numeric ranges shrunk to the top trials' values plus a margin of MARGIN of the original width on
  each side (measured on the log scale for logUniform), never beyond the original bounds; an int
  (or a double with a step) keeps its step's grid, so Katib and Optuna draw the same values;
- categorical and discrete lists cut to the values the top trials used, in the original order;
- a parameter left with one value becomes a fixed argument of the trial command (its parameter
  and trialParameter go, `${trialParameters.x}` is replaced by the value);
- maxTrialCount BUDGET (at most the grid size for a grid), parallelTrialCount and
  maxFailedTrialCount lowered to it where they were above, a name with `-stageN` (Katib's 40-character
  rule), a header comment saying where it came from.

The top trials: the TOP best Succeeded trials by objective (the first finished wins an equal
objective, as Katib's optimal trial does), plus every Succeeded trial the data cannot tell apart from
the best: an equal objective, or, where per-example scores exist (a local search), a paired interval
of the difference that holds 0 (noise.tied_with_best).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

from trainer.errors import UsageError
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.experiment import vocabulary as vocab
from trainer.experiment.vocabulary import SUCCEEDED
from trainer.flags import format_value

TOP = 3
BUDGET = 15
MARGIN = 0.1  # of the original range (its log range for logUniform), added on each side
NAME_LIMIT = 40  # Katib's webhook: metadata.name at most 40 characters
STAGE = re.compile(r"^(.*)-stage(\d+)$")


def top_rows(rows: list, maximize: bool, tied: set[str] = frozenset(), count: int = TOP) -> list:
    """The best `count` Succeeded rows by objective, and the rows tied with the best (names in `tied`,
    or an equal objective); best first."""
    done = [r for r in rows if r.state == SUCCEEDED and r.objective is not None]
    ordered = sorted(done, key=lambda r: -r.objective if maximize else r.objective)  # stable: earlier first
    if not ordered:
        return []
    best = ordered[0].objective
    return ordered[:count] + [r for r in ordered[count:] if r.name in tied or r.objective == best]


def next_name(name: str) -> str:
    """kobart-tpe -> kobart-tpe-stage2 -> kobart-tpe-stage3, cut to Katib's 40 characters."""
    match = STAGE.match(name)
    base, number = (match.group(1), int(match.group(2)) + 1) if match else (name, 2)
    suffix = f"-stage{number}"
    return base[:NAME_LIMIT - len(suffix)].rstrip("-") + suffix


def number_text(value: float) -> str:
    """A bound as Katib reads it: a short exact-enough string ("0.000213", "1e-05")."""
    return f"{value:.6g}"


def on_grid(value: float, base: float, step: float, up: bool) -> float:
    """`value` moved to the nearest point base + k*step below it (or above it, `up`)."""
    k = (value - base) / step
    k = math.ceil(k - 1e-9) if up else math.floor(k + 1e-9)
    return base + k * step


def narrow_range(p: ex.Parameter, used: list[float]) -> tuple[str, str]:
    """(min, max) around the used values: MARGIN on each side, inside the original bounds, on its step."""
    low, high = float(str(p.min)), float(str(p.max))
    log = p.distribution == "logUniform" and low > 0 and min(used) > 0
    scale, unscale = (math.log, math.exp) if log else (float, float)
    margin = MARGIN * (scale(high) - scale(low))
    a = max(low, unscale(scale(min(used)) - margin))
    b = min(high, unscale(scale(max(used)) + margin))
    if p.parameter_type == "int" or p.step not in (None, ""):
        step = float(str(p.step)) if p.step not in (None, "") else 1.0
        a = max(low, on_grid(a, low, step, up=False))
        b = min(on_grid(high, low, step, up=False), on_grid(b, low, step, up=True))
        if p.parameter_type == "int":
            return str(int(round(a))), str(int(round(b)))
        return number_text(round(a, 12)), number_text(round(b, 12))
    shown_a, shown_b = number_text(a), number_text(b)
    # Rounding to 6 digits must not step outside the original bounds.
    return (str(p.min) if float(shown_a) <= low else shown_a, str(p.max) if float(shown_b) >= high else shown_b)


def same_value(listed, used: str, numeric: bool) -> bool:
    if format_value(listed) == used:
        return True
    try:
        return numeric and float(str(listed)) == float(used)
    except ValueError:
        return False


def narrow_space(e: ex.Experiment, top: list) -> tuple[list[dict], dict[str, str], list[str]]:
    """(narrowed parameters as written, {parameter: its one value left}, a line per parameter)."""
    kept, fixed, lines = [], {}, []
    raw = [p for p in e.raw["spec"]["parameters"] if isinstance(p, dict)]
    for p, written in zip(e.parameters, raw):
        used = [str(r.params[p.name]) for r in top if p.name in r.params]
        new = copy.deepcopy(written)
        if not used:
            kept.append(new)
            lines.append(f"{p.name}: unchanged (no top trial has a value)")
            continue
        if p.parameter_type in ("categorical", "discrete"):
            values = [v for v in p.list if any(same_value(v, u, p.parameter_type == "discrete") for u in used)]
            before = f"[{', '.join(format_value(v) for v in p.list)}]"
            if len(values) == 1:
                fixed[p.name] = format_value(values[0])
                lines.append(f"{p.name}: {before} -> fixed {fixed[p.name]}")
                continue
            new["feasibleSpace"]["list"] = [format_value(v) for v in values]
            lines.append(f"{p.name}: {before} -> [{', '.join(format_value(v) for v in values)}]")
        else:
            low, high = narrow_range(p, [float(u) for u in used])
            before = f"[{p.min}, {p.max}]"
            if float(low) == float(high):
                fixed[p.name] = low
                lines.append(f"{p.name}: {before} -> fixed {low}")
                continue
            new["feasibleSpace"]["min"], new["feasibleSpace"]["max"] = low, high
            scale = ", log scale" if p.distribution == "logUniform" else ""
            lines.append(f"{p.name}: {before} -> [{low}, {high}] (top trials {min(map(float, used)):g}..."
                         f"{max(map(float, used)):g}, margin {MARGIN:g} of the range{scale})")
        kept.append(new)
    return kept, fixed, lines


def substitute(node, values: dict[str, str]):
    """Every ${trialParameters.name} of `values` replaced in the strings of a trialSpec."""
    if isinstance(node, dict):
        return {k: substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, values) for v in node]
    if isinstance(node, str):
        return ex.PARAM_REF.sub(lambda m: values.get(m.group(1), m.group(0)), node)
    return node


def fix_parameters(doc: dict, fixed: dict[str, str]) -> None:
    """Each parameter of `fixed` (name -> value) becomes a plain value in the trial template: its
    parameter and trialParameters go, and the placeholders that referenced it carry the value."""
    spec = doc["spec"]
    spec["parameters"] = [p for p in spec.get("parameters") or [] if p.get("name") not in fixed]
    template = spec["trialTemplate"]
    values = {tp["name"]: fixed[tp["reference"]] for tp in template.get("trialParameters") or []
              if tp.get("reference") in fixed}
    template["trialParameters"] = [tp for tp in template.get("trialParameters") or [] if tp.get("name") not in values]
    template["trialSpec"] = substitute(template["trialSpec"], values)


def set_budget(doc: dict, budget: int) -> None:
    """maxTrialCount, and the counts Katib's webhook wants at most that."""
    spec = doc["spec"]
    spec["maxTrialCount"] = budget
    # Katib defaults an unset parallelTrialCount to 3, which must not exceed maxTrialCount either.
    parallel = spec.get("parallelTrialCount")
    parallel = parallel if ex.is_int(parallel) else vocab.DEFAULT_PARALLEL_TRIAL_COUNT
    if parallel > budget or "parallelTrialCount" in spec:
        spec["parallelTrialCount"] = min(parallel, budget)
    if ex.is_int(spec.get("maxFailedTrialCount")) and spec["maxFailedTrialCount"] > budget:
        spec["maxFailedTrialCount"] = budget


def clean_metadata(doc: dict, name: str) -> None:
    """Only what `kubectl apply` needs: the name (and namespace); a served object's uid, status, ... go."""
    meta = doc.get("metadata") or {}
    doc["metadata"] = {"name": name, **({"namespace": meta["namespace"]} if meta.get("namespace") else {})}
    doc.pop("status", None)


def narrowed(document: dict, rows: list, maximize: bool, objective: str, source: str,
             tied: set[str] = frozenset(), budget: int = BUDGET) -> tuple[dict, list[str]]:
    """(the next Experiment, its header comment lines) from an Experiment document and its trial rows."""
    e = ex.parse_experiment(document, source)
    top = top_rows(rows, maximize, tied)
    if not top:
        raise UsageError(f"{source}: no Succeeded trial with {objective}: nothing to narrow around")
    parameters, fixed, lines = narrow_space(e, top)
    if not parameters:
        raise UsageError(f"{source}: every parameter has one value among the top trials "
                         f"({', '.join(f'{k}={v}' for k, v in fixed.items())}): nothing left to search; "
                         "its best.yaml is the result")
    doc = copy.deepcopy(document)
    doc["spec"]["parameters"] = parameters
    fix_parameters(doc, fixed)
    name = next_name(e.name)
    clean_metadata(doc, name)
    limit = budget
    if e.algorithm and e.algorithm.name == "grid":
        axes = [katib_grid.grid_axis(p) for p in ex.parse_experiment(doc, source).parameters]
        limit = min(budget, math.prod(len(a) for a in axes))
    set_budget(doc, limit)
    picked = ", ".join(f"{r.name} ({objective} {r.objective:.4f})" for r in top)
    header = [f"Narrowed from Experiment {e.name} ({source}) by trainer; its next stage: {name}.",
              f"Around its top trials: {picked}",
              f"(the {TOP} best Succeeded trials by {objective}, and those the data cannot tell apart from the best).",
              *lines,
              f"maxTrialCount {limit} (was {e.max_trial_count})."]
    return doc, header


def write(path, doc: dict, header: list[str]) -> Path:
    """The Experiment with its header comment, checked as `trainer check` checks files."""
    import yaml

    from trainer.experiment import check
    from trainer.run.files import atomic_write

    path = Path(path)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    problems = check.check_experiment(ex.parse_documents(text, str(path))[0]).problems
    if problems:  # a bug here, not the user's: say what and write nothing
        raise UsageError(f"{path}: the narrowed Experiment would not pass trainer check: "
                         f"{problems[0].field}: {problems[0].message}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return path


def refuse_output(path, source: str) -> None:
    """Before a search runs: a YAML file name that is not the Experiment being read."""
    if not str(path).endswith((".yaml", ".yml")):
        raise UsageError(f"--narrow={path}: give a .yaml file for the next Experiment")
    if source != "<stdin>" and Path(path).resolve() == Path(source).resolve():
        raise UsageError(f"--narrow={path} is the Experiment being searched; give another file")


def narrow_study(plan, study, path) -> Path:
    """`trainer search FILE --narrow NEXT.yaml`: the next Experiment from this local study."""
    from trainer.console import say
    from trainer.search import results

    rows = results.trial_rows(plan, study.get_trials(deepcopy=False))
    _, tied = results.rank(plan, rows, results.add_noise(plan, rows))
    doc, header = narrowed(plan.experiment.raw, rows, plan.maximize, plan.objective, plan.experiment.source,
                           tied={r.name for r in tied})
    written = write(path, doc, header)
    say(f"\nnarrowed: {written} (Experiment {doc['metadata']['name']}, {doc['spec']['maxTrialCount']} trials)")
    for line in header[1:]:
        say(f"  {line}")
    return written
