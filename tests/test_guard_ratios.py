"""Ratios only (``moves="ratios"``), tested alone under ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_optax._src.guards.ratios import RatiosOnly

positive = st.floats(0.01, 100.0)


@pytest.mark.parametrize("value", ["ratio", None, 1])
def test_checked_names_moves_and_its_value(value):
    with pytest.raises(ValueError, match=r"^moves must be one of \('weights', 'ratios'\), got"):
        RatiosOnly.checked(moves=value)


def test_weights_leave_the_proposal_alone():
    proposal = jnp.array([3.0, 1.0])
    out = RatiosOnly.checked(moves="weights").keep_total(
        proposal, jnp.ones(2), jnp.ones(2), jnp.ones(2, bool), 0.1
    )
    assert out is proposal


@settings(max_examples=100, deadline=None)
@given(
    proposal=st.lists(positive, min_size=3, max_size=3),
    weights=st.lists(positive, min_size=3, max_size=3),
)
def test_without_max_change_the_moving_terms_reach_their_base_total(proposal, weights):
    ratios = RatiosOnly.checked(moves="ratios")
    base = jnp.array([1.0, 2.0, 3.0])
    moving = jnp.array([True, True, False])
    out = np.asarray(
        jax.jit(ratios.keep_total, static_argnums=4)(
            jnp.array(proposal, np.float32), jnp.array(weights, np.float32), base, moving, None
        )
    )
    np.testing.assert_allclose(out[:2].sum(), 3.0, rtol=1e-5)
    assert out[2] == np.float32(proposal[2])  # a term whose gate is closed is left alone
    expected = np.array(proposal[:2], np.float32)
    np.testing.assert_allclose(out[0] / out[1], expected[0] / expected[1], rtol=1e-4)


@settings(max_examples=100, deadline=None)
@given(
    change=st.floats(0.01, 0.5),
    proposal=st.lists(positive, min_size=3, max_size=3),
    weights=st.lists(positive, min_size=3, max_size=3),
)
def test_with_max_change_no_term_moves_more_than_max_change(change, proposal, weights):
    ratios = RatiosOnly.checked(moves="ratios")
    w = np.array(weights, np.float32)
    out = np.asarray(
        ratios.keep_total(
            jnp.array(proposal, np.float32), jnp.asarray(w), jnp.ones(3), jnp.ones(3, bool), change
        )
    )
    assert np.all(np.abs(out - w) <= change * w * (1 + 1e-5) + 1e-6)
