"""Property tests: invariants of the guards over arbitrary loss and gradient-norm sequences."""

import functools

import chex
import jax
import numpy as np
from helpers import run, seed_controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptive_optax as ao

BASE = {"a": 2.5, "b": 0.1}
STEPS = 48  # fixed, so one compilation serves every example
WARMUP, COOLING, MAX_CHANGE = 5, 3, 0.05
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -1e30, 1e30, 1e-30, 3e38, -3e38]

values = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(-1e3, 1e3, allow_nan=False, width=32),
    st.floats(0.5, 1.5, width=32),
)
sequences = st.lists(values, min_size=STEPS, max_size=STEPS)
dtypes = st.sampled_from([np.float32, np.float16, "bfloat16"])


@functools.cache
def weighting():
    # relaxed gates so that adjustments, rejections and rollbacks all happen within 48 steps
    return seed_controller(
        BASE,
        warmup_steps=WARMUP,
        cooling_period=COOLING,
        min_stable_steps=1,
        variance_threshold=10.0,
        max_change=MAX_CHANGE,
    )


def inputs(a, b, grads, dtype):
    dtype = jax.numpy.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        losses = {"a": np.asarray(a, dtype), "b": np.asarray(b, dtype)}
        return losses, np.asarray(grads, dtype)


def check_invariants(state, trace):
    chex.assert_tree_all_finite((state, trace))
    m = trace["metrics"]
    for name, base in BASE.items():
        w = np.concatenate([[np.float32(base)], trace["weights"][name]])
        assert np.all(w >= np.float32(0.4 * base)) and np.all(w <= np.float32(2.0 * base))
        ratio = w[1:] / w[:-1]
        adjusted = np.flatnonzero(np.diff(np.concatenate([[0], m[f"adjustments/{name}"]])))
        rolled = np.flatnonzero(np.diff(np.concatenate([[0], m[f"rollbacks/{name}"]])))
        cut = np.flatnonzero(np.diff(np.concatenate([[0], m[f"spikes/{name}"]])))
        # an adjustment moves a weight by at most max_change ...
        alone = np.setdiff1d(adjusted, cut)
        assert np.all(np.abs(ratio[alone] - 1) <= MAX_CHANGE * (1 + 1e-5))
        # ... a spike halves it at once, down to the lower bound at most ...
        low = np.float32(0.4 * base)
        for i in cut:
            assert w[i + 1] <= w[i] and w[i + 1] >= min(np.float32(0.5) * w[i], low) * (1 - 1e-6)
        # ... a rollback restores the weight before the adjustment it undoes ...
        for i in rolled:
            if not np.any((cut < i) & (cut >= adjusted[adjusted < i][-1])):
                assert w[i + 1] == w[adjusted[adjusted < i][-1]]
        # ... and nothing else moves a weight
        assert set(np.flatnonzero(ratio != 1)) <= set(adjusted) | set(rolled) | set(cut)
        steps = adjusted + 1
        assert np.all(steps > WARMUP)
        assert np.all(np.diff(steps) >= COOLING)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=sequences, b=sequences, grads=sequences, dtype=dtypes)
def test_guards_hold_for_any_input(a, b, grads, dtype):
    losses, grad_norms = inputs(a, b, grads, dtype)
    state, trace = run(weighting(), losses, grad_norms=grad_norms)
    check_invariants(state, trace)
    assert int(state.step) == STEPS


RAMP = 10


@functools.cache
def default_weighting():
    # the default's slow start and spike prior, with a short ramp and the same relaxed gates
    return ao.stable_weights(
        BASE,
        ramp_steps=RAMP,
        warmup_steps=WARMUP,
        cooling_period=COOLING,
        min_stable_steps=1,
        variance_threshold=10.0,
        max_change=MAX_CHANGE,
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=sequences, b=sequences, grads=sequences, dtype=dtypes)
def test_the_slow_start_holds_for_any_input(a, b, grads, dtype):
    losses, grad_norms = inputs(a, b, grads, dtype)
    state, trace = run(default_weighting(), losses, grad_norms=grad_norms)
    chex.assert_tree_all_finite((state, trace))
    m = trace["metrics"]
    for name, base in BASE.items():
        w, ramp = trace["weights"][name], m[f"start_ramp/{name}"]
        low, base = np.float32(0.4 * base), np.float32(base)
        assert np.all(w >= low * (1 - 1e-6)) and np.all(w <= 2 * base * (1 + 1e-6))
        assert np.all((ramp >= 0) & (ramp <= 1))
        # under the ceiling while the ramp lasts; the ceiling rises one RAMP-th per calm step
        ramping = ramp < 1
        ceiling = low + (base - low) * ramp
        assert np.all(w[ramping] <= ceiling[ramping] * (1 + 1e-5))
        rise = np.diff(np.concatenate([[0.0], ramp]))
        assert np.all(rise <= 1 / RAMP + 1e-6)
        # it falls only where the spike guard cut the weight
        cut = np.diff(np.concatenate([[0], m[f"spikes/{name}"]])) > 0
        assert not np.any((rise < 0) & ~cut)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=sequences, b=sequences, grads=sequences)
def test_disabled_means_base_weights(a, b, grads):
    losses, grad_norms = inputs(a, b, grads, np.float32)
    state, trace = run(weighting(), losses, grad_norms, state=ao.disable(weighting().init()))
    chex.assert_tree_all_finite((state, trace))
    for name, base in BASE.items():
        assert np.all(trace["weights"][name] == np.float32(base))
    assert int(state.counters.adjustments.sum()) == 0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=sequences, b=sequences)
def test_without_gradient_norms_invariants_hold(a, b):
    losses, _ = inputs(a, b, b, np.float32)
    state, trace = run(weighting(), losses)
    check_invariants(state, trace)
    assert int(state.stats.grad_count.sum()) == 0


@settings(max_examples=20, deadline=None)
@given(
    value=st.sampled_from(SPECIAL),
    position=st.integers(0, 1),
    field=st.sampled_from(["weights", "previous_weights"]),
)
def test_a_corrupted_state_heals_in_one_step(value, position, field):
    w = weighting()
    state = w.init()
    vector = np.array([2.5, 0.1], np.float32)
    with np.errstate(over="ignore"):
        vector[position] = value
    if field == "weights":
        state = state._replace(weights={"a": vector[0], "b": vector[1]})
    else:
        state = state._replace(previous_weights={"a": vector[0], "b": vector[1]})
    _, new_state = jax.jit(w.update)({"a": 1.0, "b": 1.0}, state)
    chex.assert_tree_all_finite(new_state)
