"""The Flax examples train a real model with adaptive weights in the optimizer chain."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import adaptive_optax as ao
from examples import flax_linen, flax_nnx

# integration with optax and flax, which promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion

STEPS = 200


def check_training(result, base_weights):
    totals, metrics = result["totals"], result["metrics"]
    assert totals[-1] < 0.05 * totals[0]
    assert int(metrics["step"]) == STEPS
    for name, base in base_weights.items():
        # Both losses fall steadily: no evidence. Each weight enters at its floor (0.4 x base),
        # the start ramp completes on calm steps, and the weight ends at its base.
        assert float(metrics[f"start_ramp/{name}"]) == 1.0
        assert float(metrics[f"weight/{name}"]) == pytest.approx(base, rel=0.05)


def test_nnx_optimizer_trains_with_losses_passed_to_update():
    check_training(flax_nnx.train(steps=STEPS), flax_nnx.BASE_WEIGHTS)


def test_linen_train_state_carries_the_weighting_state():
    result = flax_linen.train(steps=STEPS)
    check_training(result, flax_linen.BASE_WEIGHTS)
    state = result["state"]
    assert int(state.step) == STEPS
    found = optax.tree.get(state.opt_state, "weighting_state")
    assert int(found.step) == STEPS
    chex.assert_trees_all_equal(found, ao.find_state(state))


def test_apply_gradients_matches_linen_for_a_plain_optimizer():
    params = {"w": jnp.arange(3.0), "b": jnp.ones([])}
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(0.1))
    grads = jax.tree.map(lambda p: 0.5 - p, params)
    ours = jax.jit(lambda s, g: ao.apply_gradients(s, grads=g))(state, grads)
    theirs = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)
    chex.assert_trees_all_equal(ours.params, theirs.params)
    chex.assert_trees_all_equal(ours.opt_state, theirs.opt_state)
    assert int(ours.step) == int(theirs.step) == 1
    assert not np.array_equal(ours.params["w"], params["w"])
