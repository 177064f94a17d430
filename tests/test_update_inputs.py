"""``update`` refuses inputs that are not what it documents, with an error naming them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import adaptive_optax as ao

BASE = {"a": 1.0, "b": 1.0}
LOSSES = {"a": 1.0, "b": 2.0}
GRAMIAN = {"gramian": jnp.eye(2)}


@pytest.mark.parametrize(
    "weighting, other",
    [
        (ao.famo_weights(BASE), ao.upgrad_weights(BASE)),
        (ao.upgrad_weights(BASE), ao.famo_weights(BASE)),
        (ao.rlw_weights(BASE), ao.stable_weights(BASE)),
        (ao.nash_mtl_weights(BASE), ao.pcgrad_weights(BASE)),
    ],
)
def test_the_state_of_another_weighting_is_refused(weighting, other):
    with pytest.raises(ValueError, match="state of another weighting"):
        jax.jit(weighting.update)(LOSSES, other.init(), grad_stats=GRAMIAN)


@pytest.mark.parametrize("state", [(), {"weights": BASE}, None])
def test_a_state_that_is_not_an_adaptive_state_is_refused(state):
    weighting = ao.rlw_weights(BASE)
    with pytest.raises(ValueError, match="AdaptiveState"):
        weighting.update(LOSSES, state)


@pytest.mark.parametrize("loss", [True, jnp.bool_(True), 1.0 + 2.0j, jnp.complex64(1.0)])
def test_a_bool_or_complex_loss_is_refused_naming_its_term(loss):
    weighting = ao.stable_weights(BASE)
    with pytest.raises(ValueError, match=r"losses\['b'\] must be a real number"):
        jax.jit(weighting.update)({"a": 1.0, "b": loss}, weighting.init())


def test_a_string_or_missing_loss_is_refused_naming_its_term():
    # Under jax.jit, JAX itself refuses a string argument, naming its path losses['b'].
    weighting = ao.stable_weights(BASE)
    for loss in ("1.0", b"1"):
        with pytest.raises(ValueError, match=r"losses\['b'\] must be a real number"):
            weighting.update({"a": 1.0, "b": loss}, weighting.init())
    with pytest.raises(ValueError, match=r"missing terms \['b'\]"):
        weighting.update({"a": 1.0, "b": None}, weighting.init())


def test_real_losses_of_every_dtype_are_accepted():
    weighting = ao.stable_weights(BASE)
    for loss in (1, 1.0, jnp.bfloat16(1.0), jnp.float16(1.0), jnp.int32(1)):
        weights, _ = weighting.update({"a": 1.0, "b": loss}, weighting.init())
        assert set(weights) == {"a", "b"}
