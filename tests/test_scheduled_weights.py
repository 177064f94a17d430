"""Scheduled base weights: a term's base weight as a callable of the step (optax schedules).

Terms that enter at a step (an adversarial loss after pretraining), anneal (a KL weight from 1
to 0.1) or leave; the guards, the bounds, the spike guard and ``ao.disable`` follow the
scheduled base; bad schedules fail at construction or are healed and counted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import run, seed_controller
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao

FAST = dict(warmup_steps=0, cooling_period=0, min_stable_steps=0)
ENTRY = 30


def enters_at(step, value=1.0):
    """A base weight of 0 until ``step``, then ``value``: HiFi-GAN's adversarial stage."""
    return lambda count: jnp.where(count >= step, value, 0.0)


def gan_losses(steps=80, entry=ENTRY):
    """Mel loss falling slowly; the adversarial loss NaN (not computed) before entry, then 50x
    the mel loss; the global gradient norm jumps 20x when it enters."""
    t = np.arange(steps, dtype=np.float32)
    adv = np.where(t >= entry, 2.0 + 0.05 * np.sin(t), np.nan).astype(np.float32)
    norms = np.where(t >= entry, 20.0, 1.0).astype(np.float32)
    return {"mel": 1.0 / (1.0 + 0.01 * t), "adv": adv}, norms


@pytest.fixture(scope="module")
def gan_run():
    """The spike guard on (stable_weights' default), the adversarial term entering at 30."""
    weighting = seed_controller({"mel": 45.0, "adv": enters_at(ENTRY)})
    assert float(weighting.init().weights["adv"]) == 0.0
    losses, norms = gan_losses()
    return run(weighting, losses, grad_norms=norms)


def test_a_term_is_absent_until_its_base_turns_positive_then_enters_at_its_base(gan_run):
    state, trace = gan_run
    adv, metrics = trace["weights"]["adv"], trace["metrics"]
    # the weights returned by update k weight step k + 1: 0 until the entry step
    np.testing.assert_array_equal(adv[: ENTRY - 1], 0.0)
    assert adv[ENTRY - 1] == 1.0  # enters at its base
    # the losses read before entry (NaN: the discriminator was not run) are not counted...
    assert int(state.counters.nonfinite.sum()) == 0
    np.testing.assert_array_equal(metrics["loss_ema/adv"][:ENTRY], 0.0)
    # ...and its statistics hold only the losses of the steps where it was present
    assert int(state.stats.loss_count[0]) == 80 - ENTRY  # leaf order: adv, mel
    assert float(state.stats.first_loss[0]) == pytest.approx(2.0, abs=0.06)


def test_a_term_entering_mid_run_is_not_a_spike(gan_run):
    """The adversarial term enters with a loss 50x the mel loss and the global gradient norm
    jumps 20x: with the spike guard on, nobody's weight is cut."""
    state, trace = gan_run
    assert int(state.counters.spikes.sum()) == 0
    np.testing.assert_array_equal(trace["weights"]["mel"], 45.0)
    # the same jump of the gradient norm without a schedule is a spike: the test can fail
    losses, norms = gan_losses()
    losses["adv"] = np.full(80, 2.0, np.float32)
    state, _ = run(seed_controller({"mel": 45.0, "adv": 1.0}), losses, grad_norms=norms)
    assert int(state.counters.spikes.sum()) > 0


def test_under_the_default_prior_a_term_entering_is_not_a_spike():
    """``stable_weights``' default judges from a term's second value with a prior; a scheduled
    term still waits for its own values, and the gradient-norm statistics restart at the
    first step whose loss holds the new term."""
    losses, norms = gan_losses()
    weighting = ao.stable_weights({"mel": 45.0, "adv": enters_at(ENTRY)})
    state, trace = run(weighting, losses, grad_norms=norms)
    assert int(state.counters.spikes.sum()) == 0
    assert trace["weights"]["adv"][ENTRY - 1] == pytest.approx(0.4)  # enters at its floor
    # the same jump one step before the new term is read is a spike: the test can fail
    early = np.where(np.arange(80) >= ENTRY - 1, 20.0, 1.0).astype(np.float32)
    state, _ = run(weighting, losses, grad_norms=early)
    assert int(state.counters.spikes.sum()) > 0


