"""The adversarial vocoder example runs end to end in quick mode: the scheduled terms enter at
their step, the fixed (disabled) run keeps the scheduled base weights, every loss stays finite,
the report and its figure are written."""

import numpy as np
import pytest

from examples import vocoder_gan

pytestmark = pytest.mark.standard_promotion


def test_quick_run_schedules_the_adversarial_stage_and_reports(tmp_path):
    out = vocoder_gan.main(["--quick", "--seeds", "1", "--out", str(tmp_path)])
    entry = out["config"].entry
    for trace in out["traces"].values():
        for term in ("adv", "fm"):
            weights = trace[f"weight/{term}"][0]
            np.testing.assert_array_equal(weights[:entry], 0.0)  # absent before entry
            assert np.all(weights[entry:] > 0)
        assert np.all(np.isfinite(trace["loss/mel"]))
        assert trace["loss/mel"][0, -1] < trace["loss/mel"][0, 0]  # it learns
    fixed = out["traces"]["fixed"]
    np.testing.assert_array_equal(fixed["weight/mel"], 45.0)
    np.testing.assert_array_equal(fixed["weight/adv"][0, entry:], 1.0)
    assert sorted(out["traces"]) == sorted(vocoder_gan.RUNS)  # every run, one program
    text = (tmp_path / "vocoder_gan.md").read_text()
    assert "| adaptive | 0 |" in text and "| fixed | 0 |" in text
    assert (tmp_path / "vocoder_gan.png").stat().st_size > 0
