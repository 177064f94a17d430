"""The guards that cannot be switched off, tested alone under ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao
from adaptive_optax._src.guards import always
from adaptive_optax._src.schedules import base_vector
from adaptive_optax._src.terms import terms_of

BASE = {"a": 1.0, "b": 2.0}
TERMS = terms_of(BASE)


def test_inputs_are_vectors_and_a_nonfinite_statistic_marks_its_term():
    read = jax.jit(
        lambda losses, norms: always.read_inputs(TERMS, losses, norms, None, None, jnp.float32)
    )
    loss, gradients, finite = read({"a": 1.0, "b": 2.0}, {"a": jnp.inf, "b": 1.0})
    np.testing.assert_array_equal(loss, [1.0, 2.0])
    np.testing.assert_array_equal(gradients["norm"], [np.inf, 1.0])
    np.testing.assert_array_equal(finite, [False, True])


NEGATIVE_NORM_WEIGHTING = ao.stable_weights(BASE)
NEGATIVE_NORM_UPDATE = jax.jit(NEGATIVE_NORM_WEIGHTING.update)


@settings(max_examples=50, deadline=None)
@given(norm=st.floats(max_value=-1e-30, allow_infinity=True), steps=st.integers(1, 4))
def test_a_negative_gradient_norm_is_counted_and_not_averaged_in(norm, steps):
    """A norm cannot be negative (only a caller's bug makes one): it is an invalid input,
    counted in ``nonfinite/<term>`` as a NaN is, and never folded into ``grad_norm_avg``."""
    update, state = NEGATIVE_NORM_UPDATE, NEGATIVE_NORM_WEIGHTING.init()
    _, state = update({"a": 0.8, "b": 0.3}, state, grad_norms={"a": 2.0, "b": 2.0})
    for _ in range(steps):
        _, state = update({"a": 0.8, "b": 0.3}, state, grad_norms={"a": norm, "b": 2.0})
    m = ao.metrics(state)
    assert (int(m["nonfinite/a"]), int(m["nonfinite/b"])) == (steps, 0)
    assert (float(m["grad_norm_avg/a"]), float(m["grad_norm_avg/b"])) == (2.0, 2.0)
    assert int(state.stats.loss_count[0]) == 1  # the step was skipped for that term


def test_a_corrupted_state_is_healed_to_its_base():
    weighting = ao.guarded(ao.tanh_rule(), BASE)
    state = weighting.init()
    state = state._replace(
        weights={"a": jnp.nan, "b": 2.5},
        base_weights={"a": 1.0, "b": -1.0},
        previous_weights={"a": 1.0, "b": jnp.inf},
    )
    initial, schedules = base_vector(TERMS, BASE, jnp.float32)
    heal = jax.jit(lambda s: always.heal(TERMS, s, initial, jnp.float32, schedules))
    base, weights, previous, corrupt = heal(state)
    np.testing.assert_array_equal(base, [1.0, 2.0])
    np.testing.assert_array_equal(weights, [1.0, 2.0])
    np.testing.assert_array_equal(previous, [1.0, 2.0])
    np.testing.assert_array_equal(corrupt, [True, True])


def test_a_rule_state_that_goes_nonfinite_keeps_its_previous_value():
    rule = ao.Rule(
        init=lambda base: jnp.ones(2),
        propose=lambda signals, weights, base, state: (weights, state * jnp.array([jnp.nan, 2.0])),
    )
    proposal, state = always.propose(rule, None, jnp.ones(2, jnp.bfloat16), None, jnp.ones(2))
    assert proposal.dtype == jnp.bfloat16
    np.testing.assert_array_equal(state, [1.0, 2.0])


@settings(max_examples=100, deadline=None)
@given(
    proposal=st.lists(
        st.one_of(st.floats(width=32), st.sampled_from([3e38, -3e38])), min_size=2, max_size=2
    ),
    losses=st.lists(
        st.one_of(st.floats(width=32), st.sampled_from([3e38, 1e30])), min_size=2, max_size=2
    ),
)
def test_a_valid_proposal_has_a_finite_weighted_loss(proposal, losses):
    p, loss = np.array(proposal, np.float32), np.array(losses, np.float32)
    ok = np.asarray(jax.jit(always.valid)(jnp.asarray(p), jnp.asarray(loss)))
    with np.errstate(all="ignore"):
        product = p * loss
    finite_inputs = np.isfinite(loss)
    assert np.all(np.isfinite(p[ok]))
    assert np.all(np.isfinite(product[ok & finite_inputs]))
