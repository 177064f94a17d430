"""The rules of the seed: the legacy tanh rule matches the original formula step for step;
the unguarded controller moves 30 % per step; rules run under any guard."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TTS_BASE, change_steps, falling, rising, run, tts_losses

import adaptive_optax as ao


def original_tanh_rule(losses, base=2.5, low=1.0, high=5.0):
    """The seed's older rule, transcribed from SEED_CODE_FACTS.md, in float64."""
    running, weights = 0.0, []
    for step, loss in enumerate(losses, start=1):
        decay = min(step / 1000, 0.99)
        running = decay * running + (1 - decay) * loss
        ratio = loss / (running + 1e-8)
        factor = np.clip(0.5 + 0.5 * np.tanh(ratio - 1), 0.8, 1.2)
        weights.append(np.clip(base * factor, low, high))
    return np.array(weights)


@pytest.mark.parametrize("steps", [1500])
def test_legacy_weights_match_the_original_formula(steps):
    rng = np.random.default_rng(0)
    mel = (np.exp(-np.arange(steps) / 400) + 0.3 * rng.random(steps)).astype(np.float32)
    mel[::97] *= 8  # spikes push the ratio high, where the factor leaves 0.8
    _, trace = run(ao.legacy_weights(TTS_BASE, adapt="mel"), tts_losses(mel))
    expected = original_tanh_rule(mel.astype(np.float64))
    np.testing.assert_allclose(trace["weights"]["mel"], expected, rtol=1e-5)
    assert np.any(expected > 2.0 + 1e-3)  # the comparison covers more than the 0.8 floor


def test_legacy_rule_skips_nonfinite_losses():
    mel = falling(300)
    mel[[50, 51, 200]] = np.nan
    state, trace = run(ao.legacy_weights(TTS_BASE, adapt="mel"), tts_losses(mel))
    chex.assert_tree_all_finite((state, trace))
    assert int(ao.metrics(state)["nonfinite/mel"]) == 3


def test_legacy_rule_under_guards():
    weighting = ao.legacy_weights(TTS_BASE, adapt="mel", max_change=0.01, warmup_steps=20)
    mel = falling(300)
    mel[::37] *= 8
    _, trace = run(weighting, tts_losses(mel))
    w = np.concatenate([[2.5], trace["weights"]["mel"]])
    assert np.all(w[:21] == 2.5)
    assert np.all(np.abs(w[1:] / w[:-1] - 1) <= 0.01 + 1e-6)
    assert w.min() < 2.5


def test_unguarded_moves_thirty_percent_every_step_to_its_wide_bounds():
    _, trace = run(ao.unguarded_weights(TTS_BASE, adapt="mel"), tts_losses(rising(100)))
    w = np.concatenate([[2.5], trace["weights"]["mel"]])
    moved = change_steps(trace["weights"]["mel"])
    below_bound = moved[w[moved + 1] < 2500.0]  # the last move is clipped to the bound
    np.testing.assert_allclose(w[below_bound + 1] / w[below_bound], 1.3, rtol=1e-5)
    assert moved[0] < 30 and np.all(np.diff(moved[:10]) == 1)  # no warmup, no cooling
    assert w.max() == pytest.approx(2500.0)  # 1e3 x base


def test_a_rule_under_custom_guards():
    rule = ao.loss_ratio_rule(step_size=0.2)
    weighting = ao.guarded(
        rule, {"a": 1.0}, bounds=None, max_change=0.05, warmup_steps=0, cooling_period=0
    )
    _, trace = run(weighting, {"a": rising(200)})
    w = np.concatenate([[1.0], trace["weights"]["a"]])
    ratio = w[1:] / w[:-1]
    np.testing.assert_allclose(ratio[ratio != 1], 1.05, rtol=1e-6)  # the guard caps the rule
    assert weighting.needs == ("norm",)
    assert ao.legacy_weights({"a": 1.0}).needs == ()


