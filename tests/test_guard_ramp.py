"""The start ramp's record tested alone under ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao
from adaptive_optax._src.guards.decision import Decision
from adaptive_optax._src.guards.ramp import StartRamp


@pytest.mark.parametrize("value", [-1, 2.5, "3", True])
def test_checked_names_ramp_steps_and_its_value(value):
    with pytest.raises(ValueError, match=r"^ramp_steps "):
        StartRamp.checked(ramp_steps=value)


def test_it_starts_at_the_lower_bound_on_adaptive_terms_only():
    ramp = StartRamp.checked(ramp_steps=10)
    weights, progress = ramp.start(
        np.array([True, False]), jnp.array([0.4, 0.8]), jnp.array([1.0, 2.0]), jnp.float32
    )
    np.testing.assert_array_equal(weights, np.float32([0.4, 2.0]))
    np.testing.assert_array_equal(progress, [0.0, 1.0])
    off_weights, off_progress = StartRamp.checked(ramp_steps=0).start(
        np.array([True, False]), jnp.array([0.4, 0.8]), jnp.array([1.0, 2.0]), jnp.float32
    )
    np.testing.assert_array_equal(off_weights, [1.0, 2.0])
    np.testing.assert_array_equal(off_progress, [1.0, 1.0])


def after(new_weights):
    """A decision whose earlier stages left ``new_weights``."""
    new_weights = jnp.asarray(new_weights, jnp.float32)
    n = new_weights.shape[0]
    return Decision.of(
        weights=new_weights,
        proposal=new_weights,
        allowed=jnp.zeros(n, bool),
        valid=jnp.ones(n, bool),
        previous=new_weights,
        last_change=jnp.zeros(n, jnp.int32),
    )


def test_the_ramped_base_rises_on_calm_steps_only():
    ramp = StartRamp.checked(ramp_steps=4)
    ramping = jnp.array([True, True, False])
    progress = jax.jit(ramp.advance)(
        jnp.array([0.0, 0.0, 0.5]), ramping=ramping, calm=jnp.array([True, False, True])
    )
    np.testing.assert_array_equal(progress, [0.25, 0.0, 0.5])
    target = jax.jit(ramp.ramped_base)(
        progress, ramping=ramping, low=jnp.ones(3), base=jnp.full(3, 3.0)
    )
    np.testing.assert_array_equal(target, [1.5, 1.0, 3.0])  # not ramping: the base


def test_the_weights_follow_the_ramped_base_with_their_factor():
    ramp = StartRamp.checked(ramp_steps=4)
    weights, previous = jax.jit(ramp.carry)(
        jnp.array([1.0, 0.5]), jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0]), jnp.array([2.0, 2.0])
    )
    np.testing.assert_allclose(weights, [2.0, 1.0])  # at the ramped base, and half of it
    np.testing.assert_allclose(previous, [2.0, 2.0])
    off = StartRamp.checked(ramp_steps=0)
    np.testing.assert_array_equal(
        off.ramped_base(
            jnp.zeros(1), ramping=jnp.ones(1, bool), low=jnp.ones(1), base=jnp.full(1, 3.0)
        ),
        [3.0],
    )


def test_no_weight_exceeds_the_ramped_base_while_the_ramp_lasts():
    ramp = StartRamp.checked(ramp_steps=4)
    decision = jax.jit(ramp.under_ceiling)(
        after([5.0, 5.0, 1.0]), ramping=jnp.array([True, False, True]), ceiling=jnp.full(3, 2.0)
    )
    np.testing.assert_array_equal(decision.new_weights, [2.0, 5.0, 1.0])


@settings(max_examples=100, deadline=None)
@given(
    steps=st.integers(1, 50),
    progress=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    calm=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_progress_never_falls_and_the_ramped_base_stays_between_low_and_base(steps, progress, calm):
    ramp = StartRamp.checked(ramp_steps=steps)
    progress = np.array(progress, np.float32)
    low, base = jnp.full(3, 0.5), jnp.full(3, 2.0)
    progressed = np.asarray(
        ramp.advance(jnp.asarray(progress), ramping=jnp.ones(3, bool), calm=jnp.array(calm))
    )
    assert np.all((progressed >= progress) & (progressed <= 1.0))
    target = np.asarray(ramp.ramped_base(progressed, ramping=jnp.ones(3, bool), low=low, base=base))
    assert np.all((target >= 0.5 * (1 - 1e-6)) & (target <= 2.0 * (1 + 1e-6)))


def test_a_corrupted_progress_ends_the_ramp():
    stored = StartRamp.stored(jnp.array([jnp.nan, 0.5]), jnp.float32)
    np.testing.assert_array_equal(stored, [1.0, 0.5])


def test_the_state_field_keeps_its_name_for_old_checkpoints():
    assert "start_ramp" in ao.AdaptiveState._fields
