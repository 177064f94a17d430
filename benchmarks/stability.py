"""Stability benchmark: fixed and adaptive loss weights on a tiny TTS model, measured.

Run with ``python -m benchmarks.stability`` (about 12 minutes on 2 shared CPU cores). Every
strategy trains the same model (``benchmarks/tts_model.py``) from the same initial parameters on
the same batches, seed for seed, with SGD and momentum 0.9, over a grid of learning rates:

- ``fixed``: the seed's weights (mel 2.5); ``fixed_floor``: mel fixed at 1.0, the floor of the
  adaptive controllers (0.4 x base); ``best_fixed``: the best fixed mel weight of a small sweep
  (``--sweep-mel``: calibration seeds, the comfortable rate, lowest median held-out mel);
- ``legacy`` (the older tanh rule), ``unguarded`` (the seed's rule with its guards relaxed);
- ``seed``: the seed's rule (``ao.loss_ratio_rule``) under every guard, spike guard included
  (threshold 3), which is today's ``ao.stable_weights``; ``relative``:
  ``ao.relative_ratio_rule`` under the same guards. Only the mel weight adapts.

The training step is plain optax, without ``ao.apply_if_finite``: a non-finite loss reaches the
parameters, so the comparison measures what the weighting alone does for stability.

Two settings of the grid make the main table, both from ``--sweep`` (fixed weights only, on
calibration seeds disjoint from the evaluation seeds; the adaptive strategies play no part):

- ``unstable``: the smallest rate of the sweep at which the seed's fixed weights fail (a
  non-finite loss) on at least a third of the calibration seeds;
- ``comfortable``: a rate at which every calibration run with fixed weights finishes.

Per strategy the second table gives the *largest stable learning rate*: the largest rate of
``GRID`` at which at least 90 % of the evaluation runs finish and their median held-out mel loss
is at most 1.2. Every group of runs reports the runs that finished without a non-finite loss and
the final mel loss (L1 + L2 on a held-out batch) of the finished runs. One jit per strategy
(fixed-weight strategies share one: the mel weight is traced) trains every rate and seed at once
(``vmap`` over rates and seeds, ``lax.scan`` over steps). Writes ``results/stability.md`` and
``results/stability.png``.

Also: ``--sweep`` and ``--sweep-mel`` (the calibration behind the settings and ``best_fixed``),
``--sweep-spike`` (spike-guard settings of ``seed`` and ``relative`` on the calibration seeds)
and ``--spike-threshold`` / ``--spike-factor`` (the grid with another spike guard, to confirm a
calibration result on the evaluation seeds).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import pathlib
import pickle
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import tts_model

OPTIMIZER = "sgd"  # SGD with momentum 0.9; see ``--sweep`` and the README for why not Adam
STEPS = 3000
SEEDS = tuple(range(20))  # evaluation seeds
CALIBRATION_SEEDS = tuple(range(100, 110))  # for the sweeps only
SWEEP_RATES = {
    "sgd": (0.03, 0.05, 0.07, 0.1, 0.12, 0.14, 0.2),
    "adam": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
}
# Chosen from ``--sweep`` (fixed weights, calibration seeds, 3000 steps); see the README.
SETTINGS = {"unstable": 0.14, "comfortable": 0.05}
# The grid of the largest stable learning rate; it holds both settings.
GRID = (0.03, 0.05, 0.07, 0.1, 0.12, 0.14, 0.17, 0.2, 0.25)
STABLE_FINISHED = 0.9  # a rate is stable when at least this share of the runs finish
STABLE_MEL = 1.2  # and the median held-out mel loss of the finished runs is at most this
# The fixed mel weights of ``--sweep-mel`` (the comfortable rate, calibration seeds).
MEL_SWEEP = (0.5, 1.0, 1.5, 2.5, 4.0)
# The spike-guard settings of ``--sweep-spike`` (calibration seeds; seed and relative).
SPIKE_THRESHOLDS = (2.5, 3.0, 4.0)
SPIKE_FACTORS = (0.5, 0.7)
SPIKE_SWEEP_RATES = (0.05, 0.1, 0.12, 0.14, 0.17, 0.2)


class Group(NamedTuple):
    """Every run of one strategy: one jit call over settings (rates) and seeds."""

    strategy: str
    configs: dict[str, np.ndarray]  # "learning_rate" and any other traced setting, (C,)
    result: tts_model.Result  # NumPy arrays with leading axes (C, seeds)
    compile_s: float  # 0 when compiled by an earlier call
    run_s: float

    def at(self, index: int) -> tts_model.Result:
        """The runs of the ``index``-th setting (leading axis: seeds)."""
        return jax.tree.map(lambda x: x[index], self.result)

    def at_rate(self, rate: float) -> tts_model.Result:
        """The runs at learning rate ``rate`` (the first setting with it)."""
        rates = self.configs["learning_rate"]
        return self.at(int(np.flatnonzero(np.isclose(rates, rate))[0]))


class Row(NamedTuple):
    """One line of the results table."""

    setting: str
    learning_rate: float
    strategy: str
    runs: int
    finished: int
    mel_median: float  # over finished runs; NaN if none
    mel_low: float  # min over finished runs
    mel_high: float  # max over finished runs
    adjustments_median: float
    spikes_median: float  # spike cuts of the mel weight
    final_weight_median: float  # the mel weight at the last step
    first_failure_median: float  # median step of the first non-finite loss; NaN if none


def _kind(strategy: str) -> str:
    """The compiled function a strategy runs on: every fixed-weight strategy shares one."""
    return "fixed" if strategy in tts_model.FIXED_MEL else strategy


def _default_configs(strategy: str) -> dict[str, float]:
    """The traced settings of a strategy besides the learning rate, at their defaults."""
    if strategy in tts_model.FIXED_MEL:
        return {"mel_weight": tts_model.FIXED_MEL[strategy]}
    if strategy in tts_model.ADAPTIVE:
        return {
            "spike_threshold": tts_model.SPIKE_THRESHOLD,
            "spike_factor": tts_model.SPIKE_FACTOR,
        }
    return {}


@functools.lru_cache(maxsize=16)
def compiled_trainer(
    kind: str, optimizer: str, steps: int, n_seeds: int, n_configs: int, names: tuple[str, ...]
):
    """One jit per kind: ``vmap`` over settings and seeds, ``lax.scan`` over steps.

    The settings (``names``: the learning rate, and the mel weight or the spike guard) are
    traced, so one compile serves every rate and every fixed mel weight. Returns the compiled
    function ``(configs, params, indices, dataset, held_out) -> Result`` and its compile time
    in seconds; cached, so a second call costs nothing.
    """

    def run(configs, params, indices, dataset, held_out):
        def one_config(config):
            settings = dict(config)
            rate = settings.pop("learning_rate")
            return jax.vmap(
                lambda p, i: tts_model.train(
                    kind, optimizer, rate, p, dataset, held_out, i, **settings
                )
            )(params, indices)

        return jax.vmap(one_config)(configs)

    configs = {name: jax.ShapeDtypeStruct((n_configs,), jnp.float32) for name in names}
    params, indices = jax.eval_shape(lambda: tts_model.seed_inputs(jnp.arange(n_seeds), steps))
    data = jax.eval_shape(tts_model.make_dataset)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(configs, params, indices, *data).compile()
    return compiled, time.perf_counter() - start


def run_strategy(
    strategy: str,
    rates: Sequence[float],
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
    optimizer: str = OPTIMIZER,
    **settings: Sequence[float],
) -> Group:
    """Trains one strategy at every rate (with its settings) on every seed, in one call.

    Args:
      strategy: a name from ``tts_model.STRATEGIES``.
      rates: the learning rates, one per setting.
      seeds: the seeds; every strategy sees the same ones.
      steps: training steps per run.
      optimizer: a key of ``tts_model.OPTIMIZERS``.
      **settings: per setting, a traced setting of the strategy instead of its default, as a
        sequence as long as ``rates``: ``mel_weight`` (fixed-weight strategies) or
        ``spike_threshold`` and ``spike_factor`` (``seed``, ``relative``).
    """
    defaults = _default_configs(strategy)
    unknown = set(settings) - set(defaults)
    if unknown:
        raise ValueError(f"{strategy!r} has no setting {sorted(unknown)}")
    configs = {"learning_rate": np.asarray(rates, np.float32)}
    for name, default in defaults.items():
        value = settings.get(name, [default] * len(rates))
        configs[name] = np.asarray(value, np.float32)
        if configs[name].shape != configs["learning_rate"].shape:
            raise ValueError(f"{name} needs one value per rate, got {value!r}")

    hits = compiled_trainer.cache_info().hits
    trainer, compile_s = compiled_trainer(
        _kind(strategy), optimizer, steps, len(seeds), len(rates), tuple(configs)
    )
    if compiled_trainer.cache_info().hits > hits:
        compile_s = 0.0  # compiled by an earlier call
    data = tts_model.make_dataset()
    params, indices = tts_model.seed_inputs(jnp.asarray(seeds), steps)
    start = time.perf_counter()
    result = jax.block_until_ready(trainer(configs, params, indices, *data))
    run_s = time.perf_counter() - start
    return Group(strategy, configs, jax.tree.map(np.asarray, result), compile_s, run_s)


def run_benchmark(
    strategies: Sequence[str] = tts_model.STRATEGIES,
    rates: Sequence[float] = GRID,
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
    optimizer: str = OPTIMIZER,
    progress: Any = None,
    spike: Mapping[str, float] | None = None,
) -> dict[str, Group]:
    """Trains every strategy at every rate on every seed; the groups by strategy.

    ``progress``: an optional tqdm-like bar, advanced by ``len(rates) * len(seeds) * steps``
    per strategy. ``spike``: ``spike_threshold`` and / or ``spike_factor`` for ``seed`` and
    ``relative`` instead of their defaults.
    """
    groups = {}
    for strategy in strategies:
        if progress is not None:
            progress.set_postfix_str(strategy)
        twin = same_runs(strategy, groups)
        if twin is not None:  # the same fixed mel weight: the same runs, bit for bit
            groups[strategy] = groups[twin]._replace(strategy=strategy, compile_s=0.0, run_s=0.0)
        else:
            settings = {}
            if strategy in tts_model.ADAPTIVE and spike:
                settings = {name: [value] * len(rates) for name, value in spike.items()}
            groups[strategy] = run_strategy(strategy, rates, seeds, steps, optimizer, **settings)
        if progress is not None:
            progress.update(len(rates) * len(seeds) * steps)
    return groups


def same_runs(strategy: str, done: Mapping[str, Any]) -> str | None:
    """A strategy among ``done`` that trains exactly as ``strategy`` does, if any.

    Fixed-weight strategies with the same mel weight run the same compiled function on the same
    inputs (``best_fixed`` is ``fixed_floor`` when the sweep picks the floor).
    """
    mel = tts_model.FIXED_MEL
    for other in done:
        if strategy in mel and other in mel and mel[strategy] == mel[other]:
            return other
    return None


def summarise(setting: str, rate: float, strategy: str, result: tts_model.Result) -> Row:
    """The table row of one group of runs (leading axis: seeds)."""
    finished = result.finished
    mel = result.eval_mel[finished]
    failures = result.first_nonfinite[result.first_nonfinite >= 0]
    nan = float("nan")
    return Row(
        setting=setting,
        learning_rate=float(rate),
        strategy=strategy,
        runs=int(finished.size),
        finished=int(finished.sum()),
        mel_median=float(np.median(mel)) if mel.size else nan,
        mel_low=float(mel.min()) if mel.size else nan,
        mel_high=float(mel.max()) if mel.size else nan,
        adjustments_median=float(np.median(result.adjustments)),
        spikes_median=float(np.median(result.spikes)),
        final_weight_median=float(np.median(result.trace.mel_weight[..., -1])),
        first_failure_median=float(np.median(failures)) if failures.size else nan,
    )


def setting_rows(
    groups: Mapping[str, Group], settings: Mapping[str, float] | None = None
) -> list[Row]:
    """The main table's rows: each strategy at each setting."""
    settings = SETTINGS if settings is None else settings
    return [
        summarise(setting, rate, strategy, group.at_rate(rate))
        for strategy, group in groups.items()
        for setting, rate in settings.items()
    ]


