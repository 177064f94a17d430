"""The spike guard: an immediate cut on a spike of the loss or the gradient norm, within the
bounds, past every slow gate; statistics a spike does not inflate; slow recovery."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TTS_BASE, run, seed_controller, tts_losses, with_values

import adaptive_optax as ao

STEPS = 300
SPIKE_AT = 200


def wobble(steps, scale=1.0, seed=0):
    """A noisy, steady sequence (5 % noise): no spike, by the guard's floor on the spread."""
    noise = np.random.default_rng(seed).standard_normal(steps)
    return (scale * (1.0 + 0.05 * noise)).astype(np.float32)


@functools.cache
def seed_weighting(**settings):
    return seed_controller(TTS_BASE, adapt="mel", **settings)


def test_a_gradient_spike_cuts_the_weight_at_once_past_every_slow_gate():
    grads = with_values(wobble(STEPS), SPIKE_AT, 30.0)
    # warmup not over, a cooling period just started, no stable steps: none holds the cut back
    weighting = seed_weighting(warmup_steps=STEPS, cooling_period=STEPS, min_stable_steps=STEPS)
    _, trace = run(weighting, tts_losses(wobble(STEPS, seed=1)), grad_norms=grads)
    mel, m = trace["weights"]["mel"], trace["metrics"]
    assert np.all(mel[:SPIKE_AT] == 2.5)
    assert mel[SPIKE_AT] == pytest.approx(1.25)  # halved at the spike's step: 0.5 x 2.5
    assert m["spikes/mel"][SPIKE_AT] == 1 and m["spikes/mel"][SPIKE_AT - 1] == 0
    assert m["adjustments/mel"][-1] == 0  # a cut is not an adjustment
    assert m["steps_since_change/mel"][SPIKE_AT] == 0  # it starts a cooling period
    # the other terms do not adapt: a global norm cuts only the adaptive weights
    assert np.all(trace["weights"]["stop"] == 1.0)


def test_a_loss_spike_cuts_that_term_only():
    weighting = seed_controller(TTS_BASE, spike_threshold=3.0)
    losses = tts_losses(wobble(STEPS, seed=1))
    losses["stop"] = with_values(wobble(STEPS, 0.3, seed=2), SPIKE_AT, 30.0)
    _, trace = run(weighting, losses)
    assert trace["weights"]["stop"][SPIKE_AT] == pytest.approx(
        0.5 * trace["weights"]["stop"][SPIKE_AT - 1]
    )
    assert trace["metrics"]["spikes/mel"][-1] == 0
    assert trace["metrics"]["spikes/attention"][-1] == 0


def test_a_cut_stays_inside_the_bounds():
    grads = wobble(STEPS)
    grads[SPIKE_AT::10] = 1e3  # spike after spike
    _, trace = run(seed_weighting(), tts_losses(wobble(STEPS, seed=1)), grad_norms=grads)
    mel = trace["weights"]["mel"]
    assert mel.min() == pytest.approx(1.0)  # the floor, 0.4 x 2.5, not 2.5 / 2**n
    assert trace["metrics"]["spikes/mel"][-1] >= 3


def test_a_spike_does_not_inflate_the_statistics():
    """The same spike twice, far apart: judged the same, since the first moved no baseline."""
    grads = wobble(STEPS + 100)
    grads[[SPIKE_AT - 60, SPIKE_AT + 60]] = 30.0
    state, trace = run(
        seed_weighting(spike_factor=0.9, bounds=None),
        tts_losses(wobble(STEPS + 100, seed=1)),
        grad_norms=grads,
    )
    spikes = np.diff(np.concatenate([[0], trace["metrics"]["spikes/mel"]]))
    assert set(np.flatnonzero(spikes)) == {SPIKE_AT - 60, SPIKE_AT + 60}
    # the log-scale mean stays near log(1) = 0: the spike entered clipped, at mean + 3 std
    assert abs(float(state.spike_stats.grad.mean[1])) < 0.05


def test_a_slow_rise_is_not_a_spike():
    grads = np.exp(np.linspace(0.0, 3.0, STEPS)).astype(np.float32)  # 20x over 300 steps
    _, trace = run(seed_weighting(), tts_losses(wobble(STEPS, seed=1)), grad_norms=grads)
    assert trace["metrics"]["spikes/mel"][-1] == 0


