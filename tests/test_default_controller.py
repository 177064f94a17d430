"""What the default controller does, as a user reads it in the README and the docstring.

calm: the base weights (after the start ramp); spike: cut at once, back to the base over the
cooling periods that follow; growing gradients: lowered, back when they stop growing; and
``ao.metrics`` says why a weight is away from its base, and since when.
"""

import numpy as np
import pytest
from helpers import TTS_BASE, constant, run

import adaptive_optax as ao

STEPS = 1200
RAMP = 100  # the default's ramp_steps
BASE = np.array([TTS_BASE[k] for k in ("attention", "mel", "stop")])  # leaf order
REASON = {name: i for i, name in enumerate(ao.AWAY_REASONS)}
DEFAULT = ao.stable_weights(TTS_BASE)  # built once: its compiled scan is shared


def losses(mel, steps=STEPS):
    return {
        "mel": mel.astype(np.float32),
        "stop": constant(0.3, steps),
        "attention": constant(0.1, steps),
    }


def weights(trace):
    return np.stack([trace["weights"][k] for k in ("attention", "mel", "stop")], -1)


def calm_runs():
    t = np.arange(STEPS)
    noise = 1 + 0.01 * np.random.default_rng(0).standard_normal(STEPS)
    return {
        "constant": np.ones(STEPS),
        "converging fast": np.exp(-0.05 * t) + 1e-3,
        "converging slowly": np.exp(-0.002 * t),
        "noisy": noise,
        "converging, noisy": np.exp(-0.003 * t) * noise,
    }


@pytest.mark.parametrize("shape", list(calm_runs()))
def test_calm_run_ends_at_the_base_weights(shape):
    _, trace = run(DEFAULT, losses(calm_runs()[shape]), grad_norms=constant(1.0, STEPS))
    w = weights(trace)
    # the start ramp: every weight enters at its floor and reaches its base after RAMP calm steps
    np.testing.assert_allclose(w[0], BASE * (0.4 + 0.6 / RAMP), rtol=1e-5)
    assert np.all(w[:RAMP] <= BASE * (1 + 1e-6))
    # then every weight stays within 5 % of its base, and a converging loss never moves it
    np.testing.assert_allclose(w[RAMP:], np.broadcast_to(BASE, w[RAMP:].shape), rtol=0.05)
    np.testing.assert_allclose(w[-1], BASE, rtol=1e-6)
    m = trace["metrics"]
    assert all(m[f"away/{k}"][-1] == REASON["base"] for k in TTS_BASE)
    assert all(m[f"away/{k}"][0] == REASON["start ramp"] for k in TTS_BASE)


def test_spike_is_cut_at_once_and_the_weight_returns_to_the_base():
    mel = 1 + 0.01 * np.random.default_rng(1).standard_normal(STEPS)
    mel[300] *= 20.0  # a spike at step 301
    _, trace = run(DEFAULT, losses(mel), grad_norms=constant(1.0, STEPS))
    w, m = trace["weights"]["mel"], trace["metrics"]
    assert w[299] == pytest.approx(2.5)
    assert w[300] == pytest.approx(1.25)  # cut at once to half
    assert m["away/mel"][300] == REASON["spike cut"] and m["away_since/mel"][300] == 301
    # back up by max_change (5 %) once per cooling period (50 steps): 15 steps up from half
    assert np.all(np.diff(w[300:]) >= 0)
    back = 300 + 15 * 50
    assert w[back - 50] < 2.5 and w[back] == pytest.approx(2.5)
    assert np.all(m["away/mel"][300:back] == REASON["spike cut"])
    assert m["away/mel"][back] == REASON["base"] and m["away_since/mel"][back] == 0
    # the other terms never left their base
    np.testing.assert_allclose(trace["weights"]["stop"][RAMP:], 1.0)


def test_growing_gradients_lower_the_weight_until_they_stop_growing():
    grads = constant(1.0, STEPS)
    grads[400:] = 1.6  # above 1.5 x the recent mean: growing, until the mean catches up
    _, trace = run(DEFAULT, losses(np.ones(STEPS)), grad_norms=grads)
    w, m = trace["weights"]["mel"], trace["metrics"]
    assert w[399] == pytest.approx(2.5)
    assert w[400] == pytest.approx(2.5 * 0.95)
    assert m["away/mel"][400] == REASON["rule"] and m["away_since/mel"][400] == 401
    assert w[-1] == pytest.approx(2.5) and m["away/mel"][-1] == REASON["base"]


def test_the_original_controller_still_walks_a_converging_loss_down():
    # what the default no longer does: ao.ORIGINAL-style settings reproduce it
    original = ao.stable_weights(
        TTS_BASE,
        low_ratio=0.9,
        toward_base=False,
        ramp_steps=0,
        spike_prior=None,
        spike_threshold=3.0,
    )
    mel = np.exp(-0.01 * np.arange(STEPS))
    _, trace = run(original, losses(mel), grad_norms=constant(1.0, STEPS))
    assert trace["weights"]["mel"][-1] == pytest.approx(1.0)  # the floor, 0.4 x 2.5
    assert trace["metrics"]["away/mel"][-1] == REASON["rule"]


def test_rollback_and_disable_are_reported():
    mel = np.exp(0.01 * np.arange(400))  # rising: the rule raises the weight after warmup
    mel[160] = np.nan
    _, trace = run(DEFAULT, losses(mel, 400), grad_norms=constant(1.0, 400))
    m = trace["metrics"]
    raised = np.flatnonzero(m["adjustments/mel"] > 1)
    assert raised.size and m["away/mel"][raised[0]] == REASON["rule"]
    assert m["rollbacks/mel"][160] == 1 and m["away/mel"][160] in (
        REASON["rollback"],
        REASON["base"],
    )
    state, _ = run(DEFAULT, losses(mel, 400), grad_norms=constant(1.0, 400))
    disabled, _ = run(
        DEFAULT, losses(np.ones(3), 3), grad_norms=constant(1.0, 3), state=ao.disable(state)
    )
    assert int(ao.metrics(disabled)["away/mel"]) == REASON["base"]
