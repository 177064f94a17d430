"""The benchmark suite's command, tables and figures.

Run one problem, or several, of :mod:`benchmarks.problems` through the protocol of
:mod:`benchmarks.harness`, and write per problem ``<problem>.md``, ``<problem>.png`` and
``<problem>.json`` (the rows), then ``summary.md`` from every ``<problem>.json`` in the folder::

    python -m benchmarks.report --problems digits --out results    # one problem, a few minutes
    python -m benchmarks.report --out results                      # every problem (make figures)
    python -m benchmarks.report --summary --out results            # summary.md only
    python -m benchmarks.report --quick                            # every problem, tiny (tests)

The default folder is ``out/suite`` (ignored by git); ``--out results`` writes the committed
copies. ``--arms stable,dwa`` restricts the methods (their labels in ``harness.ARMS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import platform
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

import adaptive_optax as ao
from benchmarks import harness, problems

DEFAULT_OUT = pathlib.Path("out", "suite")
QUICK_ARMS = {"digits": ("stable",), "toy": ("stable", "mgda")}
"""The arms of ``--quick`` per problem (the others: fixed weights only), to fit the test budget."""
QUICK_SEEDS = dict(calibration_seeds=(100,), evaluation_seeds=(0, 1))


def rows(result: harness.ProblemResult) -> list[dict]:
    """One dict per arm: every number of the per-problem table."""
    problem = result.problem
    best = result.arm("best fixed")
    best_final = harness.median_final(best.runs)
    best_time = harness.equal_time_score(best, best.step_s)
    out = []
    for arm in result.arms:
        final = arm.runs.score[:, -1]
        finite = final[np.isfinite(final)]
        median = harness.median_final(arm.runs)
        at_time = harness.equal_time_score(arm, best.step_s)
        out.append(
            dict(
                label=arm.label,
                kind=arm.kind,
                method=arm.method,
                guarded=arm.guarded,
                rate=arm.rate,
                weights=arm.weights,
                median=median,
                low=float(finite.min()) if finite.size else math.inf,
                high=float(finite.max()) if finite.size else math.inf,
                heads={h: float(np.median(v[:, -1])) for h, v in arm.runs.metrics.items()},
                finished=int(arm.runs.finished.sum()),
                runs=int(arm.runs.finished.size),
                regret=harness.regret(problem, median, best_final),
                regret_time=harness.regret(problem, at_time, best_time),
                cost=arm.step_s / best.step_s if best.step_s > 0 else math.nan,
                runs_needed=arm.runs_needed,
                stable_rate=arm.stable_rate,
                spikes=float(np.median(arm.runs.spikes)),
                calibration=arm.calibration_score,
            )
        )
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
        return "failed"
    return f"{100 * x:+.1f} %" if kind == "relative" else f"{x:+.3g}"


def _weights(w: dict | None) -> str:
    return "-" if w is None else ", ".join(f"{k} {v:.3g}" for k, v in w.items())


def machine() -> str:
    return f"{platform.machine()} CPU, {platform.system()}, Python {platform.python_version()}"


def problem_markdown(problem: problems.Problem, data: dict) -> str:
    """The per-problem results page."""
    kind = problem.regret
    lines = [
        f"# {problem.title}",
        "",
        f"Command: `{data['command']}`; machine: {data['machine']}; "
        f"{data['seconds']:.0f} s in all, {data['compile_s']:.0f} s of it compiling.",
        "",
        f"Setting: {problem.setting}. Base weights: {problem.base}. Steps: {data['steps']}. "
        f"Learning rates: {list(problem.rates)}; fixed-weight grid: {len(problem.ratios)} ratios "
        f"x scales {list(problem.scales)} (times the base total) x the rates. Calibration seeds "
        f"{data['calibration_seeds']}, evaluation seeds {data['evaluation_seeds']}.",
        "",
        f"Score: {problem.metric_name} (lower is better), median [min, max] over the "
        "evaluation seeds at the end of training (a run with a non-finite loss or parameter "
        "counts as infinitely bad); regret against the best fixed weights "
        f"({'relative: score / best - 1' if kind == 'relative' else 'absolute: score - best'}) "
        "at equal steps and at equal wall-clock (an arm c times slower per step is read at "
        "the checkpoint 1/c of the way through); cost: seconds per step over the fixed "
        "weights'; runs: training runs per seed to choose the setting (the learning rate, and "
        "for the best fixed weights the weights too); stable lr: the largest rate of the grid "
        "at which at least 90 % of the evaluation runs finished (base, best fixed and the "
        "methods only). Distilled: the arm's time-averaged calibration weights normalised to "
        "the base total (its ratio) replayed as fixed weights; averaged: as they were (ratio "
        "and scale). `live failed`: no run of the arm finished, so there is nothing to replay.",
        "",
        "| arm | lr | score | regret (steps) | regret (time) | finished | heads | cost | runs "
        "| stable lr | weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        heads = ", ".join(f"{h} {_num(v)}" for h, v in r["heads"].items())
        lines.append(
            f"| {r['label']} | {r['rate']:g} | {_num(r['median'])} [{_num(r['low'])}, "
            f"{_num(r['high'])}] | {_regret(r['regret'], kind)} | "
            f"{_regret(r['regret_time'], kind)} | {r['finished']}/{r['runs']} | {heads} | "
            f"{_num(r['cost'], '.2f')} | {r['runs_needed']} | {_num(r['stable_rate'], 'g')} | "
            f"{_weights(r['weights'])} |"
        )
    lines += ["", f"![{problem.title}]({problem.name}.png)", ""]
    return "\n".join(lines)


def figure(problem: problems.Problem, data: dict, path: pathlib.Path) -> pathlib.Path:
    """The fixed-weight front of the grid (calibration medians) and each method as a point.

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

    grid = [g for g in data["grid"] if np.isfinite(g["score"])]
    gx, gy = zip(*(xy(g["heads"] if two else g["rate"], g["score"]) for g in grid), strict=True)
    ax.scatter(gx, gy, s=12, color="0.7", label="fixed weights (grid, calibration)")
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
    needs = set(arm.factory(base, **kwargs).needs)
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
    names = list(results)
    extra = " within 2 % | cost (median over problems) | gradients |" if costs else ""
    lines = ["| arm | " + " | ".join(names) + " |" + extra, "|---|" + "---|" * len(names)]
    lines[-1] += "---|---|---|" if costs else ""
    by_label = _rows_by_label(results)
    for label in labels:
        cells, cost, method, close, ran = [], [], "", 0, 0
        for name in names:
            data, rows = results[name], by_label[name]
            row = rows.get(label)
            if row is None:
                live = rows.get(label.partition(" (")[0])
                failed = live is not None and not math.isfinite(live["regret"])
                cells.append("live failed" if failed else "not run")  # nothing to replay
                continue
            method = row["method"] or method
            cells.append(_regret(row["regret"], data["kind"]))
            if data["kind"] == "relative":
                ran += 1
                close += bool(row["regret"] <= 0.02)
            if row["kind"] == "method" and np.isfinite(row["cost"]):
                cost.append(row["cost"])
        line = f"| {label} | " + " | ".join(cells) + " |"
        if costs:
            gradients = "-" if label == "base" else gradients_needed(method)
            line += f" {close}/{ran} |"
            line += f" {np.median(cost):.2f} |" if cost else " - |"
            line += f" {gradients} |"
        lines.append(line)
    return lines