def grid_rows(group: Group) -> list[Row]:
    """One row per setting of a group, labelled by its learning rate."""
    rates = group.configs["learning_rate"]
    return [
        summarise(f"lr {rate:g}", rate, group.strategy, group.at(i)) for i, rate in enumerate(rates)
    ]


def is_stable(row: Row) -> bool:
    """At least ``STABLE_FINISHED`` of the runs finished, median mel at most ``STABLE_MEL``."""
    return row.finished >= STABLE_FINISHED * row.runs and row.mel_median <= STABLE_MEL


def largest_stable_rate(rows: Sequence[Row]) -> float:
    """The largest learning rate among ``rows`` that is stable; NaN if none is."""
    stable = [row.learning_rate for row in rows if is_stable(row)]
    return max(stable) if stable else float("nan")


def _number(x: float, fmt: str) -> str:
    return "-" if np.isnan(x) else format(x, fmt)


def _mel(row: Row) -> str:
    if np.isnan(row.mel_median):
        return "-"
    return f"{row.mel_median:.3f} [{row.mel_low:.3f}, {row.mel_high:.3f}]"


def markdown_table(rows: Sequence[Row]) -> str:
    """The main results as a markdown table."""
    lines = [
        "| setting (lr) | strategy | finished | final mel loss, median [min, max] "
        "| mel-weight adjustments (median) | spike cuts (median) | final mel weight (median) "
        "| first NaN/Inf step (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.setting} ({r.learning_rate:g}) | {r.strategy} | {r.finished}/{r.runs} "
            f"| {_mel(r)} | {_number(r.adjustments_median, '.0f')} "
            f"| {_number(r.spikes_median, '.0f')} | {_number(r.final_weight_median, '.2f')} "
            f"| {_number(r.first_failure_median, '.0f')} |"
        )
    return "\n".join(lines)


