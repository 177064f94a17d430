"""The controller's options of ``ao.guarded``: ratios only (``moves``), the start ramp
(``ramp_steps``), the spike guard's prior (``spike_prior``), scale normalization
(``normalize``), and the weight average that ``ao.distill`` freezes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run, seed_controller, with_values
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao

BASE = {"a": 1.0, "b": 2.0, "c": 0.5}
STEPS = 40


def losses_of(rows):
    rows = np.asarray(rows, np.float32)
    return {k: rows[:, i] for i, k in enumerate(BASE)}


def steady(steps=STEPS, seed=0, scale=(1.0, 3.0, 0.2)):
    noise = np.random.default_rng(seed).uniform(0.95, 1.05, (steps, 3))
    return losses_of(noise * np.asarray(scale))


def vectors(trace):
    return np.stack([trace["weights"][k] for k in BASE], axis=-1).astype(np.float64)


# ---------------------------------------------------------------- moves="ratios"

RATIOS = dict(ao.RELAXED) | dict(bounds=None, moves="ratios")


def test_ratios_only_keeps_the_total_while_the_ratios_move():
    rule = ao.uncertainty_rule(lr=0.5)
    _, free = run(ao.guarded(rule, BASE, **(dict(ao.RELAXED) | dict(bounds=None))), steady())
    _, kept = run(ao.guarded(rule, BASE, **RATIOS), steady())
    free, kept = vectors(free), vectors(kept)
    assert np.ptp(free.sum(axis=1)) > 1.0  # uncertainty weighting moves the scale ...
    np.testing.assert_allclose(kept.sum(axis=1), 3.5, rtol=1e-5)  # ... not under "ratios"
    # the ratios are the rule's: each row is the free rule's proposal, rescaled
    assert np.ptp(kept[:, 0] / kept[:, 1]) > 0.1


def test_ratios_only_the_spike_cut_lowers_the_scale_and_it_recovers_slowly():
    losses = steady(60)
    losses["b"] = with_values(losses["b"], 30, 300.0)
    weighting = ao.guarded(
        ao.uncertainty_rule(lr=0.2), BASE, **(RATIOS | dict(max_change=0.05, spike_threshold=3.0))
    )
    _, trace = run(weighting, losses)
    w = vectors(trace)
    total = w.sum(axis=1)
    np.testing.assert_allclose(total[:30], 3.5, rtol=1e-5)
    assert w[30, 1] == pytest.approx(0.5 * w[29, 1])  # the cut: b halved at once ...
    assert total[30] < 3.5 - 0.45 * w[29, 1]  # ... and the scale with it
    rises = np.diff(total[30:])
    assert np.all(rises <= 0.05 * total[30:-1] * (1 + 1e-5))  # back by max_change at most
    assert total[-1] > total[30] + 0.1 and np.all(total <= 3.5 * (1 + 1e-5))


def test_ratios_with_one_adaptive_term_leave_only_the_spike_guard():
    losses = steady(60)
    losses["a"] = with_values(losses["a"], 30, 300.0)
    weighting = seed_controller(
        BASE, adapt="a", moves="ratios", warmup_steps=0, cooling_period=5, min_stable_steps=0
    )
    _, trace = run(weighting, losses, grad_norms=np.ones(60, np.float32))
    a = trace["weights"]["a"]
    assert np.all(a[:30] == 1.0)  # the rule moves no ratio of a single term
    assert a[30] == pytest.approx(0.5)  # the spike guard cuts it
    # and it recovers, 5 % per landing, one landing per cooling period
    rises = np.diff(a[30:])
    assert np.all(rises >= 0) and np.all(rises <= 0.05 * a[30:-1] * (1 + 1e-5))
    assert a[-1] > 0.6


# ---------------------------------------------------------------- ramp_steps


def test_the_start_ramp_moves_the_base_the_weights_follow_over_calm_steps():
    guards = dict(ao.RELAXED) | dict(bounds=(0.4, 10.0))
    base = np.array(list(BASE.values()))
    ramp = base * (0.4 + 0.6 * np.minimum(np.arange(1, STEPS + 1), 10)[:, None] / 10)
    # a rule that proposes the base follows the ramped base up, one tenth per calm step, and
    # so does a rule that holds (steady losses): the ramp moves the base, not the rule
    for rule in (ao.base_rule(), ao.loss_ratio_rule(low_ratio=None)):
        weighting = ao.guarded(rule, BASE, ramp_steps=10, **guards)
        np.testing.assert_allclose(jax.tree.leaves(weighting.init().weights), 0.4 * base)
        _, trace = run(weighting, steady())
        np.testing.assert_allclose(vectors(trace), ramp, rtol=1e-5)
        assert float(trace["metrics"]["start_ramp/a"][-1]) == 1.0
    # a rule that lowers the weights works around the ramped base and stays under it
    lower = ao.guarded(ao.uncertainty_rule(lr=0.5), BASE, ramp_steps=10, **guards)
    _, trace = run(lower, steady())
    w = vectors(trace)
    assert np.all(w[:10] <= ramp[:10] * (1 + 1e-6)) and np.all(w >= 0.4 * base * (1 - 1e-6))


def test_the_start_ramp_waits_on_unstable_steps_and_a_cut_keeps_its_factor():
    losses = steady(40)
    losses["a"] = with_values(losses["a"], 4, 300.0)
    weighting = ao.guarded(
        ao.loss_ratio_rule(low_ratio=None),
        BASE,
        ramp_steps=20,
        spike_prior=0.25,
        **(dict(ao.RELAXED) | dict(spike_threshold=3.0, cooling_period=100)),
    )
    _, trace = run(weighting, losses)
    a, progress = trace["weights"]["a"], trace["metrics"]["start_ramp/a"]
    assert a[3] == pytest.approx(0.4 + 0.6 * 4 / 20)
    assert a[4] == pytest.approx(0.4)  # the cut: half the weight, floored at the bound
    assert progress[4] == progress[3]  # the spike step does not advance the ramp
    assert np.all(np.diff(progress) >= 0)  # and a cut does not send it back
    # after the cut the weight keeps its factor to the ramped base while the ramp goes on
    ramped = 0.4 + 0.6 * progress[5:]
    np.testing.assert_allclose(a[5:] / ramped, a[5] / ramped[0], rtol=1e-5)
    # after the spike the loss variance is high: the ramp holds until it calms down
    assert np.any(np.diff(progress[5:]) == 0) and a[-1] < 1.0
    assert np.all(trace["weights"]["b"] <= 2.0)


# ---------------------------------------------------------------- spike_prior


@pytest.mark.parametrize("prior, cut", [(None, False), (0.25, True)])
def test_a_prior_lets_the_spike_guard_judge_from_the_second_value(prior, cut):
    losses = steady(12)
    losses["a"] = with_values(losses["a"], 2, 5.0)  # a jump by 5 at the third step
    weighting = ao.guarded(
        ao.base_rule(), BASE, **(dict(ao.RELAXED) | dict(spike_threshold=3.0, spike_prior=prior))
    )
    _, trace = run(weighting, losses)
    assert (trace["weights"]["a"][2] == 0.5) == cut
    assert trace["metrics"]["spikes/a"][-1] == int(cut)
    assert trace["metrics"]["spikes/b"][-1] == 0  # 5 % noise is no spike, even early


# ---------------------------------------------------------------- normalize


def noisy_heads(steps=200, seed=0):
    """a falls 100-fold from 1000; b is noise around 1 it cannot learn; c falls from 1e-3."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    a = 1000.0 * np.exp(-t / 40)
    b = rng.uniform(0.9, 1.1, steps)
    c = 1e-3 * np.exp(-t / 40)
    return losses_of(np.stack([a, b, c], axis=1))


