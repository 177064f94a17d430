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


def test_the_ceiling_rises_on_calm_steps_only():
    ramp = StartRamp.checked(ramp_steps=4)
    under = jax.jit(ramp.under_ceiling)
    decision, progress = under(
        after([5.0, 5.0, 5.0]),
        progress=jnp.array([0.0, 0.0, 0.5]),
        ramping=jnp.array([True, True, False]),
        calm=jnp.array([True, False, True]),
        low=jnp.ones(3),
        base=jnp.full(3, 3.0),
    )
    np.testing.assert_array_equal(progress, [0.25, 0.0, 0.5])
    np.testing.assert_array_equal(decision.new_weights, [1.5, 1.0, 5.0])  # not ramping: as is


@settings(max_examples=100, deadline=None)
@given(
    steps=st.integers(1, 50),
    progress=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    new=st.lists(st.floats(0, 1e3), min_size=3, max_size=3),
    calm=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_progress_never_falls_and_the_weight_stays_under_the_base(steps, progress, new, calm):
    ramp = StartRamp.checked(ramp_steps=steps)
    progress = np.array(progress, np.float32)
    low, base = jnp.full(3, 0.5), jnp.full(3, 2.0)
    decision, progressed = ramp.under_ceiling(
        after(new),
        progress=jnp.asarray(progress),
        ramping=jnp.ones(3, bool),
        calm=jnp.array(calm),
        low=low,
        base=base,
    )
    progressed = np.asarray(progressed)
    assert np.all((progressed >= progress) & (progressed <= 1.0))
    assert np.all(np.asarray(decision.new_weights) <= 2.0)


def test_a_cut_resumes_the_ramp_from_the_cut_weight():
    progress = StartRamp.resume_after_cut(
        jnp.array([0.9, 0.9]),
        cut=jnp.array([True, False]),
        weights=jnp.array([1.5, 1.5]),
        low=jnp.ones(2),
        base=jnp.full(2, 3.0),
    )
    np.testing.assert_array_equal(progress, np.float32([0.25, 0.9]))


def test_a_corrupted_progress_ends_the_ramp():
    stored = StartRamp.stored(jnp.array([jnp.nan, 0.5]), jnp.float32)
    np.testing.assert_array_equal(stored, [1.0, 0.5])


def test_the_state_field_keeps_its_name_for_old_checkpoints():
    assert "start_ramp" in ao.AdaptiveState._fields