def stable_rate_table(groups: Mapping[str, Group]) -> str:
    """Largest stable learning rate per strategy, with finished / median mel at every rate."""
    rates = next(iter(groups.values())).configs["learning_rate"]
    lines = [
        "| strategy | largest stable lr | "
        + " | ".join(f"lr {rate:g}" for rate in rates)
        + " | compile s | run s |",
        "|---|---|" + "---|" * len(rates) + "---|---|",
    ]
    done: dict[str, Group] = {}
    for strategy, group in groups.items():
        rows = grid_rows(group)
        largest = largest_stable_rate(rows)
        twin = same_runs(strategy, done)
        done[strategy] = group
        name = strategy if twin is None else f"{strategy} (the runs of {twin})"
        cells = []
        for row in rows:
            cell = f"{row.finished}/{row.runs}, {_number(row.mel_median, '.2f')}"
            cells.append(f"**{cell}**" if is_stable(row) else cell)
        top = "≥ " if largest == rows[-1].learning_rate else ""  # the grid's top is stable
        lines.append(
            f"| {name} | {top}{_number(largest, 'g')} | "
            + " | ".join(cells)
            + f" | {group.compile_s:.1f} | {group.run_s:.1f} |"
        )
    return "\n".join(lines)


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Block means over ``width`` steps along the last axis (a NaN stays NaN)."""
    usable = x.shape[-1] // width * width
    return x[..., :usable].reshape(*x.shape[:-1], -1, width).mean(-1)


def figure(
    groups: Mapping[str, Group],
    path: pathlib.Path,
    settings: Mapping[str, float] | None = None,
    title: str = "",
) -> pathlib.Path:
    """Training mel loss and mel weight of every run at each setting, one column per strategy;
    below, finished runs and median held-out mel loss against the learning rate (when the
    groups hold more than the settings' rates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = SETTINGS if settings is None else settings
    # one column for strategies that are the same runs, named after all of them
    labels: dict[str, str] = {}
    for strategy in groups:
        twin = same_runs(strategy, labels)
        if twin is None:
            labels[strategy] = strategy
        else:
            labels[twin] += f" = {strategy}"
    strategies = list(labels)
    rates = next(iter(groups.values())).configs["learning_rate"]
    with_grid = len(rates) > len(settings)
    n_rows = 2 * len(settings)
    fig = plt.figure(
        figsize=(3.2 * len(strategies), 2.3 * n_rows + (3.2 if with_grid else 0)),
        layout="constrained",
    )
    top, bottom = (
        fig.subfigures(2, 1, height_ratios=[2.3 * n_rows, 3.2]) if with_grid else (fig, None)
    )
    axes = top.subplots(n_rows, len(strategies), sharex=True, squeeze=False)
    for row, (setting, rate) in enumerate(settings.items()):
        for col, strategy in enumerate(strategies):
            result = groups[strategy].at_rate(rate)
            mel = result.trace.losses["mel"]  # (seeds, steps)
            weight = result.trace.mel_weight
            steps = mel.shape[-1]
            width = max(1, steps // 150)
            x = (np.arange(steps // width) + 0.5) * width
            ax_loss, ax_weight = axes[2 * row, col], axes[2 * row + 1, col]
            for seed in range(mel.shape[0]):
                color = "C0" if result.finished[seed] else "C3"
                ax_loss.plot(x, smooth(mel[seed], width), color=color, lw=0.7, alpha=0.7)
                ax_weight.plot(np.arange(steps), weight[seed], color=color, lw=0.7, alpha=0.7)
                bad = result.first_nonfinite[seed]
                if bad >= 0:
                    ax_loss.axvline(bad, color="C3", lw=0.5, ls=":")
            ax_loss.set_yscale("log")
            ax_loss.set_ylim(0.3, 5.0)  # a diverging run leaves through the top
            ax_weight.set_yscale("log")
            done = int(result.finished.sum())
            ax_loss.set_title(
                f"{labels[strategy]}, {setting} (lr {rate:g}):\n"
                f"{done}/{result.finished.size} finished",
                fontsize=9,
            )
            if col == 0:
                ax_loss.set_ylabel("train mel loss")
                ax_weight.set_ylabel("mel weight")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    top.suptitle(title or "blue: finished runs; red: runs that hit a NaN/Inf loss (dotted: step)")
    if bottom is not None:
        ax_done, ax_mel = bottom.subplots(1, 2)
        for i, strategy in enumerate(strategies):
            rows = grid_rows(groups[strategy])
            style = dict(marker="o", ms=3, color=f"C{i}", label=labels[strategy])
            ax_done.plot(rates, [r.finished / r.runs for r in rows], **style)
            ax_mel.plot(rates, [r.mel_median for r in rows], **style)
        ax_done.axhline(STABLE_FINISHED, color="k", lw=0.6, ls=":")
        ax_mel.axhline(STABLE_MEL, color="k", lw=0.6, ls=":")
        ax_done.set_ylabel("finished runs (share)")
        ax_mel.set_ylabel("median held-out mel loss (finished runs)")
        for ax in (ax_done, ax_mel):
            ax.set_xlabel("learning rate")
        ax_mel.legend(fontsize=8, ncol=2)
        bottom.suptitle(
            f"stable (dotted): at least {STABLE_FINISHED:.0%} finished and median mel at most "
            f"{STABLE_MEL:g}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def sweep(
    optimizer: str = OPTIMIZER,
    seeds: Sequence[int] = CALIBRATION_SEEDS,
    steps: int = STEPS,
) -> str:
    """Fixed weights only, on calibration seeds: finished runs and final mel loss per rate."""
    group = run_strategy("fixed", SWEEP_RATES[optimizer], seeds, steps, optimizer)
    return markdown_table(grid_rows(group))


def sweep_mel(seeds: Sequence[int] = CALIBRATION_SEEDS, steps: int = STEPS) -> tuple[str, float]:
    """Fixed mel weights at the comfortable rate on calibration seeds; the table and the best.

    The best is the mel weight with the lowest median held-out mel loss among those whose runs
    all finished.
    """
    rate = SETTINGS["comfortable"]
    group = run_strategy("fixed", [rate] * len(MEL_SWEEP), seeds, steps, mel_weight=list(MEL_SWEEP))
    rows = [
        summarise("comfortable", rate, f"fixed, mel {mel:g}", group.at(i))
        for i, mel in enumerate(MEL_SWEEP)
    ]
    complete = [(row.mel_median, mel) for row, mel in zip(rows, MEL_SWEEP, strict=True)]
    complete = [pair for pair, row in zip(complete, rows, strict=True) if row.finished == row.runs]
    return markdown_table(rows), min(complete)[1]


def sweep_spike(
    strategies: Sequence[str] = tts_model.ADAPTIVE,
    seeds: Sequence[int] = CALIBRATION_SEEDS,
    steps: int = STEPS,
    rates: Sequence[float] = SPIKE_SWEEP_RATES,
) -> str:
    """The spike-guard settings on calibration seeds: largest stable rate per rule and setting."""
    pairs = list(itertools.product(SPIKE_THRESHOLDS, SPIKE_FACTORS))
    configs = list(itertools.product(pairs, rates))
    lines = [
        "| strategy | spike threshold | spike factor | largest stable lr | "
        + " | ".join(f"lr {rate:g}" for rate in rates)
        + " |",
        "|---|---|---|---|" + "---|" * len(rates),
    ]
    for strategy in strategies:
        group = run_strategy(
            strategy,
            [rate for _, rate in configs],
            seeds,
            steps,
            spike_threshold=[t for (t, _), _ in configs],
            spike_factor=[f for (_, f), _ in configs],
        )
        for p, (threshold, factor) in enumerate(pairs):
            rows = [
                summarise(f"lr {rate:g}", rate, strategy, group.at(p * len(rates) + i))
                for i, rate in enumerate(rates)
            ]
            cells = [f"{r.finished}/{r.runs}, {_number(r.mel_median, '.3f')}" for r in rows]
            lines.append(
                f"| {strategy} | {threshold:g} | {factor:g} | "
                f"{_number(largest_stable_rate(rows), 'g')} | " + " | ".join(cells) + " |"
            )
        print(f"{strategy}: compile {group.compile_s:.0f} s, run {group.run_s:.0f} s", flush=True)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="evaluation seeds 0..n-1")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results"))
    parser.add_argument(
        "--strategies", nargs="+", default=list(tts_model.STRATEGIES), help="default: all"
    )
    commands = parser.add_mutually_exclusive_group()
    commands.add_argument(
        "--sweep",
        action="store_true",
        help="the learning-rate sweep (fixed weights, calibration seeds) behind SETTINGS",
    )
    commands.add_argument(
        "--sweep-mel",
        action="store_true",
        help="the fixed mel-weight sweep (calibration seeds, comfortable rate) behind best_fixed",
    )
    commands.add_argument(
        "--sweep-spike",
        action="store_true",
        help="spike-guard settings of seed and relative (calibration seeds)",
    )
    parser.add_argument("--optimizer", default=OPTIMIZER, choices=sorted(tts_model.OPTIMIZERS))
    parser.add_argument(
        "--spike-threshold",
        type=float,
        help=f"spike guard of seed and relative (default {tts_model.SPIKE_THRESHOLD}); "
        "the outputs are named after it",
    )
    parser.add_argument(
        "--spike-factor",
        type=float,
        help=f"spike guard of seed and relative (default {tts_model.SPIKE_FACTOR}); "
        "the outputs are named after it",
    )
    parser.add_argument(
        "--raw",
        type=pathlib.Path,
        help="a pickle of every run (default: none); with --tables-only, read instead of written",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="rewrite the table and figure from --raw, without training",
    )
    args = parser.parse_args(argv)
    if args.tables_only and args.raw is None:
        parser.error("--tables-only reads the runs from --raw")

    def write(name: str, text: str) -> None:
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"written to {path}")

    start = time.perf_counter()
    if args.sweep:
        table = sweep(args.optimizer, steps=args.steps)
        print(table)
        write(f"stability_sweep_{args.optimizer}.md", table)
        return
    if args.sweep_mel:
        table, best = sweep_mel(steps=args.steps)
        text = (
            f"`python -m benchmarks.stability --sweep-mel`: fixed weights, mel weight in "
            f"{MEL_SWEEP}, lr {SETTINGS['comfortable']} (comfortable), calibration seeds "
            f"{CALIBRATION_SEEDS[0]}-{CALIBRATION_SEEDS[-1]}, {args.steps} steps, total "
            f"{time.perf_counter() - start:.0f} s. Best (lowest median held-out mel, every "
            f"run finished): **mel {best:g}** (``tts_model.BEST_FIXED_MEL``).\n\n{table}"
        )
        print(text)
        write("stability_sweep_mel.md", text)
        return
    if args.sweep_spike:
        table = sweep_spike(steps=args.steps)
        text = (
            f"`python -m benchmarks.stability --sweep-spike`: calibration seeds "
            f"{CALIBRATION_SEEDS[0]}-{CALIBRATION_SEEDS[-1]}, {args.steps} steps, total "
            f"{time.perf_counter() - start:.0f} s; cells: finished runs, median held-out mel "
            f"loss. Stable: at least {STABLE_FINISHED:.0%} finished and median mel at most "
            f"{STABLE_MEL:g}.\n\n{table}"
        )
        print(text)
        write("stability_sweep_spike.md", text)
        return

    from tqdm import tqdm

    seeds = tuple(range(args.seeds))
    spike = {
        name: value
        for name, value in (
            ("spike_threshold", args.spike_threshold),
            ("spike_factor", args.spike_factor),
        )
        if value is not None
    }
    name = "stability"
    command = f"python -m benchmarks.stability --steps {args.steps} --seeds {args.seeds}"
    for key, value in spike.items():
        name += f"_{key.replace('_', '')}{value:g}"
        command += f" --{key.replace('_', '-')} {value:g}"
    if args.tables_only:
        with args.raw.open("rb") as f:
            raw, elapsed = pickle.load(f)
        groups = {strategy: Group(*fields) for strategy, fields in raw.items()}
    else:
        total = len(args.strategies) * len(GRID) * len(seeds) * args.steps
        with tqdm(total=total, unit="step", unit_scale=True, desc="training") as bar:
            groups = run_benchmark(
                args.strategies, GRID, seeds, args.steps, args.optimizer, bar, spike
            )
        elapsed = time.perf_counter() - start
        if args.raw is not None:
            args.raw.parent.mkdir(parents=True, exist_ok=True)
            with args.raw.open("wb") as f:  # plain tuples: loadable wherever Group is
                pickle.dump(({k: tuple(g) for k, g in groups.items()}, elapsed), f)
    table = markdown_table(setting_rows(groups))
    rates = stable_rate_table(groups)
    print(table, rates, sep="\n\n")
    spiked = ", ".join(f"{key} {value:g}" for key, value in spike.items())
    header = (
        f"`{command}`{f' ({spiked} for seed and relative)' if spike else ''}: "
        f"{len(seeds)} seeds x {args.steps} steps per strategy and learning rate, optimizer "
        f"{args.optimizer} (momentum 0.9), {jax.device_count()} {jax.default_backend()} "
        f"device(s), total {elapsed:.0f} s.\n\n"
    )
    stable = (
        f"\n\nLargest stable learning rate: the largest rate of the grid at which at least "
        f"{STABLE_FINISHED:.0%} of the runs finish and their median held-out mel loss is at most "
        f"{STABLE_MEL:g} (such cells in bold); cells: finished runs, median held-out mel loss of "
        f"the finished runs. Compile and run times are per strategy, for the whole grid "
        f"(fixed-weight strategies share one compile).\n\n"
    )
    write(f"{name}.md", header + table + stable + rates)
    print(f"figure written to {figure(groups, args.out / f'{name}.png')}")


if __name__ == "__main__":
    main()
