"""The main job, short version: the TTS model with SGD, fixed and adaptive weights, in minutes.

Run with ``make demo`` (or ``python -m benchmarks.demo``). Trains the tiny TTS-like model of
``benchmarks/tts_model.py`` (the suite's ``tts_sgd`` problem, through ``benchmarks.harness``)
with SGD and momentum 0.9 at an unstable learning rate (0.14) and a comfortable one (0.05), on
the same seeds and batches:

- ``fixed``: the base weights (mel 2.5); ``fixed_floor``: mel fixed at 1.0, the floor of the
  adaptive controllers (0.4 x base);
- ``stable``: the library's default, ``ao.stable_weights(base, adapt="mel")``: the base weights
  unless there is evidence (a start ramp from the floor to the base over 100 calm steps, a spike
  guard that halves a weight at once, growing gradients lower it, a return to the base when the
  evidence is gone); ``original``: the original controller (its rule lowers the weight of a
  converging loss; it starts at the base); ``unguarded``: the loss-ratio rule with its guards
  relaxed.

Prints the table and how the default fares against fixed weights at the unstable rate, and
writes ``demo.md`` and ``demo.png`` to ``out/demo/`` (ignored by git, so a checkout stays
clean); ``--out results`` regenerates the copies committed in ``results/`` (``make figures``).
The full comparison, every method against tuned fixed weights on six problems, is
``python -m benchmarks.report`` (``results/summary.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np

import adaptive_optax as ao
from benchmarks import default_choice, harness, problems, tts_model

SEEDS = 6
STEPS = 1500
RATES = {"unstable": 0.14, "comfortable": 0.05}
DEFAULT_OUT = pathlib.Path("out", "demo")
COLLAPSED = 1.5  # a held-out mel loss above this: the model predicts almost nothing (about 1.9)
FIXED_MEL = {"fixed": tts_model.BASE_WEIGHTS["mel"], "fixed_floor": 1.0}
ADAPTIVE = {
    "stable": lambda base: ao.stable_weights(base, adapt="mel"),
    "original": default_choice.original,
    "unguarded": lambda base: ao.unguarded_weights(base, adapt="mel"),
}


def output_paths(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The table and the figure that the demo writes into ``out``."""
    return out / "demo.md", out / "demo.png"


def run(seeds: int, steps: int) -> dict[tuple[str, str], harness.Runs]:
    """Every strategy at both rates: ``{(strategy, setting): runs over the seeds}``."""
    problem = dataclasses.replace(problems.PROBLEMS["tts_sgd"](), steps=steps)
    terms, base = problem.terms, problem.base
    cells = [(s, setting) for s in FIXED_MEL for setting in RATES]
    fixed = np.asarray(
        [
            [FIXED_MEL[s] if k == "mel" else base[k] for k in terms]
            for s, _ in cells
            for _ in range(seeds)
        ]
    )
    fixed_runs = harness.train(
        problem,
        None,
        seeds=[seed for _ in cells for seed in range(seeds)],
        rates=[RATES[setting] for _, setting in cells for _ in range(seeds)],
        fixed=fixed,
    )
    out = {
        cell: harness.take(fixed_runs, np.arange(i * seeds, (i + 1) * seeds))
        for i, cell in enumerate(cells)
    }
    for name, make in ADAPTIVE.items():
        runs = harness.train(
            problem,
            make(base),
            seeds=[seed for _ in RATES for seed in range(seeds)],
            rates=[rate for rate in RATES.values() for _ in range(seeds)],
        )
        for i, setting in enumerate(RATES):
            out[(name, setting)] = harness.take(runs, np.arange(i * seeds, (i + 1) * seeds))
    return out


def mel(runs: harness.Runs) -> np.ndarray:
    """The final held-out mel loss of the finished runs."""
    return runs.metrics["mel"][runs.finished, -1]