def test_a_custom_rule_as_in_the_readme():
    def halve_when_rising(signals, weights, base, rule_state):
        return jnp.where(signals.deviation > 0.5, weights / 2, weights), rule_state

    rule = ao.Rule(init=lambda base: (), propose=halve_when_rising)
    weighting = ao.guarded(rule, {"a": 1.0}, max_change=0.1, warmup_steps=10)
    _, trace = run(weighting, {"a": rising(400, rate=0.05)})
    w = np.concatenate([[1.0], trace["weights"]["a"]])
    ratio = w[1:] / w[:-1]
    np.testing.assert_allclose(ratio[ratio != 1], 0.9, rtol=1e-6)  # halving capped at 10 %
    assert np.sum(ratio != 1) >= 7  # every cooling period (50 steps) after warmup


def test_rules_read_one_loss_history_through_signals():
    """First and previous finite loss, and the count before this step, skipping NaN steps."""

    def remember(signals, weights, base, rule_state):
        seen = (signals.first_loss, signals.previous_loss, signals.loss_count)
        seen = [x.astype(jnp.float32) for x in seen]
        # a rule leaves the state of a term whose input was not finite unchanged
        return weights, tuple(
            jnp.where(signals.finite, x, old) for x, old in zip(seen, rule_state, strict=True)
        )

    rule = ao.Rule(init=lambda base: (jnp.zeros(2),) * 3, propose=remember)
    weighting = ao.guarded(rule, {"a": 1.0, "b": 1.0}, **ao.RELAXED)
    update, state = jax.jit(weighting.update), weighting.init()
    history = []
    for a in (3.0, np.nan, 5.0, 7.0):
        _, state = update({"a": a, "b": 1.0}, state)
        history.append([float(x[0]) for x in state.rule_state])
    # this step's loss stands in for the first and previous while none came before
    assert history[0] == [3.0, 3.0, 0.0]
    assert history[1] == history[0]  # a NaN step changes no history
    assert history[2] == [3.0, 3.0, 1.0]
    assert history[3] == [3.0, 5.0, 2.0]
    assert int(state.stats.loss_count[0]) == 3 and float(state.stats.previous_loss[0]) == 7.0


SEED_GATES = dict(warmup_steps=10, cooling_period=5, min_stable_steps=2, spike_threshold=None)


def test_the_seed_rule_drifts_down_while_every_term_improves():
    weighting = ao.guarded(ao.loss_ratio_rule(), TTS_BASE, adapt="mel", **SEED_GATES)
    _, trace = run(weighting, {name: falling(300) for name in TTS_BASE})
    assert trace["weights"]["mel"][-1] == pytest.approx(1.0)  # its floor, 0.4 x base


def test_the_relative_rule_holds_while_every_term_improves_alike():
    weighting = ao.guarded(ao.relative_ratio_rule(), TTS_BASE, adapt="mel", **SEED_GATES)
    _, trace = run(weighting, {name: falling(300) for name in TTS_BASE})
    np.testing.assert_array_equal(trace["weights"]["mel"], 2.5)


def test_the_relative_rule_raises_a_lagging_term_and_returns_to_base():
    weighting = ao.guarded(ao.relative_ratio_rule(), TTS_BASE, adapt="mel", **SEED_GATES)
    losses = {"mel": rising(150, rate=0.02), "stop": falling(150), "attention": falling(150)}
    state, trace = run(weighting, losses)
    raised = trace["weights"]["mel"][-1]
    assert raised > 2.5  # mel rose while the others fell: more weight on mel
    # then every loss stays where it is: the weight steps back to its base, within the gates
    flat = {name: np.full(400, loss[-1], np.float32) for name, loss in losses.items()}
    _, trace = run(weighting, flat, state=state)
    mel = trace["weights"]["mel"]
    assert np.all(np.diff(mel) <= 0) and mel[-1] == pytest.approx(2.5)


