"""The spike guard's record tested alone under ``jax.jit``: its checks, detection and cut."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_optax._src.guards.decision import Decision
from adaptive_optax._src.guards.spike import SpikeGuard
from adaptive_optax._src.spikes import init_spike_stats

DEFAULTS = dict(spike_threshold=3.0, spike_factor=0.5, spike_decay=0.97, spike_prior=None)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("spike_threshold", 0.0),
        ("spike_threshold", -1.0),
        ("spike_factor", 1.0),
        ("spike_factor", 0.0),
        ("spike_decay", 1.0),
        ("spike_prior", 0.0),
        ("spike_prior", "0.25"),
    ],
)
def test_checked_names_the_setting_and_its_value(setting, value):
    with pytest.raises(ValueError, match=f"^{setting} .*{value!r}"):
        SpikeGuard.checked(**(DEFAULTS | {setting: value}))


def _detect(guard, losses):
    @jax.jit
    def run(losses):
        def step(stats, loss):
            spiked, stats = guard.detect(stats, loss, {}, jnp.isfinite(loss))
            return stats, spiked

        return jax.lax.scan(step, init_spike_stats(2, jnp.float32), losses)[1]

    return np.asarray(run(jnp.asarray(losses, jnp.float32)))


def test_a_jump_by_a_large_factor_is_a_spike_after_the_warmup():
    rng = np.random.default_rng(0)
    losses = 1 + 0.05 * rng.standard_normal((30, 2))
    losses[25, 0] *= 50
    spiked = _detect(SpikeGuard.checked(**DEFAULTS), losses)
    assert spiked[25, 0] and spiked.sum() == 1


def test_off_nothing_spikes_and_the_statistics_stay_empty():
    guard = SpikeGuard.checked(**(DEFAULTS | dict(spike_threshold=None)))
    stats = init_spike_stats(2, jnp.float32)
    spiked, after = guard.detect(stats, jnp.array([1e30, 1.0]), {}, jnp.ones(2, bool))
    assert not np.any(spiked) and after is stats


def _decision(weights, new_weights):
    n = len(weights)
    return Decision.of(
        weights=jnp.asarray(weights, jnp.float32),
        proposal=jnp.asarray(new_weights, jnp.float32),
        allowed=jnp.zeros(n, bool),
        valid=jnp.ones(n, bool),
        previous=jnp.zeros(n, jnp.float32),
        last_change=jnp.zeros(n, jnp.int32),
    )._replace(new_weights=jnp.asarray(new_weights, jnp.float32))


def test_a_cut_halves_the_weight_within_the_lower_bound_and_starts_a_cooling_period():
    guard = SpikeGuard.checked(**DEFAULTS)
    d = _decision([2.0, 2.0, 2.0], [2.2, 2.0, 2.0])
    cut = jax.jit(guard.cut)(
        d, step=jnp.int32(7), spiked=jnp.array([True, True, False]), low=jnp.array([0.5, 1.5, 0])
    )
    np.testing.assert_array_equal(cut.new_weights, [1.0, 1.5, 2.0])
    np.testing.assert_array_equal(cut.previous, [1.0, 1.5, 0.0])  # the cut is not rolled back
    np.testing.assert_array_equal(cut.last_change, [7, 7, 0])
    np.testing.assert_array_equal(cut.cut, [True, True, False])


@settings(max_examples=100, deadline=None)
@given(
    factor=st.floats(0.01, 0.99),
    weights=st.lists(st.floats(1e-6, 1e6), min_size=3, max_size=3),
    new=st.lists(st.floats(1e-6, 1e6), min_size=3, max_size=3),
    low_factor=st.floats(0.0, 1.0),
    spiked=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_a_cut_never_raises_a_weight(factor, weights, new, low_factor, spiked):
    guard = SpikeGuard.checked(**(DEFAULTS | dict(spike_factor=factor)))
    weights = np.array(weights, np.float32)
    low = (weights * np.float32(low_factor)).astype(np.float32)
    d = _decision(weights, new)
    out = guard.cut(d, step=jnp.int32(3), spiked=jnp.array(spiked), low=jnp.asarray(low))
    new_weights = np.asarray(out.new_weights)
    assert np.all(new_weights <= np.asarray(d.new_weights))
    assert np.all(new_weights[spiked] <= weights[spiked])