def table(results: Mapping[tuple[str, str], harness.Runs]) -> str:
    lines = [
        "| setting (lr) | strategy | finished | collapsed (mel > 1.5) | held-out mel, median "
        "[min, max] | mel weight, mean over steps (median) |",
        "|---|---|---|---|---|---|",
    ]
    for (strategy, setting), runs in results.items():
        m = mel(runs)
        text = f"{np.median(m):.3f} [{m.min():.3f}, {m.max():.3f}]" if m.size else "-"
        weight = np.median(runs.mean_weights[:, 0])
        lines.append(
            f"| {setting} ({RATES[setting]:g}) | {strategy} | {int(runs.finished.sum())}/"
            f"{runs.finished.size} | {int((m > COLLAPSED).sum())} | {text} | {weight:.2f} |"
        )
    return "\n".join(lines)


def rescue(results: Mapping[tuple[str, str], harness.Runs]) -> str:
    """One sentence: the default and fixed weights at the unstable rate."""

    def outcome(strategy: str) -> str:
        runs = results[(strategy, "unstable")]
        m = mel(runs)
        median = f"{np.median(m):.2f}" if m.size else "-"
        return (
            f"{int(runs.finished.sum())}/{runs.finished.size} runs finished "
            f"({int((m > COLLAPSED).sum())} of them collapsed, held-out mel > {COLLAPSED:g}), "
            f"median held-out mel {median}"
        )

    return (
        f"At the unstable rate (lr {RATES['unstable']:g}): the fixed base weights "
        f"{outcome('fixed')}; the library's default (ao.stable_weights) {outcome('stable')}; "
        f"the original controller {outcome('original')}; "
        f"mel fixed at the controllers' floor {outcome('fixed_floor')}."
    )


def figure(results: Mapping[tuple[str, str], harness.Runs], path: pathlib.Path) -> pathlib.Path:
    """The median held-out mel loss during training, per strategy, at both rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RATES), figsize=(10, 4), sharey=True)
    for ax, setting in zip(axes, RATES, strict=True):
        for (strategy, s), runs in results.items():
            if s != setting:
                continue
            curve = np.median(np.where(runs.finished[:, None], runs.metrics["mel"], np.nan), 0)
            ax.plot(np.linspace(0, 1, curve.size), curve, marker="o", ms=3, label=strategy)
        ax.set_title(f"{setting} (lr {RATES[setting]:g})")
        ax.set_xlabel("fraction of training")
    axes[0].set_ylabel("held-out mel loss (median of finished runs)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument(
        "--rates",
        default=None,
        help="the unstable and the comfortable learning rate, e.g. 0.25,0.2 (default 0.14,0.05)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=DEFAULT_OUT,
        help=f"folder for demo.md and demo.png (default {DEFAULT_OUT}, ignored by git)",
    )
    args = parser.parse_args(argv)
    global RATES
    command = f"python -m benchmarks.demo --steps {args.steps} --seeds {args.seeds}"
    if args.rates:
        unstable, comfortable = (float(r) for r in args.rates.split(","))
        RATES = {"unstable": unstable, "comfortable": comfortable}
        command += f" --rates {args.rates}"
    print(
        f"Training a tiny TTS-like model (mel, stop, attention, duration losses; base weights "
        f"{tts_model.BASE_WEIGHTS}) with {len(FIXED_MEL) + len(ADAPTIVE)} weighting strategies "
        f"x {len(RATES)} learning rates x {args.seeds} seeds x {args.steps} steps (SGD, "
        f"momentum 0.9; lr {RATES})."
    )
    print(f"Outputs go to {args.out}/ (demo.md, demo.png).")
    start = time.perf_counter()
    results = run(args.seeds, args.steps)
    elapsed = time.perf_counter() - start
    text = table(results)
    print(text)
    print(rescue(results))
    md, png = output_paths(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    md.write_text(f"`{command}`, total {elapsed:.0f} s.\n\n{text}\n\n{rescue(results)}\n")
    figure(results, png)
    print(f"Done in {elapsed:.0f} s. Table written to {md}, figure written to {png}.")
    print(
        "Finished = no NaN/Inf loss or parameter at any step; held-out mel = L1 + L2 on a "
        "held-out batch. Every method against tuned fixed weights: python -m benchmarks.report"
    )


if __name__ == "__main__":
    main()