def test_kl_annealing_bounds_and_disable_follow_the_scheduled_base():
    kl = optax.linear_schedule(1.0, 0.1, transition_steps=50)
    step_up = optax.piecewise_constant_schedule(1.0, {60: 3.0})  # x3 at step 60
    weighting = seed_controller({"kl": kl, "up": step_up}, bounds=(0.5, 2.0), **FAST)
    steps = 80
    rising = np.linspace(1.0, 3.0, steps, dtype=np.float32)  # the rule pushes the weights up
    state, trace = run(weighting, {"kl": rising, "up": rising})
    base = np.asarray([kl(k + 1) for k in range(steps)])
    np.testing.assert_allclose(trace["metrics"]["base_weight/kl"], base, rtol=1e-6)
    kl_weight = trace["weights"]["kl"]
    assert np.all(kl_weight >= 0.5 * base * (1 - 1e-6))
    assert np.all(kl_weight <= 2.0 * base * (1 + 1e-6))
    assert np.any(kl_weight > base * 1.2)  # it adapted above its base
    # the adapted factor weight / base rides a jump of the base (the step moves it by at most
    # max_change, 5 %, around it)
    up = trace["weights"]["up"]
    assert up[57] > 1.2
    assert 3 * up[58] * 0.95 <= up[59] <= 3 * up[58] * 1.05
    off = ao.disable(state)
    assert float(off.weights["kl"]) == pytest.approx(0.1)
    assert float(off.weights["up"]) == 3.0


@pytest.mark.parametrize(
    "schedule, match",
    [
        (lambda count: -1.0, "finite and >= 0"),
        (lambda count: jnp.nan, "finite and >= 0"),
        (lambda count: jnp.ones(2), "scalar"),
        (lambda count: 1.0 if count < 10 else 0.0, "fails on an int32 step"),
        (lambda: 1.0, "fails on an int32 step"),
        ("1.0", "real number"),
    ],
)
def test_a_bad_schedule_fails_at_construction_naming_the_term(schedule, match):
    with pytest.raises(ValueError, match=r"base_weights\['adv'\].*" + match):
        seed_controller({"mel": 1.0, "adv": schedule})


def test_a_schedule_that_goes_bad_later_is_healed_and_counted():
    def schedule(count):
        return jnp.where(count == 5, -1.0, jnp.where(count == 7, jnp.nan, 0.5))

    weighting = seed_controller({"mel": 1.0, "adv": schedule}, **FAST)
    state, trace = run(weighting, {"mel": np.ones(10, np.float32), "adv": np.ones(10, np.float32)})
    assert int(ao.metrics(state)["healed/adv"]) == 2
    assert int(ao.metrics(state)["healed/mel"]) == 0
    np.testing.assert_array_equal(trace["metrics"]["base_weight/adv"], 0.5)
    assert np.all(np.isfinite(trace["weights"]["adv"]))


def test_jit_vmap_over_seeds_without_recompilation():
    weighting = seed_controller(
        {"mel": 45.0, "adv": enters_at(3), "kl": optax.cosine_decay_schedule(1.0, 10)}, **FAST
    )
    update = jax.jit(jax.vmap(weighting.update))
    batch = jax.vmap(lambda _: weighting.init())(jnp.arange(4))
    losses = {"mel": jnp.linspace(1, 2, 4), "adv": jnp.ones(4), "kl": jnp.ones(4)}
    for _ in range(4):
        weights, batch = update(losses, batch, grad_norms=jnp.ones(4))
    assert update._cache_size() == 1
    np.testing.assert_array_equal(weights["adv"], 1.0)
    assert int(ao.metrics(batch)["step"][0]) == 4


def test_balancers_take_schedules_too():
    weighting = ao.dwa_weights({"mel": 1.0, "adv": enters_at(5)})
    _, trace = run(weighting, gan_losses(steps=20, entry=5)[0])
    assert np.all(trace["weights"]["adv"][:4] == 0.0)
    assert np.all(trace["weights"]["adv"][5:] > 0.0)
    assert np.all(np.isfinite(trace["weights"]["mel"]))


