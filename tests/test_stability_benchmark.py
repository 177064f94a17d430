"""Smoke test of the stability benchmark's core at tiny sizes (the full run is a command)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import stability, tts_model

# a flax / optax training benchmark, which promotes dtypes implicitly
pytestmark = pytest.mark.standard_promotion


def test_benchmark_core_tiny(tmp_path):
    settings = {"diverging": 3.0, "tiny": 1e-3}
    seeds, steps = (0, 1), 12
    rows, results = stability.run_benchmark(settings=settings, seeds=seeds, steps=steps)

    assert [(r.setting, r.strategy) for r in rows] == [
        (setting, strategy) for strategy in tts_model.STRATEGIES for setting in settings
    ]
    for row in rows:
        result = results[row.setting, row.strategy]
        failed = result.first_nonfinite >= 0
        assert row.runs == len(seeds)
        # a run finished exactly when it never saw a non-finite loss, and then its eval is finite
        np.testing.assert_array_equal(result.finished, ~failed)
        assert row.finished == int((~failed).sum())
        assert np.all(np.isfinite(result.eval_mel[result.finished]))
        assert np.all(result.first_nonfinite[failed] < steps)
        assert result.trace.mel_weight.shape == (len(seeds), steps)
        assert np.all(np.isfinite(result.trace.mel_weight))  # no weighting ever goes non-finite
        if row.finished:
            assert row.mel_low <= row.mel_median <= row.mel_high
        else:
            assert np.isnan(row.mel_median)

    by_key = {(r.setting, r.strategy): r for r in rows}
    # at a tiny rate nothing fails; at lr 3 SGD with fixed weights blows up within a few steps
    assert all(by_key["tiny", s].finished == len(seeds) for s in tts_model.STRATEGIES)
    assert by_key["diverging", "fixed"].finished == 0
    # fixed weights never adjust; the seed rules do not adjust at a tiny rate within warmup
    assert by_key["tiny", "fixed"].adjustments_median == 0
    assert by_key["tiny", "stable"].adjustments_median == 0  # 12 steps < warmup of 100

    table = stability.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1
    for strategy in tts_model.STRATEGIES:
        assert f"| {strategy} |" in table
    png = stability.figure(results, tmp_path / "stability.png")
    assert png.stat().st_size > 0


def test_same_seed_same_result():
    """Reproducible from its seeds: two runs of one configuration agree bit for bit."""
    settings = {"comfortable": 0.05}
    first = stability.run_benchmark(("unguarded",), settings, seeds=(0, 1), steps=12)[1]
    second = stability.run_benchmark(("unguarded",), settings, seeds=(0, 1), steps=12)[1]
    a, b = first["comfortable", "unguarded"], second["comfortable", "unguarded"]
    np.testing.assert_array_equal(a.trace.losses["mel"], b.trace.losses["mel"])
    np.testing.assert_array_equal(a.trace.mel_weight, b.trace.mel_weight)
    np.testing.assert_array_equal(a.eval_mel, b.eval_mel)
    assert np.all(np.isfinite(a.trace.losses["mel"]))
