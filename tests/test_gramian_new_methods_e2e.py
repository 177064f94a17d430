"""GradVac, FairGrad and PCD end to end through ``ao.weight_gradients`` (issue 28, item 4).

With per-term gradients of a parameter pytree, each step's combined update is
``sum_i w_i g_i`` with this step's weights (``this_steps_weights``, the default of the Gramian
rules), and those weights are the preset's own on the Gramian of the gradients; a step whose
term ``c`` has a NaN loss and gradient leaves the weighting state finite and keeps ``c``'s
weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_optax as ao

BASE = {"a": 1.0, "b": 2.0, "c": 0.5}
FACTORIES = {
    "gradvac": lambda: ao.gradvac_weights(BASE, seed=None),
    "fairgrad": lambda: ao.fairgrad_weights(BASE, alpha=2.0),
    "pcd": lambda: ao.pcd_weights(BASE, main="b", tau=0.1),
}


def gradients(rng):
    return {
        t: {
            "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "v": jnp.asarray(rng.normal(size=4), jnp.float32),
        }
        for t in BASE
    }


def flat(tree):
    return np.concatenate([np.ravel(tree["w"]), np.ravel(tree["v"])]).astype(np.float64)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_weight_gradients_combines_with_this_steps_weights(name):
    tx = ao.weight_gradients(FACTORIES[name]())
    reference = FACTORIES[name]()  # fed the same Gramians by hand
    params = {"w": jnp.zeros((3, 2)), "v": jnp.zeros(4)}
    state, ref_state = tx.init(params), reference.init()
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    last = None
    for step in range(4):
        grads = gradients(rng)
        losses = {t: jnp.float32(1.0 - 0.1 * step) for t in BASE}
        if step == 3:  # term c is NaN: loss and gradient
            grads["c"] = jax.tree.map(lambda g: g * jnp.nan, grads["c"])
            losses["c"] = jnp.float32(jnp.nan)
        combined, state = update(grads, state, params, losses=losses)
        weights = ao.find_state(state).weights
        rows = np.stack([flat(grads[t]) for t in BASE])
        gramian = jnp.asarray(rows @ rows.T, jnp.float32)
        expected, ref_state = reference.update(losses, ref_state, grad_stats={"gramian": gramian})
        for t in BASE:
            np.testing.assert_allclose(weights[t], expected[t], rtol=2e-4, atol=1e-6)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(ao.find_state(state)))
        if step < 3:
            w = np.array([float(weights[t]) for t in BASE])
            np.testing.assert_allclose(flat(combined), w @ rows, rtol=1e-4, atol=1e-5)
        else:
            assert float(weights["c"]) == float(last["c"])
        last = weights
    assert update._cache_size() == 1
