"""The eight scenarios of the seed's summary, plus rollback, healing and the seed's defects.

Every run goes through ``jax.jit`` (see ``helpers.run``).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    TTS_BASE,
    change_steps,
    constant,
    falling,
    rising,
    run,
    seed_controller,
    tts_losses,
    with_values,
)

import adaptive_optax as ao

STEPS = 400


@functools.cache
def mel_only(**settings):
    """The seed's configuration (only mel adapts), built once per settings to share compiles."""
    return seed_controller(TTS_BASE, adapt=("mel",), **settings)


# 1. NaN / Inf safety ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_loss_is_counted_and_changes_nothing(bad):
    mel = with_values(falling(STEPS), [5, 120, 121, 300], bad)
    state, trace = run(mel_only(auto_rollback=False), tts_losses(mel))
    chex.assert_tree_all_finite(state)
    chex.assert_tree_all_finite(trace)
    assert int(state.counters.nonfinite[1]) == 4  # leaf order: attention, mel, stop
    m = trace["metrics"]
    for i in (5, 120, 121, 300):
        assert m["loss_ema/mel"][i] == m["loss_ema/mel"][i - 1]
        assert m["stable_steps/mel"][i] == 0
        assert trace["weights"]["mel"][i] == trace["weights"]["mel"][i - 1]


def test_nonfinite_grad_norm_is_counted_and_skipped():
    grad = with_values(constant(1.0, STEPS), 200, np.nan)
    state, trace = run(mel_only(), tts_losses(falling(STEPS)), grad_norms=grad)
    chex.assert_tree_all_finite(state)
    assert int(ao.metrics(state)["nonfinite/mel"]) == 1
    assert trace["metrics"]["loss_ema/mel"][200] == trace["metrics"]["loss_ema/mel"][199]


# 2. At most +/-5 % per adjustment --------------------------------------------------------------


@pytest.mark.parametrize("losses, factor", [(rising(STEPS), 1.05), (falling(STEPS), 0.95)])
def test_each_adjustment_is_exactly_five_percent(losses, factor):
    _, trace = run(mel_only(), tts_losses(losses))
    mel = np.concatenate([[2.5], trace["weights"]["mel"]])
    ratios = mel[1:] / mel[:-1]
    changed = ratios != 1
    assert changed.sum() >= 5
    np.testing.assert_allclose(ratios[changed], factor, rtol=1e-6)


# 3. Cooling period -----------------------------------------------------------------------------


@pytest.mark.parametrize("cooling", [1, 7, 50])
def test_adjustments_are_at_least_cooling_period_apart(cooling):
    weighting = mel_only(cooling_period=cooling, warmup_steps=10, min_stable_steps=0)
    _, trace = run(weighting, tts_losses(rising(STEPS)))
    steps = change_steps(trace["weights"]["mel"])
    assert len(steps) >= 5
    assert np.all(np.diff(steps) >= cooling)
    assert np.any(np.diff(steps) == cooling)  # and not more than needed


def test_no_adjustment_during_warmup():
    _, trace = run(mel_only(warmup_steps=100), tts_losses(rising(STEPS)))
    steps = change_steps(trace["weights"]["mel"]) + 1  # 1-based step numbers
    assert steps[0] == 101


# 4. Gradient awareness -------------------------------------------------------------------------


def test_growing_gradients_turn_an_increase_into_a_decrease():
    losses = tts_losses(rising(STEPS))
    calm = constant(1.0, STEPS)
    growing = with_values(
        calm, slice(100, None), 1.1 ** np.arange(STEPS - 100)
    )  # each step > 1.5 x recent mean
    _, with_calm = run(mel_only(), losses, grad_norms=calm)
    _, with_growth = run(mel_only(), losses, grad_norms=growing)
    assert with_calm["weights"]["mel"][-1] > 2.5
    assert with_growth["weights"]["mel"][-1] < 2.5


