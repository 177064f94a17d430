"""Smoke test of the stability benchmark's core at tiny sizes (the full run is a command)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import adaptive_optax as ao
from benchmarks import demo, stability, tts_model

# a flax / optax training benchmark, which promotes dtypes implicitly
pytestmark = pytest.mark.standard_promotion


def test_benchmark_core_tiny(tmp_path, monkeypatch):
    settings = {"diverging": 3.0, "tiny": 1e-3}
    seeds, steps = (0, 1), 12
    groups = stability.run_benchmark(rates=tuple(settings.values()), seeds=seeds, steps=steps)
    assert tuple(groups) == tts_model.STRATEGIES
    rows = stability.setting_rows(groups, settings)

    assert [(r.setting, r.strategy) for r in rows] == [
        (setting, strategy) for strategy in tts_model.STRATEGIES for setting in settings
    ]
    for row in rows:
        result = groups[row.strategy].at_rate(row.learning_rate)
        failed = result.first_nonfinite >= 0
        assert row.runs == len(seeds)
        # a run finished exactly when it never saw a non-finite loss, and then its eval is finite
        np.testing.assert_array_equal(result.finished, ~failed)
        assert row.finished == int((~failed).sum())
        assert np.all(np.isfinite(result.eval_mel[result.finished]))
        assert np.all(result.first_nonfinite[failed] < steps)
        assert result.trace.mel_weight.shape == (len(seeds), steps)
        assert np.all(np.isfinite(result.trace.mel_weight))  # no weighting ever goes non-finite
        if row.strategy in tts_model.FIXED_MEL:
            np.testing.assert_allclose(result.trace.mel_weight, tts_model.FIXED_MEL[row.strategy])
        if row.finished:
            assert row.mel_low <= row.mel_median <= row.mel_high
        else:
            assert np.isnan(row.mel_median)

    by_key = {(r.setting, r.strategy): r for r in rows}
    # at a tiny rate nothing fails; at lr 3 SGD with fixed weights blows up within a few steps
    assert all(by_key["tiny", s].finished == len(seeds) for s in tts_model.STRATEGIES)
    assert by_key["diverging", "fixed"].finished == 0
    # fixed weights never adjust; the guarded rules do not adjust within warmup (100 steps)
    for strategy in ("fixed", "fixed_floor", "best_fixed", "seed", "relative"):
        assert by_key["tiny", strategy].adjustments_median == 0
    # fixed-weight strategies with the same mel weight are the same runs
    if tts_model.FIXED_MEL["best_fixed"] == tts_model.FIXED_MEL["fixed_floor"]:
        np.testing.assert_array_equal(
            groups["best_fixed"].result.eval_mel, groups["fixed_floor"].result.eval_mel
        )

    table = stability.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1
    rates = stability.stable_rate_table(groups)
    assert rates.count("\n") == len(groups) + 1
    for strategy in tts_model.STRATEGIES:
        assert f"| {strategy} |" in table
        assert f"| {strategy} " in rates  # "best_fixed (the runs of fixed_floor)" when twins
    assert stability.figure(groups, tmp_path / "settings.png", settings).stat().st_size > 0
    # the demo's sentence on the unstable rate
    monkeypatch.setitem(stability.SETTINGS, "unstable", settings["diverging"])
    sentence = demo.rescue(groups)
    assert "the seed's fixed weights 0/2 runs finished (0 of them collapsed" in sentence
    assert "ao.stable_weights" in sentence
    # with more rates than settings, the figure adds the panels against the learning rate
    grid = stability.figure(groups, tmp_path / "grid.png", {"tiny": 1e-3})
    assert grid.stat().st_size > 0


def _row(rate, finished, mel, runs=20):
    nan = float("nan")
    return stability.Row("", rate, "s", runs, finished, mel, mel, mel, 0, 0, nan, nan)


def test_largest_stable_rate():
    rows = [
        _row(0.05, 20, 0.6),
        _row(0.1, 18, 1.2),  # 90 % finished and median 1.2: stable
        _row(0.14, 17, 0.9),  # too few finished
        _row(0.2, 20, 1.3),  # median too high
    ]
    assert [stability.is_stable(r) for r in rows] == [True, True, False, False]
    assert stability.largest_stable_rate(rows) == 0.1
    assert np.isnan(stability.largest_stable_rate([_row(0.1, 0, float("nan"))]))


def test_seed_strategy_is_the_library_default():
    """``seed`` trains with today's ``ao.stable_weights``: the same weights, step for step."""
    seed = jax.jit(tts_model.make_weighting("seed").update)
    default = jax.jit(ao.stable_weights(tts_model.BASE_WEIGHTS, adapt=("mel",)).update)
    rng = np.random.default_rng(0)
    state_a = state_b = tts_model.make_weighting("seed").init()
    for step in range(400):
        losses = {name: 1.0 + 0.3 * rng.random() for name in tts_model.TERMS}
        losses["mel"] = (30.0 if step in (150, 300) else 2.0 / (1 + step / 100)) * losses["mel"]
        norm = 1.0 + rng.random() + (20.0 if step == 250 else 0.0)
        weights_a, state_a = seed(losses, state_a, grad_norms=norm)
        weights_b, state_b = default(losses, state_b, grad_norms=norm)
        assert float(weights_a["mel"]) == float(weights_b["mel"])
    assert int(ao.metrics(state_a)["spikes/mel"]) > 0  # the spike guard is on
    assert int(ao.metrics(state_a)["adjustments/mel"]) > 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="mel_weight"):
        tts_model.train("seed", "sgd", 0.1, None, None, None, None, mel_weight=1.0)
    with pytest.raises(ValueError, match="no setting"):
        stability.run_strategy("legacy", [0.1], mel_weight=[1.0])
    with pytest.raises(ValueError, match="one value per rate"):
        stability.run_strategy("fixed", [0.1, 0.2], mel_weight=[1.0])
    with pytest.raises(ValueError, match="strategy"):
        tts_model.make_weighting("stable")


def test_same_seed_same_result():
    """Reproducible from its seeds: two runs of one configuration agree bit for bit."""
    # two settings and two seeds, as in the first test: the compiled function is reused
    first = stability.run_strategy("unguarded", [0.05, 0.05], seeds=(0, 1), steps=12)
    second = stability.run_strategy("unguarded", [0.05, 0.05], seeds=(0, 1), steps=12)
    # the same setting twice in one call, and the same call twice, agree
    np.testing.assert_array_equal(first.result.eval_mel[0], first.result.eval_mel[1])
    first, second = first.at(0), second.at(0)
    np.testing.assert_array_equal(first.trace.losses["mel"], second.trace.losses["mel"])
    np.testing.assert_array_equal(first.trace.mel_weight, second.trace.mel_weight)
    np.testing.assert_array_equal(first.eval_mel, second.eval_mel)
    assert np.all(np.isfinite(first.trace.losses["mel"]))