def test_first_loss_normalization_brings_terms_to_one_scale_and_keeps_a_noisy_share():
    _, trace = run(ao.normalized_weights(BASE), noisy_heads())
    w = vectors(trace)
    first = np.array([1000.0, noisy_heads()["b"][0], 1e-3])
    expected = np.array(list(BASE.values())) / first
    expected *= 3.5 / expected.sum()
    np.testing.assert_allclose(w, np.broadcast_to(expected, w.shape), rtol=1e-5)
    # a 1 / loss method hands the noisy term's share away as the others fall
    _, uw = run(ao.uncertainty_weights(BASE, lr=0.5), noisy_heads())
    share = vectors(uw)[:, 1] / vectors(uw).sum(axis=1)
    assert share[-1] < 0.01 * share[10]


def test_running_normalization_follows_the_losses_and_other_rules_take_it_as_base():
    _, trace = run(ao.normalized_weights(BASE, reference="running"), noisy_heads())
    w = vectors(trace)
    np.testing.assert_allclose(w.sum(axis=1), 3.5, rtol=1e-5)
    assert w[-1, 1] / w[-1].sum() < 0.5 * w[0, 1] / w[0].sum()
    # the loss-ratio rule around the normalized base: bounds of 0.4 to 2 reach a ratio of 1e6
    weighting = ao.stable_weights(BASE, normalize="first_loss", warmup_steps=0)
    _, seeded = run(weighting, noisy_heads(), grad_norms=np.ones(200, np.float32))
    s = vectors(seeded)[-1]
    assert s[2] / s[0] > 1e5