def test_per_term_grad_norms_act_per_term():
    weighting = seed_controller({"a": 1.0, "b": 1.0})
    losses = {"a": rising(STEPS), "b": rising(STEPS)}
    norms = {
        "a": constant(1.0, STEPS),
        "b": with_values(constant(1.0, STEPS), slice(100, None), 100.0),
    }
    _, trace = run(weighting, losses, grad_norms=norms)
    assert trace["weights"]["a"][-1] > 1.0  # loss high, gradients calm: up
    # b's gradient jumps once to 100x, so it is "growing" until the window fills with 100s
    assert trace["weights"]["b"][100] < 1.0


# 5. Stability under spikes ---------------------------------------------------------------------


def test_a_spike_resets_the_stable_counter_and_blocks_adjustment():
    mel = with_values(falling(STEPS), 150, 50.0 * falling(STEPS)[150])
    # the stability gate alone: the spike guard would also cut the weight
    weighting = mel_only(warmup_steps=0, cooling_period=1, spike_threshold=None)
    _, trace = run(weighting, tts_losses(mel))
    m = trace["metrics"]
    unstable = m["loss_rel_variance/mel"] >= 0.5
    assert not unstable[149] and unstable[150]
    # the spike keeps the recent variance high while it decays; then 10 stable steps are needed
    calm = 150 + int(np.argmin(unstable[150:]))
    assert calm > 155
    assert np.all(m["stable_steps/mel"][150:calm] == 0)
    tenth_stable = calm + 9
    assert np.all(m["adjustments/mel"][150:tenth_stable] == m["adjustments/mel"][149])
    assert m["adjustments/mel"][tenth_stable] == m["adjustments/mel"][149] + 1


def test_large_losses_are_not_unstable_forever():
    """Seed defect: variance was absolute, so large losses were never stable."""
    noise = 1 + 0.01 * np.random.default_rng(0).standard_normal(STEPS)
    _, trace = run(mel_only(), tts_losses(1e6 * noise * falling(STEPS)))
    assert trace["metrics"]["stable_steps/mel"][-1] > 10
    assert trace["metrics"]["adjustments/mel"][-1] > 0


# 6. Two hundred steps of hostile input without a NaN -------------------------------------------


def test_two_hundred_hostile_steps_stay_finite():
    rng = np.random.default_rng(1)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 1e-30, 3e38], np.float32)
    noisy = np.abs(rng.standard_normal((200, 3))).astype(np.float32) * 10
    values = np.where(rng.random((200, 3)) < 0.3, rng.choice(specials, (200, 3)), noisy)
    losses = {"attention": values[:, 0], "mel": values[:, 1], "stop": values[:, 2]}
    weighting = seed_controller(TTS_BASE, warmup_steps=0, cooling_period=0, min_stable_steps=0)
    state, trace = run(weighting, losses, grad_norms=np.abs(values[:, 1]))
    chex.assert_tree_all_finite((state, trace))
    for name, base in TTS_BASE.items():
        w = trace["weights"][name]
        assert np.all((w >= 0.4 * base * (1 - 1e-6)) & (w <= 2.0 * base * (1 + 1e-6)))


# 7. Manual disable / enable --------------------------------------------------------------------


def test_disable_returns_base_weights_and_enable_resumes_with_warm_statistics():
    weighting = mel_only()
    thirds = np.split(rising(3 * STEPS, rate=0.003), 3)
    state, _ = run(weighting, tts_losses(thirds[0]))
    assert float(state.weights["mel"]) > 2.5
    off = ao.disable(state)
    assert float(off.weights["mel"]) == 2.5
    off_after, trace = run(weighting, tts_losses(thirds[1]), state=off)
    assert np.all(trace["weights"]["mel"] == 2.5)
    assert np.all(trace["metrics"]["enabled"] == 0)
    # statistics kept updating while disabled
    assert int(off_after.stats.loss_count[1]) == 2 * STEPS
    on_after, trace = run(weighting, tts_losses(thirds[2]), state=ao.enable(off_after))
    assert float(on_after.weights["mel"]) > 2.5
    assert change_steps(trace["weights"]["mel"])[0] < 60  # no new warmup: warm statistics


