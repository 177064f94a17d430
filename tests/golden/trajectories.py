"""Stored trajectories of every preset: a refactor of the guards must reproduce them bit for bit.

``python -m tests.golden.trajectories`` (from the repository root) rewrites
``tests/golden/trajectories.npz``; do that only for a change that is meant to alter behavior,
and say so in the commit. ``tests/test_golden_trajectories.py`` compares the current code
with the stored file, exactly.

One scenario exercises every stage of ``update``: calm losses, a steadily falling and a rising
term, a spike, a NaN loss, an Inf gradient statistic, and per-term gradients whose norms and
Gramian every gradient-aware rule reads.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao

PATH = pathlib.Path(__file__).with_name("trajectories.npz")
BASE = {"a": 1.0, "b": 2.0, "c": 0.5}
STEPS = 300
GUARDS = dict(
    bounds=(0.2, 5.0),
    max_change=0.1,
    warmup_steps=20,
    cooling_period=5,
    min_stable_steps=3,
    spike_threshold=3.0,
    auto_rollback=True,
)
SEED_START = dict(ramp_steps=0, spike_prior=None)


def scenario(names=tuple(BASE)):
    """``(losses, grad_stats)``: per-step losses and every gradient statistic, as NumPy, for
    three terms called ``names``."""
    rng = np.random.RandomState(0)
    t = np.arange(STEPS)
    noise = 1 + np.where(t < 100, 0.01, 0.05) * rng.randn(3, STEPS)
    a = 2.0 * np.exp(-0.01 * t) * noise[0]
    b = np.where(t < 150, 0.5 * np.exp(0.004 * t), 0.9) * noise[1]
    c = 0.3 * noise[2]
    b[120] *= 30.0
    a[200] = np.nan
    grads = rng.randn(STEPS, 3, 6) * np.array([1.0, 0.5, 2.0])[None, :, None]
    grads *= (1 + 0.002 * t)[:, None, None]
    grads[180, 1] *= 25.0  # a gradient spike of b
    grads[230, 2, 0] = np.inf
    gramian = np.einsum("tid,tjd->tij", grads, grads)
    stats = {
        "norm": np.sqrt(np.einsum("tid,tid->ti", grads, grads)),
        "max_abs": np.abs(grads).max(-1),
        "mean_abs": np.abs(grads).mean(-1),
    }
    per_term = {name: _by_term(value, names) for name, value in stats.items()}
    per_term["gramian"] = gramian.astype(np.float32)
    losses = _by_term(np.stack([a, b, c], 1), names)
    return losses, per_term


def _by_term(values, names):
    return {name: values[:, i].astype(np.float32) for i, name in enumerate(names)}


def _scheduled_base():
    """``b`` enters at step 50 and pauses from 150 to 200; ``c`` anneals."""
    return {
        "a": 1.0,
        "b": lambda step: jnp.where((step >= 50) & ((step < 150) | (step >= 200)), 1.0, 0.0),
        "c": optax.linear_schedule(0.5, 0.1, 200),
    }


def arms():
    """``{name: weighting}``: every preset bare and guarded, and the controller's options."""
    factories = {
        name: getattr(ao, name)
        for name in sorted(ao.__all__)
        if name.endswith("_weights") and name != "distilled_weights"
    }
    own = {"lr_annealing_weights": dict(main="a"), "metabalance_weights": dict(main="a")}
    out = {}
    for name, factory in factories.items():
        kwargs = own.get(name, {})
        out[f"{name}"] = factory(BASE, **kwargs)
        out[f"{name}+guards"] = factory(BASE, **kwargs, **GUARDS)
    options = {
        "original": SEED_START | dict(low_ratio=0.9, toward_base=False, spike_threshold=3.0),
        "seed_start": SEED_START,
        "ratios": dict(moves="ratios", **SEED_START),
        "first_loss": dict(normalize="first_loss"),
        "running": dict(normalize="running", moves="ratios"),
        "every4": dict(every=4),
        "ramp30": dict(ramp_steps=30),
        "no_rollback": dict(auto_rollback=False, cooling_period=7),
        "adapt_a": dict(adapt=("a",)),
        "bfloat16": dict(dtype=jnp.bfloat16),
        "float16": dict(dtype=jnp.float16),
        "absolute_bounds": dict(bounds=None, min_weight=0.05, max_weight={"a": 3, "b": 3, "c": 2}),
    }
    for name, settings in options.items():
        out[f"stable_weights/{name}"] = ao.stable_weights(BASE, **settings)
    out["stable_weights/scheduled"] = ao.stable_weights(_scheduled_base())
    out["guarded_tanh/scheduled"] = ao.guarded(ao.tanh_rule(), _scheduled_base(), **GUARDS)
    out["upgrad+guards/ratios_every3"] = ao.upgrad_weights(BASE, moves="ratios", every=3, **GUARDS)
    return out


def trajectory(weighting, names=tuple(BASE)):
    """Per-step weights ``(STEPS, 3)`` and the final counters, under one jitted scan."""
    losses, stats = scenario(names)
    needs = {name: stats[name] for name in weighting.needs}

    def step(state, inputs):
        loss, grad_stats = inputs
        weights, state = weighting.update(loss, state, grad_stats=grad_stats)
        return state, jnp.stack([weights[name] for name in names]).astype(jnp.float32)

    final, weights = jax.jit(functools.partial(jax.lax.scan, step))(
        weighting.init(), (losses, needs)
    )
    counters = {f"counters/{k}": np.asarray(v) for k, v in final.counters._asdict().items()}
    return {"weights": np.asarray(weights), **counters}


def main():
    stored = {}
    for name, weighting in arms().items():
        for key, value in trajectory(weighting).items():
            stored[f"{name}|{key}"] = value
    np.savez_compressed(PATH, **stored)
    print(f"wrote {len(stored)} arrays to {PATH}")


if __name__ == "__main__":
    main()
