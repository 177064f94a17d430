"""Shared test helpers: run a weighting over a sequence of losses inside one jitted scan."""

from __future__ import annotations

import functools

import jax
import numpy as np

import adaptive_optax as ao

TTS_BASE = {"mel": 2.5, "stop": 1.0, "attention": 0.1}
# The original controller: its rule lowers a falling loss's weight and holds otherwise, its
# spike guard judges at a z-score of 3 after 10 values, and its weights start at the base.
SEED_START = dict(
    ramp_steps=0, spike_prior=None, low_ratio=0.9, toward_base=False, spike_threshold=3.0
)


def seed_controller(base_weights, **settings):
    """``ao.stable_weights`` without its slow start: weights start at their base, as the seed's.

    The tests of the controller's mechanics (adjustments, rollback, bounds, disable) use it, so
    that each step's expected weight is the base times the rule's changes.
    """
    return ao.stable_weights(base_weights, **(SEED_START | settings))


_metrics = jax.jit(jax.vmap(ao.metrics))


@functools.cache
def _scan(weighting):
    def step(state, inputs):
        loss, gnorm = inputs
        weights, state = weighting.update(loss, state, grad_norms=gnorm)
        return state, (weights, state)

    return jax.jit(lambda state, xs: jax.lax.scan(step, state, xs))


def run(weighting, losses, grad_norms=None, state=None):
    """Runs ``update`` over the leading axis of ``losses`` (and ``grad_norms``) in a jitted scan.

    The compiled scan is cached per weighting, so build a weighting once to reuse it.

    Returns:
      ``(final_state, trace)`` where ``trace`` holds, per step, the returned weights under
      ``"weights"`` and the metrics (after the step) under ``"metrics"``, as NumPy arrays.
    """
    state = weighting.init() if state is None else state
    final, (weights, states) = _scan(weighting)(state, (losses, grad_norms))
    trace = {"weights": weights, "metrics": _metrics(states)}
    return final, jax.tree.map(np.asarray, trace)


# Test data is built with NumPy: eager jnp ops would each compile a small kernel.


def constant(value, steps, dtype=np.float32):
    return np.full((steps,), value, dtype)


def tts_losses(mel):
    """Losses for TTS_BASE with the given mel sequence and constant other terms."""
    mel = np.asarray(mel, np.float32)
    steps = mel.shape[0]
    return {"mel": mel, "stop": constant(0.3, steps), "attention": constant(0.1, steps)}


def rising(steps, start=1.0, rate=0.01):
    """A smoothly rising loss: after a few steps it is > 10 % above its lagging running mean."""
    return (start * np.exp(rate * np.arange(steps))).astype(np.float32)


def falling(steps, start=1.0, rate=0.01):
    """A smoothly falling loss: after a few steps it is > 10 % below its running mean."""
    return (start * np.exp(-rate * np.arange(steps))).astype(np.float32)


def with_values(sequence, at, value):
    """A copy of ``sequence`` with ``value`` at the indices ``at``."""
    out = np.array(sequence, copy=True)
    out[at] = value
    return out


def change_steps(weights):
    """Indices (0-based scan positions) where a weight sequence changes value."""
    return np.flatnonzero(np.diff(np.concatenate([[weights[0]], weights])) != 0)