def test_every_consults_the_rule_only_every_k_steps():
    weighting = ao.dwa_weights({"a": 1.0, "b": 1.0}, every=3)
    wobbling = np.array([1.0, 0.5, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4, 1.0, 0.1, 0.6, 0.3], np.float32)
    state, trace = run(weighting, {"a": wobbling, "b": np.ones(12, np.float32)})
    moves = change_steps(trace["weights"]["a"])
    np.testing.assert_array_equal(moves, [3, 6, 9])  # steps 4, 7, 10 (step 1 has no ratio)
    assert int(state.stats.loss_count[0]) == 12  # the statistics see every step
    with pytest.raises(ValueError, match=r"every must be in \[1, inf\], got 0"):
        ao.dwa_weights({"a": 1.0}, every=0)


# every_k: a rule combinator ---------------------------------------------------------------


def _trajectory(weighting, steps=40):
    rng = np.random.default_rng(3)
    losses = {"a": 1 + 0.3 * rng.random(steps), "b": 1 + 0.3 * rng.random(steps)}
    losses = {k: v.astype(np.float32) for k, v in losses.items()}
    norms = (1 + rng.random(steps)).astype(np.float32)
    return run(weighting, losses, norms)


def test_every_is_an_alias_of_every_k_bit_for_bit():
    base, guards = {"a": 1.0, "b": 2.0}, dict(warmup_steps=0, cooling_period=0, max_change=0.3)
    rule = ao.relative_ratio_rule(step_size=0.2)
    alias = ao.guarded(rule, base, every=4, **guards)
    combined = ao.guarded(ao.every_k(rule, 4), base, **guards)
    (state_a, trace_a), (state_c, trace_c) = _trajectory(alias), _trajectory(combined)
    chex.assert_trees_all_equal(trace_a, trace_c)
    chex.assert_trees_all_equal(state_a, state_c)


def test_every_k_consults_the_rule_on_steps_1_plus_multiples_of_k():
    calls = ao.Rule(
        init=lambda base: jnp.zeros((), jnp.int32),
        propose=lambda signals, weights, base, count: (weights * 1.1, count + 1),
    )
    weighting = ao.guarded(ao.every_k(calls, 3), {"a": 1.0}, **ao.RELAXED, bounds=None)
    state, trace = _trajectory_one(weighting, 7)
    assert int(state.rule_state) == 3  # steps 1, 4, 7
    changed = np.flatnonzero(np.diff(np.concatenate([[1.0], trace["weights"]["a"]])))
    np.testing.assert_array_equal(changed + 1, [1, 4, 7])


def _trajectory_one(weighting, steps):
    return run(weighting, {"a": np.ones(steps, np.float32)})


def test_every_k_of_1_is_the_rule_itself():
    rule = ao.tanh_rule()
    assert ao.every_k(rule, 1) is rule


def test_every_k_keeps_what_the_rule_declares():
    rule = ao.upgrad_rule()
    every = ao.every_k(rule, 5)
    assert (every.needs, every.per_term_base, every.init) == (
        rule.needs,
        rule.per_term_base,
        rule.init,
    )


@pytest.mark.parametrize("k", [0, -2, 1.5, "3", True])
def test_every_k_names_k_and_every_names_every(k):
    with pytest.raises(ValueError, match=r"^k "):
        ao.every_k(ao.tanh_rule(), k)
    with pytest.raises(ValueError, match=r"^every "):
        ao.guarded(ao.tanh_rule(), {"a": 1.0}, every=k)


def test_every_k_may_be_traced():
    rule = ao.relative_ratio_rule()

    @jax.jit
    def first_weights(k):
        weighting = ao.guarded(ao.every_k(rule, k), {"a": 1.0, "b": 2.0}, **ao.RELAXED)
        weights, _ = weighting.update({"a": 1.0, "b": 3.0}, weighting.init())
        return weights

    chex.assert_trees_all_equal(first_weights(2), first_weights(3))