def test_recovery_goes_through_the_usual_gates():
    """After a cut, the weight comes back at most max_change per cooling period."""
    weighting = ao.guarded(
        ao.relative_ratio_rule(),
        TTS_BASE,
        adapt="mel",
        warmup_steps=10,
        cooling_period=20,
        min_stable_steps=5,
        spike_threshold=3.0,
    )
    steps = 450  # 14 steps of 5 %, one per cooling period, take the weight from 1.25 to 2.5
    grads = with_values(wobble(steps), 100, 30.0)
    _, trace = run(weighting, tts_losses(np.full(steps, 1.0, np.float32)), grad_norms=grads)
    mel = trace["weights"]["mel"]
    assert mel[100] == pytest.approx(1.25)
    moves = np.flatnonzero(np.diff(mel[100:]) != 0) + 101
    assert np.all(np.diff(mel[100:]) >= 0)  # back up, never down again
    assert np.all(np.diff(moves) >= 20) and moves[0] >= 120  # one step per cooling period
    ratios = mel[moves] / mel[moves - 1]
    np.testing.assert_allclose(ratios[:-1], 1.05, rtol=1e-5)  # the last lands on the base
    assert 1.0 < ratios[-1] <= 1.05 * (1 + 1e-5)
    assert mel[-1] == pytest.approx(2.5)  # home, the base weight


def test_no_spike_guard_when_relaxed():
    grads = with_values(wobble(STEPS), SPIKE_AT, 1e3)
    for weighting in (
        seed_weighting(spike_threshold=None),
        ao.guarded(ao.loss_ratio_rule(), TTS_BASE, **ao.RELAXED),
    ):
        state, _ = run(weighting, tts_losses(wobble(STEPS, seed=1)), grad_norms=grads)
        assert int(state.counters.spikes.sum()) == 0


def test_a_rollback_never_undoes_a_cut():
    steps = SPIKE_AT + 2  # the spike, then a NaN loss within the cooling period
    grads = with_values(wobble(steps), SPIKE_AT, 30.0)
    losses = tts_losses(with_values(wobble(steps, seed=1), SPIKE_AT + 1, np.nan))
    state, trace = run(seed_weighting(), losses, grad_norms=grads)
    assert trace["metrics"]["spikes/mel"][-1] == 1
    assert trace["weights"]["mel"][SPIKE_AT + 1] == trace["weights"]["mel"][SPIKE_AT]
    assert float(ao.rollback(state).weights["mel"]) == float(state.weights["mel"])


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(spike_threshold=0.0), r"spike_threshold must be in \(0, inf\], got 0"),
        (dict(spike_threshold="3"), r"spike_threshold must be a real number"),
        (dict(spike_factor=1.0), r"spike_factor must be in \(0, 1\), got 1"),
        (dict(spike_factor=0.0), r"spike_factor must be in \(0, 1\), got 0"),
        (dict(spike_decay=1.0), r"spike_decay must be in \[0, 1\), got 1"),
    ],
)
def test_bad_spike_settings_fail_at_construction(settings, match):
    with pytest.raises(ValueError, match=match):
        seed_controller(TTS_BASE, **settings)


def test_spike_guard_under_vmap_with_traced_settings_and_no_recompilation():
    weighting = seed_weighting()
    update = jax.jit(jax.vmap(chex.assert_max_traces(weighting.update, n=1)))
    states = jax.vmap(lambda _: weighting.init())(jnp.arange(2))
    for t in range(30):
        losses = {name: jnp.ones(2) for name in TTS_BASE}
        norms = jnp.array([1.0, 50.0 if t == 25 else 1.0])
        _, states = update(losses, states, grad_norms=norms)
    np.testing.assert_array_equal(np.asarray(states.counters.spikes)[:, 1], [0, 1])

    @jax.jit
    def traced(threshold, state):
        w = seed_controller(TTS_BASE, adapt="mel", spike_threshold=threshold)
        return w.update({name: 1.0 for name in TTS_BASE}, state, grad_norms=1.0)

    _, state = traced(jnp.float32(3.0), weighting.init())
    _, state = traced(jnp.float32(4.0), state)
    assert traced._cache_size() == 1


def test_spike_statistics_stay_finite_for_hostile_values():
    values = np.array([0.0, -1.0, np.nan, np.inf, 1e-45, 6.8e-39, 3e38, 1e-30] * 10, np.float32)
    state, _ = run(seed_weighting(), tts_losses(values), grad_norms=values[::-1].copy())
    chex.assert_tree_all_finite(state.spike_stats)
    assert int(state.spike_stats.grad.count[1]) == int(
        np.sum((values >= 1.2e-38) & np.isfinite(values))
    )