# 8. Metrics ------------------------------------------------------------------------------------


def test_metrics_keys_and_scalars():
    state, _ = run(mel_only(), tts_losses(falling(50)), grad_norms=constant(2.0, 50))
    m = jax.jit(ao.metrics)(state)
    per_term = [
        "weight",
        "previous_weight",
        "base_weight",
        "loss_ema",
        "loss_rel_variance",
        "grad_norm_avg",
        "steps_since_change",
        "stable_steps",
        "away",
        "away_since",
        "start_ramp",
        "weight_average",
        "adjustments",
        "rejected",
        "nonfinite",
        "rollbacks",
        "healed",
        "spikes",
        "first_nonfinite_step",
        "last_nonfinite_step",
    ]
    expected = {"step", "enabled"} | {f"{k}/{n}" for k in per_term for n in TTS_BASE}
    assert set(m) == expected
    assert all(np.shape(v) == () for v in m.values())
    assert int(m["step"]) == 50
    assert float(m["grad_norm_avg/mel"]) == pytest.approx(2.0)
    assert float(m["base_weight/mel"]) == 2.5


def test_metrics_names_follow_nested_key_paths():
    weighting = seed_controller({"heads": {"a": 1.0, "b": 2.0}, "aux": [0.5]})
    m = ao.metrics(weighting.init())
    assert {"weight/heads/a", "weight/heads/b", "weight/aux/0"} <= set(m)


# Rollback --------------------------------------------------------------------------------------


def test_manual_rollback_restores_previous_weight_and_starts_cooling():
    weighting = mel_only()
    state, _ = run(weighting, tts_losses(rising(120)))  # one adjustment, at step 101
    assert float(state.weights["mel"]) == pytest.approx(2.625)
    back = jax.jit(ao.rollback)(state)
    assert float(back.weights["mel"]) == 2.5
    assert int(back.last_change[1]) == 120
    assert int(back.counters.rollbacks[1]) == 1
    again = ao.rollback(back)
    assert float(again.weights["mel"]) == 2.5 and int(again.counters.rollbacks[1]) == 1
    # the cooling period restarts at the rollback step
    _, trace = run(weighting, tts_losses(rising(STEPS, start=3.3)), state=back)
    assert change_steps(trace["weights"]["mel"])[0] + 1 >= 50


def test_auto_rollback_undoes_an_adjustment_followed_by_nonfinite_input():
    # flat loss with one 20 % bump at step 101: exactly one adjustment, at step 101
    bump = with_values(constant(1.0, STEPS), 100, 1.2)
    state, trace = run(mel_only(), tts_losses(bump))
    assert int(state.counters.adjustments[1]) == 1
    assert trace["weights"]["mel"][100] == pytest.approx(2.625)
    # a NaN 19 steps later (inside the cooling period) undoes it
    state, trace = run(mel_only(), tts_losses(with_values(bump, 119, np.nan)))
    w = trace["weights"]["mel"]
    assert w[118] == pytest.approx(2.625) and w[119] == 2.5
    assert int(state.counters.rollbacks[1]) == 1
    # a NaN 69 steps later (outside the cooling period) does not
    state, trace = run(mel_only(), tts_losses(with_values(bump, 169, np.nan)))
    assert int(state.counters.rollbacks[1]) == 0
    assert trace["weights"]["mel"][169] == pytest.approx(2.625)


def test_auto_rollback_can_be_switched_off():
    mel = with_values(constant(1.0, STEPS), [100, 119], [1.2, np.nan])
    _, trace = run(mel_only(auto_rollback=False), tts_losses(mel))
    assert trace["weights"]["mel"][119] == pytest.approx(2.625)


