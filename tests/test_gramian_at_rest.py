"""At rest (initial, disabled, left out) a Gramian method's weights are its uniform weights.

Under SGD a weight is a learning rate: a Gramian method's weights sum to about 1 (for unit
base weights), so resting at the base weights (1 each) would multiply the step by ``n``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_optax as ao

BASE = {"a": 1.0, "b": 3.0, "c": 1.0}
LOSSES = {"a": 1.0, "b": 1.0, "c": 1.0}
J = jnp.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3], [0.4, 0.0, 1.0]])
PRESETS = [ao.mgda_weights, ao.upgrad_weights, ao.dualproj_weights, ao.imtl_g_weights,
           ao.aligned_mtl_weights, ao.cagrad_weights, ao.pcgrad_weights, ao.config_weights,
           ao.nash_mtl_weights, ao.gradvac_weights, ao.fairgrad_weights,
           ao.pcd_weights]  # fmt: skip


def vector(tree):
    return np.array([tree[k] for k in ("a", "b", "c")], np.float64)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.__name__)
def test_initial_and_disabled_weights_are_the_uniform_weights(preset):
    weighting = preset(BASE)
    uniform = vector(BASE) / 3
    np.testing.assert_allclose(vector(weighting.init().weights), uniform, rtol=1e-6)
    np.testing.assert_allclose(vector(ao.disable(weighting.init()).weights), uniform, rtol=1e-6)


@pytest.mark.parametrize("preset", [ao.mgda_weights, ao.nash_mtl_weights], ids=lambda p: p.__name__)
def test_left_out_and_disabled_terms_stay_at_the_uniform_weights(preset):
    weighting = preset(BASE)
    uniform = vector(BASE) / 3
    update = jax.jit(weighting.update)
    # A term left out of the first solve (its Gramian row is not finite) keeps b_i / n.
    gramian = (J @ J.T).at[2, :].set(jnp.inf).at[:, 2].set(jnp.inf)
    weights, state = update(LOSSES, weighting.init(), grad_stats={"gramian": gramian})
    assert vector(weights)[2] == pytest.approx(uniform[2])
    # The solved weights are the method's (base-weighted, TorchJD's scale).
    weights, state = update(LOSSES, state, grad_stats={"gramian": J @ J.T})
    assert not np.allclose(vector(weights), uniform)
    # Disabled: back to b_i / n, and update keeps it there.
    weights, _ = update(LOSSES, ao.disable(state), grad_stats={"gramian": J @ J.T})
    np.testing.assert_allclose(vector(weights), uniform, rtol=1e-6)
