"""The ``speech`` problem: the largest stable learning rate on real (eSpeak NG) speech.

Issue 25, item 2. A TTS model of about 0.32M parameters (``benchmarks/speech_model.py``)
trained with Adam on 80-bin log-mel frames of speech synthesised by eSpeak NG
(``benchmarks/speech_data.py``), under these arms, as a user would compare them:

- ``fixed base``: the seed's base weights, fixed (mel 2.5, stop 1, attention 0.1, duration 0.1);
- ``default``: ``ao.stable_weights(base, adapt="mel")``, the library's default controller;
- ``fixed floor``: the mel weight fixed at its floor, 0.4 x base (1.0), the others at base;
- ``SCREEN_ARMS``: the methods the screen (``tts_adam``) ranks best that weight losses only,
  from the base weights under their recommended guards, as the suite builds them
  (:func:`benchmarks.harness.weighting_of_label`). PCD, the screen's third, needs per-term
  gradients and is confirmed on ``speech_adam`` (:mod:`benchmarks.profiles`) only.

Every run trains until the held-out (validation) mel loss stops improving: it is evaluated every
``EVAL_EVERY`` steps and stops after ``PATIENCE`` evaluations without a new best (or at
``MAX_STEPS``); its record is the test split's mel loss at the best validation evaluation.
A run is **stable** when no loss went non-finite before it stopped and its best validation mel
is below ``COLLAPSE`` x the validation mel of predicting the mean frame (zeros after
normalisation), i.e. it learned speech rather than the average. An arm's largest stable
learning rate is the largest rate of ``RATES`` at which every seed is stable.

Commands (one each, same commit):

- ``python -m benchmarks.speech build`` synthesises and caches the data set in ``cache/speech``;
- ``python -m benchmarks.speech run`` trains every arm of ``ARMS`` x rate x seed, writes
  ``results/speech.json`` (every seed's record, command, commit, machine) and
  ``results/speech.md`` (generated from the json);
- ``python -m benchmarks.speech run --arms dwa+guards relobralo+guards --rates 0.03 0.1
  --merge`` adds arms (at the rates given) to the committed json, with their own command,
  commit and time under ``additions``;
- ``python -m benchmarks.speech figure`` draws ``results/speech.png`` (one test utterance's
  target and predicted mel, teacher-forced, from the fixed base arm at its best rate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao
from benchmarks import speech_data, speech_model, stats
from benchmarks.default_choice import commit, machine
from benchmarks.speech_model import BASE_WEIGHTS, TERMS, Batch

RATES = (3e-3, 1e-2, 3e-2, 1e-1)
SEEDS = tuple(range(5))
BATCH = 4
EVAL_EVERY = 50
PATIENCE = 3
MAX_STEPS = 400
COLLAPSE = 0.9
FLOOR = 0.4
SCALE_GROWTH = 200  # clean steps before the fp16 loss scale doubles
OUT = pathlib.Path("results")
ARMS = ("fixed base", "default", "fixed floor")
SCREEN_ARMS = ("dwa+guards", "relobralo+guards")
ALL_ARMS = ARMS + SCREEN_ARMS
FIXED_ARMS = ("fixed base", "fixed floor")


def weighting_of(arm: str) -> ao.LossWeighting | None:
    """The arm's weighting, or None for fixed weights (:func:`fixed_weights`)."""
    if arm not in ALL_ARMS:
        raise ValueError(f"unknown arm {arm!r}; the arms are {ALL_ARMS}")
    if arm == "default":
        return ao.stable_weights(BASE_WEIGHTS, adapt="mel")
    if arm in SCREEN_ARMS:
        from benchmarks import harness  # the suite's arms, built as the screen built them

        made = harness.weighting_of_label(arm, dict(BASE_WEIGHTS), main="mel")
        assert isinstance(made, ao.LossWeighting), arm
        return made
    return None


def fixed_weights(arm: str) -> dict[str, float]:
    if arm == "fixed floor":
        return {**BASE_WEIGHTS, "mel": FLOOR * BASE_WEIGHTS["mel"]}
    return dict(BASE_WEIGHTS)


def mean_frame_mel(batch: Batch) -> float:
    """The validation mel loss of predicting zeros (the mean normalised frame)."""
    mask = np.arange(batch.mel.shape[1])[None] < np.asarray(batch.n_frames)[:, None]
    mel = np.asarray(batch.mel)[mask]
    return float((np.abs(mel).sum() + np.square(mel).sum()) / mel.size)