# ---------------------------------------------------------------- distilled weights


def test_distill_are_the_running_mean_of_the_normalized_weights():
    weighting = ao.uncertainty_weights(BASE, lr=0.3, ema_decay=0.9)
    state, trace = run(weighting, steady())
    w = vectors(trace)
    r = w / w.sum(axis=1, keepdims=True)
    mean = r[0]
    for t in range(1, len(r)):
        rate = 0.1 / (1 - 0.9 ** (t + 1))
        mean = (1 - rate) * mean + rate * r[t]
    fixed = ao.distill(state)
    np.testing.assert_allclose(jax.tree.leaves(fixed), mean * 3.5, rtol=1e-5)
    np.testing.assert_allclose(trace["metrics"]["weight_average/a"][-1], mean[0], rtol=1e-5)
    doubled = ao.distill(state, total=7.0)
    np.testing.assert_allclose(jax.tree.leaves(doubled), mean * 7.0, rtol=1e-5)
    # the initial state freezes the base weights
    np.testing.assert_allclose(
        jax.tree.leaves(ao.distill(weighting.init())), list(BASE.values()), rtol=1e-6
    )


def test_distill_of_a_batched_state_and_a_bad_total():
    weighting = ao.uncertainty_weights(BASE, lr=0.3)
    states = jax.vmap(lambda _: weighting.init())(jnp.arange(4))
    fixed = ao.distill(states)
    assert np.shape(fixed["a"]) == (4,)
    with pytest.raises(ValueError, match="total"):
        ao.distill(states, total=-1.0)


# ---------------------------------------------------------------- contract of the options

OPTIONS = dict(
    moves="ratios",
    ramp_steps=3,
    spike_threshold=3.0,
    spike_prior=0.25,
    normalize="first_loss",
    bounds=(0.5, 2.0),
    max_change=0.1,
    warmup_steps=2,
    cooling_period=2,
    min_stable_steps=0,
)
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e30, -1e30, 1e-30, 65504.0 * 4]
VALUE = st.one_of(st.sampled_from(SPECIAL), st.floats(1e-3, 1e3))
SEQUENCE = st.lists(st.lists(VALUE, min_size=3, max_size=3), min_size=8, max_size=8).map(
    lambda rows: np.asarray(rows, np.float32)
)