def _rows_by_label(results: dict[str, dict]) -> dict[str, dict[str, dict]]:
    return {name: {r["label"]: r for r in data["rows"]} for name, data in results.items()}


def _compare(before: float, after: float) -> int:
    """0: ``after`` is lower (better) by more than 1 %, 1: higher (worse), 2: about equal.

    A failed run (an infinite score) is the worst score; two failed runs are equal.
    """
    if not (math.isfinite(before) or math.isfinite(after)):
        return 2
    if after < before * 0.99:
        return 0
    return 1 if after > before * 1.01 else 2


def guards_markdown(results: dict[str, dict]) -> list[str]:
    """Each method with recommended guards: its bare and guarded regret, problem by problem."""
    names = list(results)
    lines = [
        "## What the recommended guards buy",
        "",
        "Each method whose docstring recommends guards: its regret bare -> guarded on each "
        "problem where both ran, and on how many problems the guarded arm's median score is "
        "lower (better), higher (worse) or within 1 % of the bare arm's (a failed run counts "
        "as the worst score).",
        "",
        "| method | " + " | ".join(names) + " | guarded better / worse / equal |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    by_label = _rows_by_label(results)
    for variant in harness.variants():
        if not variant.guarded:
            continue
        cells, tally = [], [0, 0, 0]
        for name in names:
            data, rows = results[name], by_label[name]
            bare, guarded = rows.get(variant.method), rows.get(variant.label)
            if bare is None or guarded is None:
                cells.append("-")
                continue
            tally[_compare(bare["median"], guarded["median"])] += 1
            kind = data["kind"]
            cells.append(f"{_regret(bare['regret'], kind)} -> {_regret(guarded['regret'], kind)}")
        if sum(tally):
            lines.append(
                f"| {variant.method} | " + " | ".join(cells) + f" | {tally[0]} / {tally[1]} / "
                f"{tally[2]} |"
            )
    return lines


def summary_markdown(results: dict[str, dict]) -> str:
    """Methods x problems: each cell the regret against the best tuned fixed weights."""
    names = list(results)
    labels: list[str] = []
    for data in results.values():
        for r in data["rows"]:
            if r["label"] not in labels and r["label"] != "best fixed":
                labels.append(r["label"])
    live = _ordered([label for label in labels if "(" not in label])
    replayed = _ordered([label for label in labels if "(" in label])
    lines = [
        "# Summary: regret against the best tuned fixed weights",
        "",
        "Each cell: the arm's median score on the evaluation seeds, at its best learning rate "
        "(chosen on calibration seeds), relative to the best fixed weights of the grid "
        "(weights and learning rate chosen on the same calibration seeds): `+10 %` is 10 % "
        "worse; `failed`: the median run did not finish; the toy's cells are differences of "
        "distances to the Pareto set (the arm's minus the tuned weights'). Within 2 %: on how "
        "many of the problems where it ran "
        "(the toy aside) the arm is at most 2 % worse than the tuned fixed weights, or better. "
        "Cost: seconds per step over fixed weights (batched "
        "runs, shared CPU: indicative). Gradients: what the method needs beyond the losses. "
        "Per-problem tables, settings and figures: "
        + ", ".join(f"`results/{n}.md`" for n in names)
        + " (in the documentation: the page *The benchmark suite, problem by problem*).",
        "",
        "Commands and machines: "
        + "; ".join(f"{n}: `{d['command']}` ({d['machine']})" for n, d in results.items())
        + ".",
        "",
        *_table(results, live, costs=True),
        "",
        "## Replayed as fixed weights",
        "",
        "Each adaptive run's time-averaged normalised weights replayed as fixed weights: "
        "*distilled* at the base weights' total (its ratio), *averaged* at its own total (ratio "
        "and scale). `live failed`: no run of the arm finished, so there is nothing to replay.",
        "",
        *_table(results, replayed, costs=False),
        "",
        *guards_markdown(results),
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


def save(
    result: harness.ProblemResult,
    out: pathlib.Path,
    command: str,
    *,
    previous: dict | None = None,
    machine_text: str | None = None,
) -> dict:
    """Writes ``<problem>.json``, ``.md`` and ``.png`` into ``out``; returns the data.

    ``previous``: the data of an earlier run of the problem (``--merge``), whose arms that this
    run did not train are kept (the fixed grid, on the same seeds, is the same).
    """
    problem = result.problem
    data = dict(
        problem=problem.name,
        kind=problem.regret,
        command=command,
        machine=machine_text or machine(),
        seconds=result.seconds,
        compile_s=result.compile_s,
        steps=problem.steps,
        calibration_seeds=list(result.calibration_seeds),
        evaluation_seeds=list(result.evaluation_seeds),
        grid=result.grid,
        rows=rows(result),
    )
    if previous is not None:
        labels = {r["label"] for r in data["rows"]}
        data["rows"] += [r for r in previous["rows"] if r["label"] not in labels]
        data["command"] = f"{previous['command']}; {command}"
        data["seconds"] += previous["seconds"]
        data["compile_s"] += previous["compile_s"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{problem.name}.json").write_text(json.dumps(to_json(data), indent=1))
    (out / f"{problem.name}.md").write_text(problem_markdown(problem, data))
    figure(problem, data, out / f"{problem.name}.png")
    return data


def write_summary(out: pathlib.Path) -> pathlib.Path:
    """``summary.md`` from every ``<problem>.json`` in ``out``, in the order of PROBLEMS."""
    results = {}
    for name in problems.PROBLEMS:
        path = out / f"{name}.json"
        if path.exists():
            results[name] = from_json(json.loads(path.read_text()))
    path = out / "summary.md"
    path.write_text(summary_markdown(results))
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(problems.PROBLEMS))
    parser.add_argument(
        "--arms", default=None, help="comma-separated arm labels, e.g. stable,dwa+guards"
    )
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="every problem, tiny")
    parser.add_argument("--summary", action="store_true", help="only rebuild summary.md")
    parser.add_argument("--machine", default=None, help="how to describe the machine")
    parser.add_argument("--steps", type=int, default=None, help="override the steps")
    parser.add_argument("--rates", default=None, help="override the learning rates: a,b,c")
    parser.add_argument(
        "--calibration-seeds", type=int, default=None, help="use the first K calibration seeds"
    )
    parser.add_argument(
        "--cache", type=pathlib.Path, default=None, help="a folder for compiled programs"
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the arms of an existing <problem>.json"
    )
    args = parser.parse_args(argv)
    if args.cache:  # a rerun of a problem (``--merge``) compiles its fixed grid again otherwise
        jax.config.update("jax_compilation_cache_dir", str(args.cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    command = "python -m benchmarks.report " + " ".join(argv if argv is not None else sys.argv[1:])
    done: dict[str, dict] = {}
    if not args.summary:
        seeds = QUICK_SEEDS if args.quick else {}
        for name in args.problems.split(","):
            problem = problems.PROBLEMS[name]()
            labels = args.arms.split(",") if args.arms else None
            if args.quick:
                problem = problem.quick_version()
                labels = labels or QUICK_ARMS.get(name, ())
            if args.steps:
                problem = dataclasses.replace(problem, steps=args.steps)
            if args.rates:
                rates = tuple(float(r) for r in args.rates.split(","))
                problem = dataclasses.replace(problem, rates=rates)
            if args.calibration_seeds:
                calibration = harness.CALIBRATION_SEEDS[: args.calibration_seeds]
                seeds = dict(seeds, calibration_seeds=calibration)
            start = time.perf_counter()
            path = args.out / f"{name}.json"
            previous = None
            if args.merge and path.exists():
                previous = from_json(json.loads(path.read_text()))

            def write(result, previous=previous):
                return save(result, args.out, command, previous=previous, machine_text=args.machine)

            done[name] = write(harness.run_problem(problem, labels=labels, progress=write, **seeds))
            print(f"[{name}] done in {time.perf_counter() - start:.0f} s: {args.out / name}.md")
    path = write_summary(args.out)
    print(path.read_text())
    return done


if __name__ == "__main__":
    main()
