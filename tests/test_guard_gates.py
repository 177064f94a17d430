"""The slow gates, each record tested alone under ``jax.jit``: warmup, cooling, stability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_optax._src.base import Signals
from adaptive_optax._src.guards.cooling import Cooling
from adaptive_optax._src.guards.stability import Stability
from adaptive_optax._src.guards.warmup import Warmup


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Warmup.checked(warmup_steps=-1), r"warmup_steps .*-1"),
        (lambda: Warmup.checked(warmup_steps=2.5), r"warmup_steps .*2.5"),
        (lambda: Cooling.checked(cooling_period=-3), r"cooling_period .*-3"),
        (lambda: Cooling.checked(cooling_period="5"), r"cooling_period .*'5'"),
        (lambda: Stability.checked(min_stable_steps=-1, variance_threshold=0.5), "min_stable"),
        (lambda: Stability.checked(min_stable_steps=1, variance_threshold=0), "variance_thr"),
    ],
)
def test_checked_names_the_setting_and_its_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_warmup_allows_only_after_warmup_steps():
    gate = Warmup.checked(warmup_steps=3)
    allows = jax.jit(jax.vmap(gate.allows))(jnp.arange(1, 6))
    np.testing.assert_array_equal(allows, [False, False, False, True, True])


def test_warmup_of_0_allows_the_first_step():
    assert bool(jax.jit(Warmup.checked(warmup_steps=0).allows)(jnp.int32(1)))


def test_cooling_waits_after_a_change_but_not_before_the_first():
    gate = Cooling.checked(cooling_period=4)
    last = jnp.array([0, 10, 7, 6], jnp.int32)
    np.testing.assert_array_equal(jax.jit(gate.allows)(jnp.int32(10), last), [1, 0, 0, 1])


@settings(max_examples=50, deadline=None)
@given(
    period=st.integers(0, 20),
    step=st.integers(1, 100),
    last=st.lists(st.integers(0, 100), min_size=3, max_size=3),
)
def test_cooling_never_allows_two_changes_closer_than_the_period(period, step, last):
    last = np.minimum(np.array(last, np.int32), step)
    allows = np.asarray(Cooling.checked(cooling_period=period).allows(jnp.int32(step), last))
    changed = last > 0
    assert np.all(~allows[changed] | (step - last[changed] >= period))


def _signals(rel_variance, finite):
    n = len(rel_variance)
    zeros = jnp.zeros(n)
    return Signals(
        step=jnp.int32(1),
        losses=zeros,
        finite=jnp.asarray(finite),
        loss_count=jnp.zeros(n, jnp.int32),
        first_loss=zeros,
        previous_loss=zeros,
        loss_mean=zeros,
        deviation=zeros,
        rel_variance=jnp.asarray(rel_variance, jnp.float32),
        grad_mean=zeros,
        has_grad_history=jnp.zeros(n, bool),
        grad_stats={},
    )


def test_stability_counts_calm_steps_and_resets_on_a_loud_or_nonfinite_one():
    gate = Stability.checked(min_stable_steps=2, variance_threshold=0.5)
    signals = _signals([0.1, 0.9, 0.1], [True, True, False])
    stable = jax.jit(gate.stable_count)(jnp.array([1, 5, 5], jnp.int32), signals)
    np.testing.assert_array_equal(stable, [2, 0, 0])
    np.testing.assert_array_equal(jax.jit(gate.allows)(stable), [True, False, False])


def test_stability_count_saturates_instead_of_wrapping():
    gate = Stability.checked(min_stable_steps=1, variance_threshold=0.5)
    top = jnp.iinfo(jnp.int32).max
    stable = gate.stable_count(jnp.array([top], jnp.int32), _signals([0.0], [True]))
    assert int(stable[0]) == top