def _weights_table() -> jnp.ndarray:
    """Each arm's fixed weights, one row per arm of ALL_ARMS (an adaptive arm's row unused)."""
    return jnp.asarray([[fixed_weights(a)[t] for t in TERMS] for a in ALL_ARMS], jnp.float32)


def make_train(
    model: speech_model.SpeechTTS,
    batches: Mapping[str, Batch],
    *,
    adaptive: str = "default",
    max_steps: int = MAX_STEPS,
    eval_every: int = EVAL_EVERY,
    patience: int = PATIENCE,
    batch_size: int = BATCH,
    precision: str = "fp32",
):
    """A jitted ``train(arms, seeds, rates)``: each (arm index into ALL_ARMS, seed, rate)
    triple trained with Adam to early stopping, vmapped. Returns per-run arrays.

    ``adaptive`` names the one arm of the call with a weighting (``"default"`` or one of
    ``SCREEN_ARMS``); every other index must be a fixed arm's.

    ``precision="fp16"`` (with a float16 ``model``): float32 parameters, float16 compute, and
    dynamic loss scaling (start ``2**15``, halved and the step skipped when a gradient
    overflows, doubled after ``SCALE_GROWTH`` clean steps); the adaptive arm's weighting is
    then wrapped in ``ao.loss_scaled``, told of each overflow.
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    fp16 = precision == "fp16"
    weighting = weighting_of(adaptive)
    if weighting is None:
        raise ValueError(f"adaptive must be an arm with a weighting, got {adaptive!r}")
    if fp16:
        weighting = ao.loss_scaled(weighting)
    adaptive_index = ALL_ARMS.index(adaptive)
    table = _weights_table()
    train, val, test = batches["train"], batches["validation"], batches["test"]
    n_train = train.tokens.shape[0]
    n_evals = max_steps // eval_every

    def eval_mel(params, batch):
        return speech_model.losses_of(model, params, batch)["mel"]

    def one(arm, seed, rate):
        k_init, k_data = jax.random.split(jax.random.key(seed))
        params = speech_model.init_params(model, k_init, train)
        tx = optax.chain(optax.scale_by_adam(), optax.scale(-rate))
        opt_state = tx.init(params)
        scaler = (jnp.float32(2.0**15 if fp16 else 1.0), jnp.int32(0))
        wstate = (weighting.init(), *scaler)  # the weighting's state and the loss scaler's
        is_adaptive = arm == adaptive_index

        def step(carry, i):
            params, opt_state, (wstate, scale, good), finite = carry
            idx = jax.random.randint(jax.random.fold_in(k_data, i), (batch_size,), 0, n_train)
            batch = jax.tree.map(lambda x: x[idx], train)
            weights = {
                t: jnp.where(is_adaptive, wstate.weights[t], table[arm, j])
                for j, t in enumerate(TERMS)
            }

            def loss_fn(p):
                losses = speech_model.losses_of(model, p, batch)
                total = ao.weighted_sum(losses, weights)
                return total * scale, (total, losses)

            (_, (total, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            grads = jax.tree.map(lambda g: g / scale, grads)
            if fp16:
                grads_finite = jnp.all(
                    jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
                )
                _, wstate = weighting.update(
                    losses, wstate, grad_norms=optax.tree.norm(grads), grads_finite=grads_finite
                )
                updates, new_opt = tx.update(grads, opt_state, params)
                new_params = optax.apply_updates(params, updates)
                params, opt_state = optax.tree.where(
                    grads_finite, (new_params, new_opt), (params, opt_state)
                )
                good = jnp.where(grads_finite, good + 1, 0)
                grow = good >= SCALE_GROWTH
                scale = jnp.where(grads_finite, jnp.where(grow, 2 * scale, scale), scale / 2)
                good = jnp.where(grow, 0, good)
            else:
                _, wstate = weighting.update(losses, wstate, grad_norms=optax.tree.norm(grads))
                updates, opt_state = tx.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
            carry = (params, opt_state, (wstate, scale, good), finite & jnp.isfinite(total))
            return carry, weights["mel"]

        def chunk(state):
            params, opt_state, wstate, finite, best_val, best_test, since, evals, hist, whist = (
                state
            )
            (params, opt_state, wstate, finite), mel_w = jax.lax.scan(
                step,
                (params, opt_state, wstate, finite),
                evals * eval_every + jnp.arange(eval_every),
            )
            v = eval_mel(params, val)
            t = eval_mel(params, test)
            finite = finite & jnp.isfinite(v)
            better = finite & (v < best_val)
            return (
                params,
                opt_state,
                wstate,
                finite,
                jnp.where(better, v, best_val),
                jnp.where(better, t, best_test),
                jnp.where(better, 0, since + 1),
                evals + 1,
                hist.at[evals].set(jnp.where(finite, v, jnp.inf)),
                whist.at[evals].set(mel_w.mean()),
            )

        def going(state):
            finite, since, evals = state[3], state[6], state[7]
            return finite & (since < patience) & (evals < n_evals)

        nan = jnp.full((n_evals,), jnp.nan)
        init = (params, opt_state, wstate, jnp.array(True), jnp.inf, jnp.inf, 0, 0, nan, nan)
        final = jax.lax.while_loop(going, chunk, init)
        return {
            "finite": final[3],
            "best_val_mel": final[4],
            "test_mel": final[5],
            "stopped_early": final[6] >= patience,
            "steps": final[7] * eval_every,
            "val_history": final[8],
            "mel_weight_history": final[9],
        }

    return jax.jit(jax.vmap(one))


def trained_params(model, batches, arm: str, seed: int, rate: float, steps: int):
    """One run's parameters after ``steps`` steps (for the figure; no early stopping)."""
    weighting = weighting_of(arm)
    fixed = fixed_weights(arm)
    train = batches["train"]
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = speech_model.init_params(model, k_init, train)
    tx = optax.chain(optax.scale_by_adam(), optax.scale(-rate))

    @jax.jit
    def run(params):
        def step(carry, i):
            params, opt_state, wstate = carry
            idx = jax.random.randint(
                jax.random.fold_in(k_data, i), (BATCH,), 0, train.tokens.shape[0]
            )
            batch = jax.tree.map(lambda x: x[idx], train)
            weights = wstate.weights if wstate is not None else fixed

            def loss_fn(p):
                losses = speech_model.losses_of(model, p, batch)
                return ao.weighted_sum(losses, weights), losses

            (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            if weighting is not None:
                _, wstate = weighting.update(losses, wstate, grad_norms=optax.tree.norm(grads))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, wstate), None

        wstate = weighting.init() if weighting is not None else None
        (params, _, _), _ = jax.lax.scan(step, (params, tx.init(params), wstate), jnp.arange(steps))
        return params

    return run(params)


