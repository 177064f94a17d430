"""The benchmark suite's command, tables and figures.

Run one problem, or several, of :mod:`benchmarks.problems` through the protocol of
:mod:`benchmarks.harness`, and write per problem ``<problem>.md``, ``<problem>.png`` and
``<problem>.json`` (the rows), then ``summary.md`` from every ``<problem>.json`` in the folder::

    python -m benchmarks.report --problems digits --out results   # one problem, committed profile
    python -m benchmarks.report --summary --out results           # summary.md only
    python -m benchmarks.report --profile quick                   # every problem, tiny (tests)
    python -m benchmarks.report --profile full --problems toy      # every arm, full length

The profiles (``--profile``, default ``committed``) are :mod:`benchmarks.profiles`. The default
folder is ``out/suite`` (ignored by git); ``--out results`` writes the committed copies, which
``make figures`` regenerates. ``--arms stable,dwa`` restricts the methods (their labels in
``harness.ARMS``); ``--merge`` keeps an existing table's rows that are still current (same
profile, same behavioural fingerprint, same tuned reference).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

import adaptive_optax as ao
from benchmarks import fingerprint, harness, pages, problems, profiles, stats

DEFAULT_OUT = pathlib.Path("out", "suite")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def library_commit() -> str:
    """The git commit of the working tree, marked where ``adaptive_optax/`` has changes; read
    once a process (``main`` reads it before training: the code that trains)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "adaptive_optax"]
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes to adaptive_optax/" if dirty else "")


def rows(result: harness.ProblemResult, record: dict[str, str]) -> list[dict]:
    """One dict per arm: every number of the per-problem table, its per-seed scores and its
    record (``record``: the commit, command, machine and profile it was measured with).

    Regret is paired against the best fixed weights on the same evaluation seeds
    (:func:`stats.paired_regret`); the call reads it against the problem's margin.
    """
    problem = result.problem
    relative = problem.regret == "relative"
    best = result.arm("best fixed")
    reference = best.runs.score[:, -1].astype(np.float64)
    margin = stats.margin(reference, relative=relative)
    out = []
    for arm in result.arms:
        final = arm.runs.score[:, -1].astype(np.float64)
        finite = final[np.isfinite(final)]
        regret = stats.paired_regret(final, reference, relative=relative)
        row = dict(
            label=arm.label,
            kind=arm.kind,
            method=arm.method,
            guarded=arm.guarded,
            aliases=list(arm.aliases),
            rate=arm.rate,
            rates_tried=list(arm.rates_tried),
            rate_status=arm.rate_status,
            weights=arm.weights,
            median=float(np.median(final)),
            low=float(finite.min()) if finite.size else math.inf,
            high=float(finite.max()) if finite.size else math.inf,
            scores=[float(x) for x in final],
            heads={h: float(np.median(v[:, -1])) for h, v in arm.runs.metrics.items()},
            finished=int(arm.runs.finished.sum()),
            runs=int(arm.runs.finished.size),
            regret=regret.value,
            regret_low=regret.low,
            regret_high=regret.high,
            call=stats.call(regret, margin),
            cost=arm.step_s / best.step_s if best.step_s > 0 else math.nan,
            runs_needed=arm.runs_needed,
            stable_rate=arm.stable_rate,
            spikes=float(np.median(arm.runs.spikes)),
            calibration=arm.calibration_score,
            calibration_scores=list(arm.calibration_scores),
            fingerprint=arm.fingerprint,
            **record,
        )
        if problem.name == "toy":
            row["reached"] = float(np.mean(final <= problems.TOY_REACHED))
        out.append(row)
    return out


def _num(x: float, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, fmt)


def _regret(x: float, kind: str) -> str:
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "failed" if x > 0 else "-inf"
    return f"{100 * x:+.1f} %" if kind == "relative" else f"{x:+.3g}"


