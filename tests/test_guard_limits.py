"""The limits, each record tested alone under ``jax.jit``: the change limit and the bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_optax._src.guards.bounds import Bounds
from adaptive_optax._src.guards.change import ChangeLimit
from adaptive_optax._src.terms import terms_of

TERMS = terms_of({"a": 1.0, "b": 2.0, "c": 0.5})
positive = st.floats(1e-6, 1e6)
any_float = st.one_of(
    st.floats(width=32, allow_nan=False), st.sampled_from([np.inf, -np.inf, 0.0, -0.0])
)


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5, "0.1", True])
def test_change_limit_names_max_change_and_its_value(value):
    with pytest.raises(ValueError, match=r"^max_change ") as error:
        ChangeLimit.checked(max_change=value)
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_change_limit_of_none_leaves_the_proposal():
    proposal = jnp.array([10.0, 0.0])
    assert ChangeLimit.checked(max_change=None).limit(proposal, jnp.ones(2)) is proposal


@settings(max_examples=100, deadline=None)
@given(
    change=st.floats(0.001, 0.999),
    weights=st.lists(positive, min_size=3, max_size=3),
    proposal=st.lists(any_float, min_size=3, max_size=3),
)
def test_the_change_limit_never_exceeds_max_change(change, weights, proposal):
    limit = ChangeLimit.checked(max_change=change)
    w = np.array(weights, np.float32)
    out = np.asarray(jax.jit(limit.limit)(jnp.array(proposal, np.float32), w))
    c = np.float32(change)
    assert np.all(out >= w * (1 - c)) and np.all(out <= w * (1 + c))


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(bounds=(1.0,)), r"bounds must be a pair .*\(1.0,\)"),
        (dict(bounds=(-1.0, 2.0)), r"bounds\[0\] .*-1"),
        (dict(bounds=(0.5, 0.0)), r"bounds\[1\] .*0"),
        (dict(bounds=None, min_weight=-1.0), r"min_weight .*-1"),
        (dict(bounds=None, max_weight=0.0), r"max_weight .*0"),
    ],
)
def test_bounds_name_the_setting_and_its_value(settings, match):
    values = dict(bounds=(0.4, 2.0), min_weight=None, max_weight=None) | settings
    with pytest.raises(ValueError, match=match):
        Bounds.checked(**values)


def test_bounds_are_checked_against_the_base_weights():
    bounds = Bounds.checked(bounds=None, min_weight=3.0, max_weight=5.0)
    with pytest.raises(ValueError, match=r"base_weights\['a'\]=1 lies outside"):
        bounds.of(TERMS, jnp.array([1.0, 2.0, 0.5]), adaptive=np.array([True, False, False]))
    inverted = Bounds.checked(bounds=None, min_weight=3.0, max_weight=2.0)
    with pytest.raises(ValueError, match=r"the bounds of 'a' must satisfy low < high"):
        inverted.of(TERMS, jnp.ones(3), adaptive=np.zeros(3, bool))


def test_absolute_bounds_override_the_factors_per_term():
    bounds = Bounds.checked(bounds=(0.5, 2.0), min_weight=None, max_weight={"a": 3, "b": 3, "c": 2})
    bounds_of = bounds.of(TERMS, jnp.array([1.0, 2.0, 0.5]), adaptive=np.ones(3, bool))
    low, high = jax.jit(bounds_of)(jnp.array([1.0, 2.0, 0.5]))
    np.testing.assert_array_equal(low, [0.5, 1.0, 0.25])
    np.testing.assert_array_equal(high, [3.0, 3.0, 2.0])


@settings(max_examples=100, deadline=None)
@given(
    factors=st.tuples(st.floats(0.0, 0.99), st.floats(1.0, 100.0)),
    base=st.lists(positive, min_size=3, max_size=3),
    proposal=st.lists(any_float, min_size=3, max_size=3),
)
def test_the_bounds_always_hold(factors, base, proposal):
    base = np.array(base, np.float32)
    bounds = Bounds.checked(bounds=factors, min_weight=None, max_weight=None)
    bounds_of = bounds.of(TERMS, jnp.asarray(base), adaptive=np.zeros(3, bool))

    @jax.jit
    def clipped(proposal, base):
        low, high = bounds_of(base)
        return Bounds.clip(proposal, low, high), low, high

    out, low, high = map(np.asarray, clipped(jnp.array(proposal, np.float32), base))
    assert np.all((low <= out) & (out <= high))
