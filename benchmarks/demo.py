"""The main job, short version: the stability benchmark, reduced to about a minute or two.

Run with ``make demo`` (or ``python -m benchmarks.demo``). Trains the tiny TTS-like model of
``benchmarks/tts_model.py`` with every strategy of the benchmark (fixed weights: the seed's, the
adaptive controllers' floor, the best of a sweep; the legacy, unguarded, seed and relative
rules) on the same seeds and batches, at the benchmark's unstable and comfortable learning
rates only, with fewer seeds and steps than ``python -m benchmarks.stability`` and without its
grid of rates. Prints the table and how the library's default (``ao.stable_weights``, the
``seed`` strategy) fares against fixed weights at the unstable rate, and writes ``demo.md`` and
``demo.png`` to ``out/demo/`` (ignored by git, so a checkout stays clean); ``--out results``
regenerates the copies committed in ``results/`` (``make figures``).
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from benchmarks import stability, tts_model

SEEDS = tuple(range(6))
STEPS = 1500
DEFAULT_OUT = pathlib.Path("out", "demo")


def output_paths(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The table and the figure that the demo writes into ``out``."""
    return out / "demo.md", out / "demo.png"


COLLAPSED = 1.5  # a held-out mel loss above this: the model predicts almost nothing (about 1.9)


def rescue(groups: Mapping[str, stability.Group]) -> str:
    """One sentence: the default and fixed weights at the unstable rate."""
    rate = stability.SETTINGS["unstable"]

    def outcome(strategy: str) -> str:
        result = groups[strategy].at_rate(rate)
        mel = result.eval_mel[result.finished]
        median = f"{np.median(mel):.2f}" if mel.size else "-"
        return (
            f"{int(result.finished.sum())}/{result.finished.size} runs finished "
            f"({int((mel > COLLAPSED).sum())} of them collapsed, held-out mel > {COLLAPSED:g}), "
            f"median held-out mel {median}"
        )

    return (
        f"At the unstable rate (lr {rate:g}): the seed's fixed weights {outcome('fixed')}; "
        f"the library's default (seed rule under every guard, ao.stable_weights) "
        f"{outcome('seed')}; the relative rule {outcome('relative')}; mel fixed at the "
        f"controllers' floor {outcome('fixed_floor')}."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=DEFAULT_OUT,
        help=f"folder for demo.md and demo.png (default {DEFAULT_OUT}, ignored by git)",
    )
    args = parser.parse_args(argv)
    seeds = tuple(range(args.seeds))
    settings = stability.SETTINGS
    print(
        f"Training a tiny TTS-like model (mel, stop, attention, duration losses; base weights "
        f"{tts_model.BASE_WEIGHTS}) with {len(tts_model.STRATEGIES)} weighting strategies x "
        f"{len(settings)} learning rates x {len(seeds)} seeds x {args.steps} steps "
        f"(SGD, momentum 0.9; unstable lr {settings['unstable']}, comfortable lr "
        f"{settings['comfortable']})."
    )
    print(f"Outputs go to {args.out}/ (demo.md, demo.png).")
    total = len(tts_model.STRATEGIES) * len(settings) * len(seeds) * args.steps
    start = time.perf_counter()
    with tqdm(total=total, unit="step", unit_scale=True, desc="training") as bar:
        groups = stability.run_benchmark(
            rates=tuple(settings.values()), seeds=seeds, steps=args.steps, progress=bar
        )
    elapsed = time.perf_counter() - start
    rows = stability.setting_rows(groups, settings)
    table = stability.markdown_table(rows)
    print(table)
    print(rescue(groups))
    md, png = output_paths(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    md.write_text(
        f"`python -m benchmarks.demo --steps {args.steps} --seeds {args.seeds}`, "
        f"total {elapsed:.0f} s.\n\n{table}\n\n{rescue(groups)}\n"
    )
    png = stability.figure(groups, png, settings)
    print(f"Done in {elapsed:.0f} s. Table written to {md}, figure written to {png}.")
    print(
        "Finished = no NaN/Inf loss at any step; final mel loss = L1 + L2 on a held-out batch, "
        "over the finished runs. The full benchmark: python -m benchmarks.stability"
    )


if __name__ == "__main__":
    main()