def interval(row: dict, kind: str) -> str:
    """``+3.0 % [-1.2, +7.5]``: the paired regret and its 95 % interval (percent points)."""
    value = _regret(row["regret"], kind)
    if value in ("-", "failed"):
        return value
    low, high = row["regret_low"], row["regret_high"]
    scale, fmt = (100.0, "+.1f") if kind == "relative" else (1.0, "+.2g")
    ends = [
        ("inf" if v > 0 else "-inf") if math.isinf(v) else format(scale * v, fmt)
        for v in (low, high)
    ]
    return f"{value} [{ends[0]}, {ends[1]}]"


CALL_MARK = {"better": "**better**", "as good": "as good", "worse": "worse", "unclear": "?"}


def _weights(w: dict | None) -> str:
    return "-" if w is None else ", ".join(f"{k} {v:.3g}" for k, v in w.items())


def machine() -> str:
    """The machine a result was measured on: the host, and the accelerator when there is one."""
    host = f"{platform.machine()} CPU, {platform.system()}, Python {platform.python_version()}"
    device = jax.devices()[0]
    if device.platform == "cpu":
        return host
    return f"{jax.device_count()} x {device.device_kind} ({device.platform}), {host}"


def margin_text(data: dict) -> str:
    """How the problem's margin of "as good" was derived, with its value."""
    value = data["margin"]
    shown = f"{100 * value:.1f} %" if data["kind"] == "relative" else f"{value:.3g}"
    over = " over its median" if data["kind"] == "relative" else ""
    return (
        f"margin {shown}: the standard error of the tuned fixed weights' median, sqrt(pi/2) "
        f"sigma / sqrt(n), sigma the normal-consistent median absolute deviation of its "
        f"{len(data['evaluation_seeds'])} test scores{over}"
    )