# Healing and the seed's defects ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_corrupted_weight_is_healed_to_base_and_counted(bad):
    weighting = mel_only()
    state = weighting.init()
    state = state._replace(weights={**state.weights, "mel": jnp.asarray(bad, jnp.float32)})
    weights, state = jax.jit(weighting.update)({"mel": 1.0, "stop": 1.0, "attention": 1.0}, state)
    assert float(weights["mel"]) == 2.5
    assert int(ao.metrics(state)["healed/mel"]) == 1


def test_weights_stay_bounded_and_leave_a_bound_again():
    """Seed defect: a change that landed on a bound froze adaptation for good."""
    weighting = mel_only(cooling_period=1, warmup_steps=0, min_stable_steps=0)
    up, down = rising(300), falling(600, start=float(rising(300)[-1]))
    _, trace = run(weighting, tts_losses(np.concatenate([up, down])))
    w = trace["weights"]["mel"]
    assert w.max() == pytest.approx(5.0) and w.min() == pytest.approx(1.0)
    assert np.argmax(w) < np.argmin(w)


def test_negative_losses_keep_their_meaning():
    """A loss falling below zero (an ELBO, a KL bound) still reads as falling."""
    steps = np.arange(STEPS, dtype=np.float32)
    _, trace = run(mel_only(), tts_losses(-1.0 - 0.01 * steps))
    assert trace["weights"]["mel"][-1] < 2.5
    _, trace = run(mel_only(), tts_losses(-5.0 + 0.01 * steps))
    assert trace["weights"]["mel"][-1] > 2.5


def test_non_adaptive_terms_keep_their_base():
    losses = {"mel": rising(STEPS), "stop": rising(STEPS), "attention": falling(STEPS)}
    _, trace = run(mel_only(), losses)
    assert np.all(trace["weights"]["stop"] == 1.0)
    assert np.all(trace["weights"]["attention"] == np.float32(0.1))


def test_rejects_a_weight_whose_weighted_loss_overflows():
    mel = with_values(rising(STEPS), 100, 3e38)  # a finite loss whose weighted value overflows
    state, trace = run(mel_only(min_stable_steps=0, spike_threshold=None), tts_losses(mel))
    assert int(state.counters.rejected[1]) == 1
    assert trace["weights"]["mel"][100] == 2.5


def test_weighted_sum():
    losses = {"a": jnp.asarray(2.0, jnp.bfloat16), "b": jnp.asarray(3.0, jnp.bfloat16)}
    total = ao.weighted_sum(losses, {"a": 0.5, "b": jnp.asarray(2.0)})
    assert total.dtype == jnp.bfloat16 and float(total) == 7.0


def test_metrics_show_per_term_rule_state():
    rule = ao.tanh_rule()  # keeps the running loss per term
    weighting = ao.guarded(rule, {"a": 1.0, "b": 2.0}, max_change=None, warmup_steps=0)
    _, state = jax.jit(weighting.update)({"a": 3.0, "b": 4.0}, weighting.init())
    m = ao.metrics(state)
    assert float(m["rule/state/a"]) == pytest.approx(3.0 * (1 - 0.001))
    assert float(m["rule/state/b"]) == pytest.approx(4.0 * (1 - 0.001))


def test_the_guards_guide_lists_every_per_term_metric():
    """The guide's list of per-term keys of ``ao.metrics`` is the code's, none left out."""
    import pathlib
    import re

    guide = (pathlib.Path(__file__).parents[1] / "docs" / "guides" / "guards.md").read_text()
    bullet = guide[guide.index("- `ao.metrics(state)`") :].split("\n- ")[0]
    listed = set(re.findall(r"`([a-z_]+)`", bullet)) - {"step", "enabled"}
    keys = ao.metrics(ao.stable_weights({"mel": 1.0}).init())
    per_term = {key.rsplit("/", 1)[0] for key in keys if key not in ("step", "enabled")}
    assert per_term == listed, (sorted(per_term - listed), sorted(listed - per_term))
