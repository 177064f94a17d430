"""Checkpoints of weightings with scheduled base weights resume bit-exactly: the schedule is
read from the step the state holds, so a resumed run is the uninterrupted one."""

import chex
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from helpers import run

import adaptive_optax as ao

STEPS, SAVE_AT = 60, 30  # two halves of one length: one compiled scan


def build():
    """A fresh weighting each time, as a resumed process builds it."""
    return ao.stable_weights(
        {
            "mel": 45.0,
            "adv": lambda count: jnp.where(count >= 20, 1.0, 0.0),  # enters at 20
            "kl": optax.linear_schedule(1.0, 0.1, transition_steps=40),  # annealing past SAVE_AT
        },
        warmup_steps=5,
        cooling_period=3,
        min_stable_steps=1,
    )


def losses():
    t = np.arange(STEPS, dtype=np.float32)
    return {
        "mel": 1.0 / (1.0 + 0.05 * t) + 0.02 * np.sin(t),
        "adv": np.where(t >= 20, 2.0 + 0.3 * np.cos(t), 0.0).astype(np.float32),
        "kl": 0.5 + 0.1 * np.sin(0.3 * t),
    }


def test_resume_across_entry_and_annealing_is_bit_exact():
    data, norms = losses(), np.linspace(1.0, 3.0, STEPS, dtype=np.float32)
    first = {k: v[:SAVE_AT] for k, v in data.items()}
    rest = {k: v[SAVE_AT:] for k, v in data.items()}
    weighting = build()
    saved, _ = run(weighting, first, grad_norms=norms[:SAVE_AT])
    whole, _ = run(weighting, rest, grad_norms=norms[SAVE_AT:], state=saved)

    blob = serialization.to_bytes(saved)
    resumed_weighting = build()
    restored = ao.restore(resumed_weighting.init(), serialization.msgpack_restore(blob))
    resumed, _ = run(resumed_weighting, rest, grad_norms=norms[SAVE_AT:], state=restored)

    chex.assert_trees_all_equal_dtypes(resumed, whole)
    chex.assert_trees_all_equal(resumed, whole)
    assert float(whole.base_weights["kl"]) < 1.0 and float(whole.weights["adv"]) > 0