def stable(run_: Mapping, result: Mapping) -> bool:
    """The module docstring's stability: finite, and learned more than the mean frame."""
    best = run_["best_val_mel"]
    return bool(
        run_["finite"]
        and best is not None
        and best < result["settings"]["collapse"] * result["mean_frame_val_mel"]
    )


def scores(result: Mapping, arm: str, rate: float) -> np.ndarray:
    """The arm's test mel per seed at ``rate`` (in seed order); ``+inf`` for an unstable run."""
    runs = sorted(
        (r for r in result["runs"] if r["arm"] == arm and r["rate"] == rate),
        key=lambda r: r["seed"],
    )
    return np.asarray([r["test_mel"] if stable(r, result) else np.inf for r in runs], float)


def arms_of(result: Mapping) -> list[str]:
    """The arms of the first run (its ``settings``) and of every addition, in ALL_ARMS order."""
    added = {a for addition in result.get("additions", []) for a in addition["arms"]}
    return [a for a in ALL_ARMS if a in result["settings"]["arms"] or a in added]


def rates_run(result: Mapping, arm: str) -> list[float]:
    """The rates at which the arm has runs, ascending."""
    return sorted({r["rate"] for r in result["runs"] if r["arm"] == arm})


def largest_stable_rate(result: Mapping, arm: str) -> float | None:
    """The largest rate run at which every seed of the arm is stable (None: none is)."""
    ok = [rate for rate in rates_run(result, arm) if np.all(np.isfinite(scores(result, arm, rate)))]
    return max(ok) if ok else None