def _scan(weighting, losses, norms, dtype):
    def step(state, row):
        loss, norm = (x.astype(dtype) for x in row)
        weights, state = weighting.update(
            dict(zip(BASE, loss, strict=True)), state, grad_norms=dict(zip(BASE, norm, strict=True))
        )
        return state, jnp.stack(jax.tree.leaves(weights)).astype(jnp.float32)

    return jax.lax.scan(step, weighting.init(), (losses, norms))


@jax.jit
def _contract(losses, norms):
    full = ao.stable_weights(BASE, **(OPTIONS | {"normalize": "running", "ema_decay": 0.5}))
    half = ao.guarded(ao.uncertainty_rule(lr=0.5), BASE, dtype=jnp.bfloat16, **OPTIONS)
    return _scan(full, losses, norms, jnp.float32), _scan(half, losses, norms, jnp.float16)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(losses=SEQUENCE, norms=SEQUENCE)
def test_contract_any_input_keeps_the_state_finite_with_every_option(losses, norms):
    for state, weights in _contract(losses, norms):
        for leaf in jax.tree.leaves((state, weights, ao.metrics(state))):
            if jnp.issubdtype(leaf.dtype, jnp.inexact):
                assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
        assert np.all(np.asarray(weights) >= 0)
        fixed = ao.distill(state)
        assert np.all(np.isfinite(np.asarray(jax.tree.leaves(fixed), np.float32)))


def test_options_under_jit_vmap_and_no_recompilation():
    weighting = ao.stable_weights(BASE, **OPTIONS)
    update = jax.jit(jax.vmap(weighting.update))
    states = jax.vmap(lambda _: weighting.init())(jnp.arange(2))
    rng = np.random.default_rng(0)
    for _ in range(4):
        losses = {k: jnp.asarray(rng.uniform(0.5, 2.0, 2), jnp.float32) for k in BASE}
        norms = {k: jnp.asarray(rng.uniform(0.5, 2.0, 2), jnp.float32) for k in BASE}
        weights, states = update(losses, states, grad_norms=norms)
    assert update._cache_size() == 1
    assert np.shape(weights["a"]) == (2,)
    assert np.all(np.isfinite(np.asarray(states.weight_average)))
    # a corrupted checkpoint heals: the progress of the ramp and the average restart
    nan = jnp.full_like(states.weight_average, jnp.nan)
    corrupt = states._replace(start_ramp=nan, weight_average=nan)
    weights, healed = update(losses, corrupt, grad_norms=norms)
    assert np.all(np.asarray(healed.start_ramp) == 1.0)
    assert np.all(np.isfinite(np.asarray(healed.weight_average)))
    assert update._cache_size() == 1


@pytest.mark.parametrize(
    "setting, match",
    [
        (dict(moves="scale"), "moves"),
        (dict(normalize="first"), "normalize"),
        (dict(ramp_steps=-1), "ramp_steps"),
        (dict(ramp_steps=2.5), "ramp_steps"),
        (dict(spike_prior=0.0), "spike_prior"),
    ],
)
def test_bad_settings_fail_at_construction(setting, match):
    with pytest.raises(ValueError, match=match):
        ao.guarded(ao.base_rule(), BASE, **setting)


# ---------------------------------------------------------------- cooling_period


def test_the_cooling_period_follows_a_change_and_does_not_delay_the_first():
    # lr annealing needs its first estimate at once: a cooling period counted from step 0
    # held it for cooling_period steps (issue 15, item 5)
    weighting = ao.guarded(
        ao.uncertainty_rule(lr=0.5), BASE, **(dict(ao.RELAXED) | dict(cooling_period=10))
    )
    _, trace = run(weighting, steady(25))
    changes = np.flatnonzero(np.diff(np.concatenate([[1.0], trace["weights"]["a"]])) != 0)
    np.testing.assert_array_equal(changes, [0, 10, 20])  # steps 1, 11, 21