def problem_markdown(problem: problems.Problem, data: dict) -> str:
    """The per-problem results page."""
    kind = problem.regret
    lines = [
        f"# {problem.title}",
        "",
        f"Command: `{data['command']}` (profile `{data['profile']}`, library commit "
        f"`{data['commit']}`); machine: {data['machine']}; {data['seconds']:.0f} s in all, "
        f"{data['compile_s']:.0f} s of it compiling.",
        "",
        f"Setting: {problem.setting}. Base weights: {problem.base}. Steps: {data['steps']}. "
        f"Learning-rate grid: {list(problem.rates)} (extended past an edge where an arm's "
        f"choice sat there); fixed-weight grid: {len(problem.ratios)} ratios x scales "
        f"{list(problem.scales)} (times the base total) x the rates. Calibration seeds "
        f"{data['calibration_seeds']}, evaluation seeds {data['evaluation_seeds']}.",
        "",
        f"Score: {problem.metric_name} (lower is better) at the end of training, median "
        "[min, max] over the evaluation seeds (a run with a non-finite loss, parameter or "
        "metric is a failed run, infinitely bad). Every setting (the fixed grid's cell, each "
        "arm's learning rate) is chosen on the calibration seeds"
        + (" and the validation split" if problem.validation is not None else "")
        + ": the lowest median among settings whose every calibration run finished, a more "
        "conservative one (smaller rate, then smaller scale) within one standard error of it. "
        "Regret: against the best fixed weights on the same seeds, the median per-seed "
        f"difference ({'over the tuned median' if kind == 'relative' else 'absolute'}) with a "
        "95 % bootstrap interval; call: **better** (the interval below 0), as good (its upper "
        f"end below the margin), worse (its lower end above it), ? (neither); "
        f"{margin_text(data)}. lr: the chosen rate (`ext`: found after extending the grid, "
        "`edge`: still at an edge). Cost: seconds per step over the fixed weights', median of "
        "compiled calls at one vmap width in this process, compile apart. Runs: training runs "
        "per seed spent choosing the setting. Stable lr: the largest rate tried at which at "
        "least 90 % of the calibration runs finished. Distilled / averaged: the arm's "
        "time-averaged calibration weights replayed as fixed weights at the base total (its "
        "ratio) / as they were (ratio and scale).",
        "",
        "| arm | lr | score | regret [95 % interval] | call | finished | heads | cost | runs "
        "| stable lr | weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        heads = ", ".join(f"{h} {_num(v)}" for h, v in r["heads"].items())
        status = {"interior": ""}.get(r["rate_status"], f" ({r['rate_status']})")
        status = status.replace("extended", "ext")
        label = " = ".join([r["label"], *r.get("aliases", [])])
        lines.append(
            f"| {label} | {r['rate']:g}{status} | {_num(r['median'])} [{_num(r['low'])}, "
            f"{_num(r['high'])}] | {interval(r, kind)} | {CALL_MARK[r['call']]} | "
            f"{r['finished']}/{r['runs']} | {heads} | {_num(r['cost'], '.2f')} | "
            f"{r['runs_needed']} | {_num(r['stable_rate'], 'g')} | {_weights(r['weights'])} |"
        )
    if problem.name == "toy":
        lines += [
            "",
            f"Reached the Pareto set (final distance at most {problems.TOY_REACHED:g}), share "
            "of the evaluation seeds: "
            + ", ".join(f"{r['label']} {r['reached']:.0%}" for r in data["rows"])
            + ".",
        ]
    lines += ["", f"![{problem.title}]({problem.name}.png)", ""]
    return "\n".join(lines)


def figure(problem: problems.Problem, data: dict, path: pathlib.Path) -> pathlib.Path:
    """The fixed-weight front of the grid (calibration medians) and each arm as a point
    (evaluation medians): two protocols on one figure, a picture rather than a measurement.

    With two or more heads the axes are the first two heads' metrics; with one, the learning
    rate and the score.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(data["rows"][0]["heads"])
    two = len(heads) >= 2
    fig, ax = plt.subplots(figsize=(7, 5))

    def xy(heads_or_rate, score):
        if two:
            return heads_or_rate[heads[0]], heads_or_rate[heads[1]]
        return heads_or_rate, score

    grid = [g for g in data["grid"] if np.isfinite(g["score"])] or [data["grid"][0]]
    gx, gy = zip(*(xy(g["heads"] if two else g["rate"], g["score"]) for g in grid), strict=True)
    ax.scatter(gx, gy, s=12, color="0.7", label="fixed weights (grid: calibration medians)")
    if two:
        points = sorted(zip(gx, gy, strict=True))
        front, low = [], math.inf
        for x, y in points:
            if y < low:
                front.append((x, y))
                low = y
        ax.plot(*zip(*front, strict=True), color="0.4", lw=1, label="fixed-weight front")
    markers = {"fixed": "s", "method": "o", "distilled": "^", "averaged": "v"}
    for r in data["rows"]:
        if not np.isfinite(r["median"]) or r["kind"] in ("distilled", "averaged"):
            continue
        x, y = xy(r["heads"] if two else r["rate"], r["median"])
        ax.scatter([x], [y], marker=markers[r["kind"]], s=30)
        ax.annotate(r["label"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    if two:
        ax.set_xlabel(f"{heads[0]} (median)")
        ax.set_ylabel(f"{heads[1]} (median)")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"{problem.metric_name} (median)")
    if problem.regret == "relative":
        ax.set_yscale("log")
        if two:
            ax.set_xscale("log")
    ax.set_title(f"{problem.title}: methods (evaluation seeds) against fixed weights", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gradients_needed(method: str) -> str:
    """What an arm's method reads beyond the losses, from its weighting's ``needs``."""
    arm = next((a for a in harness.ARMS if a.label == method), None)
    if arm is None:
        return "-"
    base = {"a": 1.0, "b": 1.0}
    kwargs = {k: "a" if v is harness.MAIN else v for k, v in arm.kwargs.items()}
    made = arm.factory(base, **kwargs)
    if isinstance(made, harness.OneTerm):
        return "one term's gradient per step"
    needs = set(made.needs)
    if not needs:
        return "losses"
    if arm.factory in (ao.stable_weights, ao.unguarded_weights, ao.legacy_weights):
        return "losses + one gradient norm"  # the seed's rules read a global norm, optional
    return "per-term gradients + Gramian" if "gramian" in needs else "per-term gradients"


def _ordered(labels: Sequence[str]) -> list[str]:
    """Labels in the order of :func:`harness.variants` (each method bare, then guarded)."""
    order = ["base"] + [v.label for v in harness.variants()]
    rank = {label: i for i, label in enumerate(order)}

    def key(label: str) -> tuple[int, int]:
        method, _, replay = label.partition(" (")
        return rank.get(method, len(order)), {"": 0, "distilled)": 1, "averaged)": 2}.get(replay, 3)

    return sorted(labels, key=key)


def _table(results: dict[str, dict], labels: Sequence[str], *, costs: bool) -> list[str]:
    """Arms x problems, each cell the paired regret with its interval and call."""
    names = list(results)
    extra = " better / as good / ran | cost (median over problems) | gradients |" if costs else ""
    lines = ["| arm | " + " | ".join(names) + " |" + extra, "|---|" + "---|" * len(names)]
    lines[-1] += "---|---|---|" if costs else ""
    by_label = _rows_by_label(results)
    for label in labels:
        cells, cost, method, tally, ran, shown = [], [], "", [0, 0], 0, label
        for name in names:
            data, rows = results[name], by_label[name]
            row = rows.get(label)
            if row is None:
                live = rows.get(label.partition(" (")[0])
                failed = live is not None and not math.isfinite(live["regret"])
                cells.append("live failed" if failed else "not run")  # nothing to replay
                continue
            shown = " = ".join([label, *row.get("aliases", [])])
            method = row["method"] or method
            mark = {"better": " **better**", "as good": " as good"}.get(row["call"], "")
            cells.append(interval(row, data["kind"]) + mark)
            ran += 1
            tally[0] += row["call"] == "better"
            tally[1] += row["call"] == "as good"
            if row["kind"] == "method" and np.isfinite(row["cost"]):
                cost.append(row["cost"])
        line = f"| {shown} | " + " | ".join(cells) + " |"
        if costs:
            gradients = "-" if label == "base" else gradients_needed(method)
            line += f" {tally[0]} / {tally[1]} / {ran} |"
            line += f" {np.median(cost):.2f} |" if cost else " - |"
            line += f" {gradients} |"
        lines.append(line)
    return lines


def _rows_by_label(results: dict[str, dict]) -> dict[str, dict[str, dict]]:
    return {name: {r["label"]: r for r in data["rows"]} for name, data in results.items()}


def guards_markdown(results: dict[str, dict]) -> list[str]:
    """Each method with recommended guards: its bare and guarded regret, problem by problem."""
    names = list(results)
    lines = [
        "## What the recommended guards buy",
        "",
        "Each method whose docstring recommends guards and that ran both bare and guarded: its "
        "regret bare -> guarded on each problem (paired, against the tuned fixed weights).",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    by_label = _rows_by_label(results)
    for variant in harness.variants():
        if not variant.guarded:
            continue
        cells = []
        for name in names:
            data, rows = results[name], by_label[name]
            bare, guarded = rows.get(variant.method), rows.get(variant.label)
            if bare is None or guarded is None:
                cells.append("-")
                continue
            kind = data["kind"]
            cells.append(f"{interval(bare, kind)} -> {interval(guarded, kind)}")
        if any(c != "-" for c in cells):
            lines.append(f"| {variant.method} | " + " | ".join(cells) + " |")
    return lines


def margins_markdown(results: dict[str, dict]) -> list[str]:
    """Per problem: the margin of "as good", the seeds and the tuned weights' one-run spread."""
    lines = [
        "| problem | margin of as good | evaluation seeds | calibration seeds | steps | profile "
        "| library commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, data in results.items():
        value = data["margin"]
        shown = f"{100 * value:.1f} %" if data["kind"] == "relative" else f"{value:.3g}"
        lines.append(
            f"| {name} | {shown} | {len(data['evaluation_seeds'])} | "
            f"{len(data['calibration_seeds'])} | {data['steps']} | {data['profile']} | "
            f"`{data['commit']}` |"
        )
    return lines


BUDGETS = (1, 3, 10, 30)
SUBSETS = 1000  # random subsets of the grid per budget


def budget_row(data: dict, rng: np.random.Generator) -> dict[int, tuple[float, float]]:
    """The fixed grid with a budget: per budget B, over random subsets of B grid cells (runs
    per seed spent choosing), the selection rule's choice's regret on the test seeds.

    Returns:
      ``{B: (mean regret of the finished choices, share of choices that failed)}``; budgets
      above the grid's size are left out.
    """
    relative = data["kind"] == "relative"
    rows = {r["label"]: r for r in data["rows"]}
    reference = np.asarray(rows["best fixed"]["scores"])
    cells = [g for g in data["grid"] if len(g.get("test_scores", ())) == len(reference)]
    regret = [
        stats.median_difference(np.asarray(g["test_scores"]), reference, relative=relative)
        for g in cells
    ]
    out = {}
    for b in BUDGETS:
        if b > len(cells):
            continue
        chosen = []
        for _ in range(SUBSETS):
            pick = rng.choice(len(cells), b, replace=False)
            candidates = [
                stats.Candidate(
                    int(i), np.asarray(cells[i]["scores"]), (cells[i]["rate"], cells[i]["scale"])
                )
                for i in pick
            ]
            chosen.append(regret[stats.select(candidates)[0].key])
        chosen = np.asarray(chosen)
        finite = chosen[np.isfinite(chosen)]
        out[b] = (
            float(finite.mean()) if finite.size else math.inf,
            float(1 - finite.size / chosen.size),
        )
    return out


def budget_markdown(results: dict[str, dict]) -> list[str]:
    """Regret against the runs spent choosing: the fixed grid on random subsets, each method."""
    lines = [
        "## Runs spent choosing",
        "",
        "What N training runs (per seed) of choosing buy. Fixed grid, N runs: N cells of the "
        "grid (weights and rate) drawn at random, the selection rule's choice among them on "
        "the calibration seeds, its regret on the test seeds against the fully tuned weights, "
        f"averaged over {SUBSETS} draws (in brackets: the share of draws whose choice failed "
        "on the test seeds, left out of the mean). Base and methods: each arm's regret and, "
        "in brackets, the runs it spent choosing its learning rate; best method: the lowest "
        "regret among the methods.",
        "",
        "| problem | grid cells | fixed, 1 run | fixed, 3 runs | fixed, 10 runs | fixed, 30 "
        "runs | base | best method |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for name, data in results.items():
        kind = data["kind"]
        budgets = budget_row(data, rng)
        cells = [
            f"{_regret(budgets[b][0], kind)} ({100 * budgets[b][1]:.0f} %)" if b in budgets else "-"
            for b in BUDGETS
        ]
        rows = [r for r in data["rows"] if r["kind"] == "method"]
        base = next(r for r in data["rows"] if r["label"] == "base")
        best = min(rows, key=lambda r: r["regret"]) if rows else None
        method = (
            f"{best['label']} {_regret(best['regret'], kind)} ({best['runs_needed']})"
            if best
            else "-"
        )
        lines.append(
            f"| {name} | {len(data['grid'])} | " + " | ".join(cells) + f" | "
            f"{_regret(base['regret'], kind)} ({base['runs_needed']}) | {method} |"
        )
    return lines


def summary_markdown(results: dict[str, dict]) -> str:
    """Methods x problems: each cell the paired regret against the tuned fixed weights."""
    names = list(results)
    labels: list[str] = []
    for data in results.values():
        for r in data["rows"]:
            if r["label"] not in labels and r["label"] != "best fixed":
                labels.append(r["label"])
    live = _ordered([label for label in labels if "(" not in label])
    replayed = _ordered([label for label in labels if "(" in label])
    lines = [
        "# Summary: regret against the tuned fixed weights, with 95 % intervals",
        "",
        "Each cell: the arm's regret against the best fixed weights of the grid on the same "
        "evaluation seeds: the median per-seed difference (relative problems: over the tuned "
        "median, `+10 %` is 10 % worse; the toy: absolute, in distance to the Pareto set) and "
        "its 95 % bootstrap interval over seeds. Every setting (the grid's weights and rate, "
        "each arm's rate) is chosen on calibration seeds (and, on the data problems, a "
        "validation split; the score is on a separate test split). **better**: the whole "
        "interval below 0; as good: its upper end below the problem's margin (the standard "
        "error of the tuned weights' own median, table below); no mark: neither. The tally "
        "counts only these calls. Cost: seconds per step over fixed weights, median of "
        "compiled calls at one vmap width in one process, compile apart. `not run`: the arm "
        "is in the `full` profile only. Per-problem tables, settings and figures: "
        + ", ".join(f"`results/{n}.md`" for n in names)
        + " (in the documentation: the page *The benchmark suite, problem by problem*).",
        "",
        *margins_markdown(results),
        "",
        *_table(results, live, costs=True),
        "",
        *budget_markdown(results),
        "",
        "## Replayed as fixed weights",
        "",
        "Each adaptive run's time-averaged weights replayed as fixed weights: *distilled* at "
        "the base weights' total (its ratio), *averaged* at its own total (ratio and scale). "
        "`live failed`: no run of the arm finished, so there is nothing to replay.",
        "",
        *_table(results, replayed, costs=False),
        "",
        *guards_markdown(results),
        "",
        "Commands: "
        + "; ".join(f"{n}: `{d['command']}` ({d['machine']})" for n, d in results.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def to_json(x):
    if isinstance(x, dict):
        return {k: to_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_json(v) for v in x]
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def from_json(x):
    if isinstance(x, dict):
        return {k: from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_json(v) for v in x]
    if x in ("inf", "-inf", "nan"):
        return float(x)
    return x


def stale(rows_: list[dict]) -> list[str]:
    """The labels of rows whose arm's fingerprint differs from the current code's."""
    return [r["label"] for r in rows_ if r.get("fingerprint") != fingerprint.of_label(r["label"])]


def merge(data: dict, previous: dict) -> dict:
    """``data`` with the rows of ``previous`` it did not train, where they may be kept.

    A previous row is kept only when it was measured under the same profile and its arm's
    fingerprint is the current code's; the others are refused (listed in ``refused``).

    Args:
      data: this run's data.
      previous: the data already in the folder.

    Returns:
      The merged data.
    """
    labels = {r["label"] for r in data["rows"]}
    candidates = [r for r in previous["rows"] if r["label"] not in labels]
    if previous.get("profile") != data["profile"]:
        refused = [r["label"] for r in candidates]
    else:
        refused = stale(candidates)
    kept = [r for r in candidates if r["label"] not in refused]
    if refused:
        print(f"[{data['problem']}] refused stale rows (rerun them): {', '.join(refused)}")
    # the kept rows were paired against the previous best fixed weights: only valid if the
    # reference is the same
    if previous["rows"] and _reference(previous) != _reference(data):
        kept = []
        print(f"[{data['problem']}] the tuned reference changed: no previous row kept")
    data = dict(data, rows=data["rows"] + kept)
    data["command"] = "; ".join(dict.fromkeys([previous["command"], data["command"]]))
    data["seconds"] += previous["seconds"]
    data["compile_s"] += previous["compile_s"]
    return data


def _reference(data: dict) -> list:
    best = next(r for r in data["rows"] if r["label"] == "best fixed")
    return [best["rate"], best["weights"], best["scores"]]


def save(
    result: harness.ProblemResult,
    out: pathlib.Path,
    command: str,
    *,
    profile: str,
    previous: dict | None = None,
    machine_text: str | None = None,
) -> dict:
    """Writes ``<problem>.json``, ``.md`` and ``.png`` into ``out``; returns the data.

    Args:
      result: the problem's results.
      out: the folder.
      command: the exact command that ran.
      profile: the profile's name.
      previous: the data of an earlier run of the problem (``--merge``): see :func:`merge`.
      machine_text: how to describe the machine (default: :func:`machine`).

    Returns:
      The data written.
    """
    problem = result.problem
    record = dict(
        commit=library_commit(),
        command=command,
        machine=machine_text or machine(),
        profile=profile,
    )
    best = result.arm("best fixed").runs.score[:, -1].astype(np.float64)
    data = dict(
        problem=problem.name,
        kind=problem.regret,
        **record,
        seconds=result.seconds,
        compile_s=result.compile_s,
        steps=problem.steps,
        calibration_seeds=list(result.calibration_seeds),
        evaluation_seeds=list(result.evaluation_seeds),
        margin=stats.margin(best, relative=problem.regret == "relative"),
        grid=result.grid,
        rows=rows(result, record),
    )
    if previous is not None:
        data = merge(data, previous)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{problem.name}.json").write_text(json.dumps(to_json(data), indent=1))
    (out / f"{problem.name}.md").write_text(problem_markdown(problem, data))
    figure(problem, data, out / f"{problem.name}.png")
    return data


def load_results(out: pathlib.Path) -> dict[str, dict]:
    """Every current ``<problem>.json`` in ``out``, in the order of PROBLEMS."""
    results = {}
    for name in problems.PROBLEMS:
        path = out / f"{name}.json"
        if path.exists():
            data = from_json(json.loads(path.read_text()))
            if "profile" not in data:  # written before profiles and per-seed scores
                print(f"summary: {path} predates the current protocol, left out")
                continue
            results[name] = data
    return results


def load_confirmation(out: pathlib.Path) -> dict[str, dict]:
    """Every current confirmation ``<problem>.json`` in ``out``, in the order of CONFIRMATION."""
    found = {}
    for name in problems.CONFIRMATION:
        path = out / f"{name}.json"
        if path.exists():
            found[name] = from_json(json.loads(path.read_text()))
    return found


def confirmation_markdown(confirmed: dict[str, dict], screens: dict[str, dict]) -> str:
    """Each confirmation problem beside its screen: every arm's call in both tiers."""
    lines = [
        "# Confirmation: the screen's findings at a realistic size",
        "",
        "The screen (`results/summary.md`) trains every arm on small models; the confirmation "
        "retrains, on each screen problem's model at a size where the model is not the "
        "bottleneck, the base weights, the tuned fixed sum (its ratios seeded by the screen's "
        "three best, chosen on calibration seeds), the default controller and the screen's "
        "three best methods by calibration score, under the same protocol (regret against the "
        "tuned fixed weights on paired test seeds, median and 95 % interval). *kept*: the "
        "confirmation makes the screen's call; *changed*: it makes another.",
        "",
    ]
    for name, data in confirmed.items():
        screen_name = problems.ALL[name]().screen
        assert screen_name is not None
        screen = screens.get(screen_name)
        kind = data["kind"]
        screen_rows = {r["label"]: r for r in (screen or {"rows": []})["rows"]}
        lines += [
            f"## `{name}` (screen: `{screen_name}`)",
            "",
            f"{problems.ALL[name]().setting}; {data['steps']} steps, "
            f"{len(data['evaluation_seeds'])} test seeds; "
            f"{problems.parameter_count(problems.ALL[name]())} parameters.",
            "",
            "| arm | screen | confirmation | |",
            "|---|---|---|---|",
        ]
        for r in data["rows"]:
            if r["kind"] not in ("fixed", "method") or r["label"] == "best fixed":
                continue
            before = screen_rows.get(r["label"])
            screen_text = (
                f"{interval(before, screen['kind'])} {CALL_MARK[before['call']]}"
                if before and screen
                else "not run"
            )
            verdict = "-"
            if before is not None:
                verdict = "kept" if before["call"] == r["call"] else "changed"
            lines.append(
                f"| {r['label']} | {screen_text} | {interval(r, kind)} {CALL_MARK[r['call']]} "
                f"| {verdict} |"
            )
        for label, why in profiles.CONFIRMATION_NOT_RUN.get(name, {}).items():
            before = screen_rows.get(label)
            screen_text = (
                f"{interval(before, screen['kind'])} {CALL_MARK[before['call']]}"
                if before and screen
                else "not run"
            )
            lines.append(f"| {label} | {screen_text} | not run: {why} | - |")
        best = next(r for r in data["rows"] if r["label"] == "best fixed")
        lines += [
            "",
            f"Tuned fixed weights: {_weights(best['weights'])} at lr {best['rate']:g}, "
            f"median {best['median']:.3g}. Command: `{data['command']}` at commit "
            f"{data['commit']} ({data['machine']}, {data['seconds']:.0f} s).",
            "",
        ]
    return "\n".join(lines)


def write_summary(out: pathlib.Path) -> pathlib.Path:
    """``summary.md`` and each ``<problem>.md`` from every ``<problem>.json`` in ``out``; for
    the committed folder (``results/``), also the generated blocks of the pages that quote it."""
    results = load_results(out)
    for name, data in results.items():
        problem = profiles.PROFILES[data["profile"]].problem(name)
        (out / f"{name}.md").write_text(problem_markdown(problem, data))
    path = out / "summary.md"
    path.write_text(summary_markdown(results))
    confirmed = load_confirmation(out)
    if confirmed:
        (out / "confirmation.md").write_text(confirmation_markdown(confirmed, results))
        if out.resolve() == ROOT / "results":
            pages.write_block(
                ROOT,
                pages.CONFIRMATION_PAGE,
                pages.confirmation(confirmed, results),
                pages.CONFIRMATION_BLOCK,
            )
    if out.resolve() == ROOT / "results" and results:
        pages.write_pages(results, ROOT)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems",
        default=None,
        help="comma-separated names (default: the profile's: the screen, or the confirmation)",
    )
    parser.add_argument(
        "--profile", default="committed", choices=sorted(profiles.PROFILES), help="what to run"
    )
    parser.add_argument(
        "--arms", default=None, help="comma-separated arm labels, e.g. stable,dwa+guards"
    )
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--summary", action="store_true", help="only rebuild summary.md")
    parser.add_argument("--machine", default=None, help="how to describe the machine")
    parser.add_argument(
        "--cache", type=pathlib.Path, default=None, help="a folder for compiled programs"
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the current arms of an existing <problem>.json"
    )
    args = parser.parse_args(argv)
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", str(args.cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m benchmarks.report " + shlex.join(given)
    profile = profiles.PROFILES[args.profile]
    library_commit()
    done: dict[str, dict] = {}
    if not args.summary:
        default = problems.CONFIRMATION if profile.confirmation else problems.PROBLEMS
        for name in (args.problems or ",".join(default)).split(","):
            problem = profile.problem(name)
            labels = args.arms.split(",") if args.arms else profile.labels(name)
            start = time.perf_counter()
            path = args.out / f"{name}.json"
            previous = None
            if args.merge and path.exists():
                previous = from_json(json.loads(path.read_text()))

            def write(result, previous=previous):
                return save(
                    result,
                    args.out,
                    command,
                    profile=profile.name,
                    previous=previous,
                    machine_text=args.machine,
                )

            result = harness.run_problem(problem, labels=labels, plan=profile.plan, progress=write)
            done[name] = write(result)
            print(f"[{name}] done in {time.perf_counter() - start:.0f} s: {args.out / name}.md")
    path = write_summary(args.out)
    print(path.read_text())
    return done


if __name__ == "__main__":
    main()