def summary(result: Mapping) -> dict:
    """Everything the report states, computed from the json alone."""
    cells = []
    for rate in sorted({r["rate"] for r in result["runs"]}):
        reference = scores(result, "fixed base", rate)
        for arm in arms_of(result):
            runs = [r for r in result["runs"] if r["arm"] == arm and r["rate"] == rate]
            if not runs:
                continue
            s = scores(result, arm, rate)
            finite = s[np.isfinite(s)]
            cell = {
                "arm": arm,
                "rate": rate,
                "seeds": len(runs),
                "stable": int(np.isfinite(s).sum()),
                "nonfinite": sum(not r["finite"] for r in runs),
                "median_test_mel": float(np.median(finite)) if finite.size else None,
                "min_test_mel": float(finite.min()) if finite.size else None,
                "max_test_mel": float(finite.max()) if finite.size else None,
                "median_steps": float(np.median([r["steps"] for r in runs])),
                "stopped_early": sum(r["stopped_early"] for r in runs),
                "mel_weight_last": float(np.median([_last(r["mel_weight_history"]) for r in runs])),
            }
            if arm != "fixed base" and np.isfinite(np.median(reference)):
                regret = stats.paired_regret(s, reference, relative=True)
                margin = stats.margin(reference[np.isfinite(reference)], relative=True)
                cell["regret"] = list(regret)
                cell["call"] = stats.call(regret, margin)
            cells.append(cell)
    return {
        "largest_stable_rate": {arm: largest_stable_rate(result, arm) for arm in arms_of(result)},
        "cells": cells,
    }


def _last(history: Sequence[float | None]) -> float:
    values = [v for v in history if v is not None]
    return values[-1] if values else math.nan


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _rates_text(done: Sequence[float], asked: Sequence[float]) -> str:
    """``"0.003, 0.01"``, and the rates asked for but not run, if any."""
    text = ", ".join(format(r, "g") for r in done)
    if list(done) != list(asked):
        text += f" (of {', '.join(format(r, 'g') for r in asked)}: the rest not run)"
    return text


