"""The rollback and the decision it acts on, tested alone under ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_optax._src.base import Counters
from adaptive_optax._src.guards.decision import Decision
from adaptive_optax._src.guards.rollback import Rollback


def decision(proposal, allowed=(True, True, True), valid=(True, True, True)):
    weights = jnp.array([1.0, 2.0, 3.0])
    return Decision.of(
        weights=weights,
        proposal=jnp.asarray(proposal, jnp.float32),
        allowed=jnp.array(allowed),
        valid=jnp.array(valid),
        previous=jnp.array([0.5, 1.5, 2.5]),
        last_change=jnp.array([0, 3, 4], jnp.int32),
    )


@pytest.mark.parametrize("value", [1, "yes", None])
def test_checked_names_auto_rollback_and_its_value(value):
    with pytest.raises(ValueError, match=r"auto_rollback .*" + repr(value)):
        Rollback.checked(auto_rollback=value)


def test_a_decision_lands_only_allowed_valid_changes():
    d = decision([1.5, 2.0, 9.0], allowed=(True, True, True), valid=(True, True, False))
    np.testing.assert_array_equal(d.landed, [True, False, False])  # same, or not valid
    np.testing.assert_array_equal(d.refused, [False, False, True])
    landed = jax.jit(Decision.land)(d, jnp.int32(10))
    np.testing.assert_array_equal(landed.new_weights, [1.5, 2.0, 3.0])
    np.testing.assert_array_equal(landed.previous, [1.0, 1.5, 2.5])
    np.testing.assert_array_equal(landed.last_change, [10, 3, 4])


def test_at_rest_is_the_base_with_nothing_to_roll_back_to():
    d = decision([1.5, 2.5, 3.5]).land(jnp.int32(10))
    rest = jax.jit(Decision.at_rest)(d, jnp.array([True, False, True]), jnp.full(3, 7.0))
    np.testing.assert_array_equal(rest.new_weights, [1.5, 7.0, 3.5])
    np.testing.assert_array_equal(rest.previous, [1.0, 7.0, 3.0])


def test_a_fault_within_the_cooling_period_undoes_the_adjustment():
    landed = decision([1.5, 2.5, 3.5]).land(jnp.int32(10))
    landed = landed._replace(last_change=jnp.array([10, 3, 9], jnp.int32))
    fault = jnp.array([True, True, False])
    roll = jax.jit(Rollback.checked(auto_rollback=True).roll_back)
    out = roll(landed, step=jnp.int32(12), fault=fault, cooling_period=5)
    np.testing.assert_array_equal(out.rolled_back, [True, False, False])  # b: too long ago
    np.testing.assert_array_equal(out.new_weights, [1.0, 2.5, 3.5])
    np.testing.assert_array_equal(out.last_change, [12, 3, 9])


def test_no_automatic_rollback_when_off():
    landed = decision([1.5, 2.5, 3.5]).land(jnp.int32(10))
    out = Rollback.checked(auto_rollback=False).roll_back(
        landed, step=jnp.int32(11), fault=jnp.ones(3, bool), cooling_period=50
    )
    assert out is landed


@settings(max_examples=50, deadline=None)
@given(
    fault=st.lists(st.booleans(), min_size=3, max_size=3),
    period=st.integers(0, 20),
    step=st.integers(11, 40),
)
def test_a_rollback_needs_a_fault_and_returns_to_the_previous_weight(fault, period, step):
    landed = decision([1.5, 2.5, 3.5]).land(jnp.int32(10))
    out = Rollback.checked(auto_rollback=True).roll_back(
        landed, step=jnp.int32(step), fault=jnp.array(fault), cooling_period=period
    )
    undone = np.asarray(out.rolled_back)
    assert not np.any(undone & ~np.array(fault))
    previous = np.asarray(landed.previous)
    np.testing.assert_array_equal(np.asarray(out.new_weights)[undone], previous[undone])


def test_a_decision_counts_what_happened():
    d = decision([1.5, 2.0, 9.0], valid=(True, True, False)).land(jnp.int32(4))
    zeros = jnp.zeros(3, jnp.int32)
    counters = Counters(*[zeros] * len(Counters._fields))
    missing = jnp.array([False, True, False])
    counted = jax.jit(Decision.counted)(
        d,
        counters,
        step=jnp.int32(4),
        missing=missing,
        healed=jnp.array([False, False, True]),
        spiked=jnp.array([True, False, False]),
    )
    np.testing.assert_array_equal(counted.adjustments, [1, 0, 0])
    np.testing.assert_array_equal(counted.rejected, [0, 0, 1])
    np.testing.assert_array_equal(counted.nonfinite, [0, 1, 0])
    np.testing.assert_array_equal(counted.healed, [0, 0, 1])
    np.testing.assert_array_equal(counted.spikes, [1, 0, 0])
    np.testing.assert_array_equal(counted.first_nonfinite_step, [0, 4, 0])
