"""The main job, short version: the stability benchmark, reduced to about a minute or two.

Run with ``make demo`` (or ``python -m benchmarks.demo``). Trains the tiny TTS-like model of
``benchmarks/tts_model.py`` with fixed, legacy, unguarded and stable loss weights on the same
seeds and batches, at the benchmark's unstable and comfortable learning rates, with fewer seeds
and steps than ``python -m benchmarks.stability``. Prints the table and writes ``demo.md`` and
``demo.png`` to ``out/demo/`` (ignored by git, so a checkout stays clean); ``--out results``
regenerates the copies committed in ``results/`` (``make figures``).
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence

from tqdm import tqdm

from benchmarks import stability, tts_model

SEEDS = tuple(range(6))
STEPS = 1500
DEFAULT_OUT = pathlib.Path("out", "demo")


def output_paths(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The table and the figure that the demo writes into ``out``."""
    return out / "demo.md", out / "demo.png"


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
        rows, results = stability.run_benchmark(
            settings=settings, seeds=seeds, steps=args.steps, progress=bar
        )
    elapsed = time.perf_counter() - start
    table = stability.markdown_table(rows)
    print(table)
    md, png = output_paths(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    md.write_text(
        f"`python -m benchmarks.demo --steps {args.steps} --seeds {args.seeds}`, "
        f"total {elapsed:.0f} s.\n\n{table}\n"
    )
    png = stability.figure(results, png)
    print(f"Done in {elapsed:.0f} s. Table written to {md}, figure written to {png}.")
    print(
        "Finished = no NaN/Inf loss at any step; final mel loss = L1 + L2 on a held-out batch, "
        "over the finished runs. The full benchmark: python -m benchmarks.stability"
    )


if __name__ == "__main__":
    main()