def tables(result: Mapping) -> list[str]:
    """The largest stable rate per arm and every cell's numbers (report and docs page)."""
    s = summary(result)
    st = result["settings"]
    done = result["rates_done"]
    lines = [
        "## Largest stable learning rate",
        "",
        "| arm | largest stable lr (every seed stable) | rates run |",
        "|---|---|---|",
    ]
    for arm, rate in s["largest_stable_rate"].items():
        run = ", ".join(format(r, "g") for r in rates_run(result, arm))
        lines.append(f"| {arm} | {_f(rate, 'g')} | {run} |")
    if done != st["rates"]:
        lines += ["", f"The first run's rates: {_rates_text(done, st['rates'])}."]
    lines += [
        "",
        "An arm's largest stable lr is over the rates it ran; a rate above it was run and "
        "not every seed was stable there, unless it is the largest rate run.",
        "",
        "## Every cell",
        "",
        "Test mel (L1 + L2 of normalised log-mel, lower is better) over the stable seeds; the "
        "regret is the median per-seed difference to the fixed base weights on the same seeds, "
        "relative to their median, with its 95 % bootstrap interval (`benchmarks/stats.py`; an "
        "unstable run loses to a stable one), and the call against the base arm's seed noise.",
        "",
        "| lr | arm | stable | non-finite | test mel, median [min, max] | steps (median) | "
        "stopped early | mel weight at the end (median) | regret vs fixed base | call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in s["cells"]:
        regret = c.get("regret")
        regret_text = (
            "- (the base arm's median run unstable)"
            if regret is None and c["arm"] != "fixed base"
            else "-"
            if regret is None
            else f"{regret[0]:+.3f} [{regret[1]:+.3f}, {regret[2]:+.3f}]"
        )
        lines.append(
            f"| {c['rate']:g} | {c['arm']} | {c['stable']}/{c['seeds']} | {c['nonfinite']} | "
            f"{_f(c['median_test_mel'])} [{_f(c['min_test_mel'])}, {_f(c['max_test_mel'])}] | "
            f"{c['median_steps']:g} | {c['stopped_early']}/{c['seeds']} | "
            f"{c['mel_weight_last']:.2f} | {regret_text} | {c.get('call', '-')} |"
        )
    return lines


DOCS_PAGE = pathlib.Path("docs/guides/speech.md")
BEGIN = "<!-- generated from results/speech.json (python -m benchmarks.speech report) -->"
END = "<!-- end of generated block: speech -->"


def docs_block(result: Mapping) -> str:
    """The docs page's generated block: the report's tables, between two markers."""
    return "\n".join([BEGIN, "", *tables(result)[2:], "", END])


def write_docs_block(result: Mapping, page: pathlib.Path = DOCS_PAGE) -> None:
    """Rewrite the generated block of the docs page (between BEGIN and END) from the json."""
    text = page.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(head + docs_block(result) + tail)


def report(result: Mapping) -> str:
    """``results/speech.md``, generated from ``results/speech.json`` alone."""
    st, data = result["settings"], result["data"]
    lines = [
        "# Speech: the largest stable learning rate on eSpeak NG speech"
        + ("" if st.get("precision", "fp32") == "fp32" else f", {st['precision']}"),
        "",
        f"`{result['command']}` at commit `{result['commit']}`, {result['elapsed_s']:.0f} s "
        f"(load average {result['load_average_at_start']:.1f} at the start). "
        f"Machine: {result['machine']}. What is run and how a run is judged: "
        "`benchmarks/speech.py`.",
        "",
        f"Data: {data['utterances']} utterances ({data['seconds_of_speech']:.0f} s of speech, "
        f"split {data['split']['train']} / {data['split']['validation']} / "
        f"{data['split']['test']} train / validation / test), built in {data['build_s']:.0f} s; "
        f"{data['vocab']} phoneme tokens, up to {data['max_tokens']} per utterance and "
        f"{data['max_frames']} frames. Model: {result['parameters']:,} parameters, "
        f"{st['reduction_factor']} frames per decoder step. Adam, batch {st['batch']}, "
        f"evaluation every {st['eval_every']} steps, early stopping after {st['patience']} "
        f"evaluations without a better validation mel, at most {st['max_steps']} steps; "
        f"seeds {st['seeds']}. A run is stable when its losses stayed finite and its best "
        f"validation mel is below {st['collapse']} x that of the mean frame "
        f"({result['mean_frame_val_mel']:.3f}); the test mel is the test split's at the best "
        "validation evaluation.",
        "",
        *(
            f"Added: `{a['command']}` at commit `{a['commit']}`, {a['elapsed_s']:.0f} s (load "
            f"average {a['load_average_at_start']:.1f} at the start): {', '.join(a['arms'])} at "
            f"lr {_rates_text(a['rates_done'], a['rates'])}."
            for a in result.get("additions", [])
        ),
        *([""] if result.get("additions") else []),
        "Precision: " + PRECISION[st.get("precision", "fp32")],
        "",
        "Reduced, to fit 2 shared CPU cores: " + REDUCED,
        "",
        *tables(result),
    ]
    lines += [
        "",
        "Figure: `results/speech.png`, one test utterance's target and predicted mel "
        "(`python -m benchmarks.speech figure`).",
    ]
    return "\n".join(lines) + "\n"


REDUCED = (
    "a 0.32M-parameter model (the floor of the 0.3M-1M range: encoder convolutions of kernel "
    "3, decoder width 64, 4 frames per decoder step), batch 4, at most 400 steps per run "
    "(the column 'stopped early' counts the runs that early stopping ended before that "
    "cap), four learning rates (fewer where the rates run say so), 5 seeds."
)
PRECISION = {
    "fp32": "float32 throughout (float16 with loss scaling: `results/speech_fp16.md` where "
    "it was run).",
    "fp16": "float16 compute with float32 parameters and dynamic loss scaling (an overflowing "
    "step skipped and the scale halved); an adaptive arm's weighting under `ao.loss_scaled`.",
}


def figure(out: pathlib.Path = OUT, cache: pathlib.Path = speech_data.CACHE) -> pathlib.Path:
    """``speech.png``: a test utterance's target and teacher-forced predicted mel, from the
    fixed base arm's seed 0 at its best rate (lowest median test mel), retrained to its best
    evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads((out / "speech.json").read_text())
    arm = "fixed base"
    medians = {rate: float(np.median(scores(result, arm, rate))) for rate in result["rates_done"]}
    rate = min(medians, key=lambda r: medians[r])
    if not math.isfinite(medians[rate]):
        raise RuntimeError("the fixed base arm has no rate where every seed is stable: no figure")
    record = next(r for r in result["runs"] if r["arm"] == arm and r["rate"] == rate)
    history = [np.inf if v is None else v for v in record["val_history"]]
    steps = (int(np.nanargmin(np.where(np.isnan(history), np.inf, history))) + 1) * result[
        "settings"
    ]["eval_every"]
    model, batches, meta = load_problem(cache)
    params = trained_params(model, batches, arm, record["seed"], rate, steps)
    test = batches["test"]
    i = 0
    one = jax.tree.map(lambda x: x[i : i + 1], test)
    mel, *_ = model.apply(params, one.tokens, speech_model.previous_steps(one.mel))
    n = int(one.n_frames[0])
    text = meta["texts"][meta["split"]["train"] + meta["split"]["validation"] + i]
    target = np.asarray(one.mel[0, :n]) * meta["mel_std"] + meta["mel_mean"]
    predicted = np.asarray(mel[0, :n]) * meta["mel_std"] + meta["mel_mean"]
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    lo, hi = float(target.min()), float(target.max())
    for ax, m, title in ((axes[0], target, "target"), (axes[1], predicted, "predicted")):
        image = ax.imshow(m.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
        ax.set_ylabel("mel bin")
        ax.set_title(f'{title}: "{text}"', fontsize=9)
    axes[1].set_xlabel(f"frame ({speech_data.HOP} samples at {speech_data.SAMPLE_RATE} Hz)")
    fig.colorbar(image, ax=axes, label="log mel")
    fig.suptitle(
        f"{arm} weights, lr {rate:g}, seed {record['seed']}, {steps} steps (teacher-forced)",
        fontsize=10,
    )
    path = out / "speech.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_problem(cache: pathlib.Path = speech_data.CACHE, dtype: Any = jnp.float32):
    """``(model, batches, meta)`` from the cached data set."""
    arrays, meta = speech_data.load(cache)
    batches = speech_model.to_batches(arrays, meta["split"])
    model = speech_model.make_model(len(meta["vocab"]) + 2, batches, dtype)
    return model, batches, meta


def groups_of(arms: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The compiled calls ``run`` makes: ``(adaptive arm, arms of the call)``; the fixed arms
    share the first adaptive arm's call (the default's, unused, when none is asked for)."""
    unknown = [a for a in arms if a not in ALL_ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; the arms are {ALL_ARMS}")
    adaptive = [a for a in ALL_ARMS if a in arms and a not in FIXED_ARMS]
    first = [a for a in ALL_ARMS if a in arms and (a in FIXED_ARMS or a in adaptive[:1])]
    return [((adaptive or ["default"])[0], first)] + [(a, [a]) for a in adaptive[1:]]


MERGED_SETTINGS = ("seeds", "batch", "eval_every", "patience", "max_steps", "collapse")


def run(
    *,
    rates: Sequence[float] = RATES,
    seeds: Sequence[int] = SEEDS,
    max_steps: int = MAX_STEPS,
    out: pathlib.Path = OUT,
    cache: pathlib.Path = speech_data.CACHE,
    command: str = "python -m benchmarks.speech run",
    precision: str = "fp32",
    arms: Sequence[str] = ARMS,
    merge: bool = False,
) -> dict:
    """Every arm x rate x seed (one vmapped call per rate and group of :func:`groups_of`,
    ascending rates); the json is rewritten after each rate, so that an interrupted run keeps
    what it finished.

    ``merge``: add the arms' runs to the committed json of the same precision (their earlier
    runs at these rates replaced), recorded under ``additions`` with this command and commit;
    the settings must match the committed ones.
    """
    start = time.perf_counter()
    dtype = jnp.float16 if precision == "fp16" else jnp.float32
    model, batches, meta = load_problem(cache, dtype)
    params = speech_model.init_params(model, jax.random.key(0), batches["train"])
    groups = groups_of(arms)
    trains = [
        make_train(model, batches, adaptive=a, max_steps=max_steps, precision=precision)
        for a, _ in groups
    ]
    name = "speech.json" if precision == "fp32" else f"speech_{precision}.json"
    settings: dict[str, Any] = {
        "arms": [a for a in ALL_ARMS if a in arms],
        "rates": list(rates),
        "seeds": list(seeds),
        "batch": BATCH,
        "eval_every": EVAL_EVERY,
        "patience": PATIENCE,
        "max_steps": max_steps,
        "collapse": COLLAPSE,
        "reduction_factor": speech_model.R,
        "optimizer": "adam (optax.scale_by_adam, b1 0.9, b2 0.999), no clipping",
        "precision": precision,
    }
    record: dict[str, Any] = {
        "command": command,
        "commit": commit(),
        "machine": machine(),
        "load_average_at_start": os.getloadavg()[0],
    }
    if merge:
        result = json.loads((out / name).read_text())
        differ = [k for k in MERGED_SETTINGS if result["settings"][k] != settings[k]]
        if differ:
            raise ValueError(f"--merge: settings {differ} differ from the committed {name}'s")
        asked = set(settings["arms"])
        result["runs"] = [
            r for r in result["runs"] if not (r["arm"] in asked and r["rate"] in rates)
        ]
        this_run = record | {"arms": settings["arms"], "rates": list(rates)}
        this_run |= {"rates_done": [], "elapsed_s": 0.0}
        result.setdefault("additions", []).append(this_run)
    else:
        result = record | {
            "parameters": speech_model.count_params(params),
            "data": {k: v for k, v in meta.items() if k not in ("texts", "vocab")}
            | {"vocab": len(meta["vocab"]) + 2},
            "settings": settings,
            "mean_frame_val_mel": mean_frame_mel(batches["validation"]),
            "mean_frame_test_mel": mean_frame_mel(batches["test"]),
            "rates_done": [],
            "runs": [],
            "elapsed_s": 0.0,
        }
        this_run = result
    out.mkdir(parents=True, exist_ok=True)
    for rate in rates:
        t0 = time.perf_counter()
        for (_, group), train in zip(groups, trains, strict=True):
            arm_ids = jnp.asarray([ALL_ARMS.index(a) for a in group for _ in seeds])
            seed_ids = jnp.asarray([s for _ in group for s in seeds])
            rate_ids = jnp.full(arm_ids.shape, rate, jnp.float32)
            records = jax.device_get(train(arm_ids, seed_ids, rate_ids))
            for i in range(arm_ids.shape[0]):
                result["runs"].append(
                    {
                        "arm": ALL_ARMS[int(arm_ids[i])],
                        "seed": int(seed_ids[i]),
                        "rate": float(rate),
                        "finite": bool(records["finite"][i]),
                        "best_val_mel": _num(records["best_val_mel"][i]),
                        "test_mel": _num(records["test_mel"][i]),
                        "steps": int(records["steps"][i]),
                        "stopped_early": bool(records["stopped_early"][i]),
                        "val_history": [_num(v) for v in records["val_history"][i]],
                        "mel_weight_history": [_num(v) for v in records["mel_weight_history"][i]],
                    }
                )
        this_run["rates_done"].append(float(rate))
        this_run["elapsed_s"] = time.perf_counter() - start
        (out / name).write_text(json.dumps(result, indent=1) + "\n")
        print(f"rate {rate:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def _num(x) -> float | None:
    """A json number, or None for NaN / Inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("build", "run", "report", "figure"))
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--cache", type=pathlib.Path, default=speech_data.CACHE)
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--arms", nargs="+", choices=ALL_ARMS, default=list(ARMS))
    parser.add_argument(
        "--merge", action="store_true", help="add the arms to the committed json (run only)"
    )
    args = parser.parse_args(argv)
    if args.what == "build":
        meta = speech_data.build(args.cache)
        print(
            f"{meta['utterances']} utterances ({meta['seconds_of_speech']:.0f} s of speech) "
            f"in {meta['build_s']:.1f} s -> {args.cache}"
        )
    elif args.what == "run":
        command = shlex.join(
            ["python", "-m", "benchmarks.speech", *(sys.argv[1:] if argv is None else argv)]
        )
        run(
            rates=args.rates,
            seeds=SEEDS[: args.seeds],
            max_steps=args.max_steps,
            out=args.out,
            cache=args.cache,
            command=command,
            precision=args.precision,
            arms=args.arms,
            merge=args.merge,
        )
    elif args.what == "report":
        result = json.loads((args.out / "speech.json").read_text())
        (args.out / "speech.md").write_text(report(result))
        write_docs_block(result)
        fp16 = args.out / "speech_fp16.json"
        if fp16.exists():
            (args.out / "speech_fp16.md").write_text(report(json.loads(fp16.read_text())))
    else:
        figure(args.out, args.cache)


if __name__ == "__main__":
    main()