# a schedule that visits every kind of value, NaN, +/-Inf, negative and huge included
TABLE = np.array([0, 1, -1, np.nan, 0, 2, np.inf, 1e-30, 0, 3e38, -np.inf, 0.5], np.float32)


def nasty(count):
    return jnp.asarray(TABLE)[count % TABLE.size]


NASTY = seed_controller({"mel": 1.0, "adv": nasty}, **FAST)


@settings(max_examples=10, deadline=None)
@given(
    st.lists(
        st.floats(-1e30, 1e30) | st.sampled_from([0.0, np.nan, np.inf, -np.inf]),
        min_size=24,
        max_size=24,
    )
)
def test_any_schedule_values_and_losses_leave_the_state_finite(losses):
    state, trace = run(
        NASTY,
        {"mel": np.ones(24, np.float32), "adv": np.asarray(losses, np.float32)},
        grad_norms=np.ones(24, np.float32),
    )
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert np.all(np.isfinite(leaf))
    adv, base = trace["weights"]["adv"], trace["metrics"]["base_weight/adv"]
    assert np.all(adv >= 0)
    np.testing.assert_array_equal(adv[base == 0], 0.0)
    assert int(ao.metrics(state)["healed/adv"]) == 8  # -1, NaN, +Inf, -Inf, twice each


def test_a_weighting_with_schedules_builds_under_jit():
    """Built inside a jitted function (one program for several runs), the schedule is probed
    eagerly; a value closed over from the trace is checked at update instead."""

    @jax.jit
    def first_weights(scale):
        weighting = seed_controller({"mel": 1.0, "adv": enters_at(3), "kl": lambda c: scale})
        return weighting.init().weights

    weights = first_weights(jnp.float32(0.5))
    assert (float(weights["adv"]), float(weights["kl"])) == (0.0, 0.5)


def paused(first, pause, back):
    """A base of 1 from ``first``, 0 from ``pause`` (a paused adversarial stage), 1 again
    from ``back``."""
    return lambda count: jnp.where((count >= first) & ((count < pause) | (count >= back)), 1.0, 0.0)


def test_a_term_returning_after_a_pause_enters_afresh_and_its_jump_is_no_spike():
    """The guide: a term that enters starts with empty statistics. A return after a pause is
    an entry too: the loss back at 10x its old level is not judged against the statistics
    from before the pause (which would take it for a spike and halve the weight)."""
    steps, first, pause, back = 160, 10, 100, 120
    t = np.arange(steps)
    adv = np.where(t >= back, 5.0, 0.5) + 0.01 * np.sin(t)
    adv = np.where((t >= first) & ((t < pause) | (t >= back)), adv, np.nan).astype(np.float32)
    losses = {"mel": np.full(steps, 1.0, np.float32), "adv": adv}
    weighting = ao.stable_weights({"mel": 1.0, "adv": paused(first, pause, back)})
    state, trace = run(weighting, losses)
    adv_weights = trace["weights"]["adv"]
    assert int(state.counters.spikes.sum()) == 0
    assert int(state.counters.nonfinite.sum()) == 0
    # at its return it is at its floor (the start ramp restarts), as at its first entry
    assert adv_weights[back - 1] == pytest.approx(adv_weights[first - 1]) == pytest.approx(0.4)
    # its statistics hold only the losses since its return
    assert int(state.stats.loss_count[0]) == steps - back  # leaf order: adv, mel
    assert float(state.stats.first_loss[0]) == pytest.approx(5.0, abs=0.02)
    # while paused its statistics are empty, and its weight 0
    np.testing.assert_array_equal(trace["metrics"]["loss_ema/adv"][pause:back], 0.0)
    np.testing.assert_array_equal(adv_weights[pause : back - 1], 0.0)
    # the control: without the pause, the same 10x jump after 90 values is a spike
    steady = {"mel": losses["mel"], "adv": np.where(t >= first, adv, np.nan).astype(np.float32)}
    steady["adv"][pause:back] = 0.5
    state, _ = run(ao.stable_weights({"mel": 1.0, "adv": enters_at(first)}), steady)
    assert int(state.counters.spikes[0]) > 0
