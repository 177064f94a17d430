"""Smoke test of the failure gym at tiny sizes (the full run is a command), and its link to the
"Recommended guards" paragraphs of the balancers' docstrings."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import adaptive_optax as ao
from benchmarks import failures

ROOT = pathlib.Path(__file__).parents[1]
SEEDS, STEPS = 2, 40

# an optax training benchmark, which promotes dtypes implicitly
pytestmark = pytest.mark.standard_promotion

FACTORIES = {
    "uncertainty": ao.uncertainty_weights,
    "lr_annealing": ao.lr_annealing_weights,
    "gradnorm": ao.gradnorm_weights,
    "dwa": ao.dwa_weights,
    "softadapt": ao.softadapt_weights,
    "relobralo": ao.relobralo_weights,
    "encodec": ao.encodec_weights,
}


@pytest.fixture(scope="module")
def tiny():
    """The NaN-batch scenario, bare and guarded, 2 seeds x 40 steps: one compile per arm."""
    return failures.run_gym(["nan"], seeds=SEEDS, steps=STEPS, arms=("bare", "guarded"))


def test_nan_burst_tiny(tiny, tmp_path):
    seeds, steps, results = SEEDS, STEPS, tiny
    scenario, arms = results["nan"]
    assert list(arms) == ["bare", "guarded"]
    start, stop = scenario.poisoned
    assert 0 < start < stop <= steps
    for result in arms.values():
        assert result.trace.weights.shape == (seeds, steps, len(scenario.base))
        assert result.metric.shape == result.failed.shape == (seeds,)
        assert np.all(np.isfinite(result.trace.weights))  # no weighting goes non-finite
        assert not result.trace.finite_loss[:, start:stop].any()  # the poisoned batches
    # with a plain optimiser the NaN batches reach the parameters, for good ...
    bare = arms["bare"]
    assert bare.failed.all()
    assert not bare.trace.finite_params[:, start:].any()
    np.testing.assert_array_equal(bare.first_failure, [start] * seeds)
    # ... behind ao.apply_if_finite they never do
    guarded = arms["guarded"]
    assert not guarded.failed.any()
    assert guarded.trace.finite_params.all() and np.isfinite(guarded.metric).all()
    np.testing.assert_array_equal(guarded.first_failure, [-1] * seeds)

    verdict = failures.verdict(arms)
    assert not verdict.bare_ok and verdict.guarded_finite and verdict.met
    table = failures.markdown(results)
    assert "| NaN batches | bare | 2/2 |" in table
    assert "| NaN batches | guarded | 0/2 |" in table
    assert "| met |" in table
    png = failures.figure(results, tmp_path / "failures.png")
    assert png.stat().st_size > 0


def test_every_balancer_has_a_scenario():
    names = set(failures.SCENARIOS)
    assert {"uncertainty", "annealing", "gradnorm", "dwa", "softadapt", "encodec"} <= names
    assert {"relobralo", "unguarded", "nan", "edge"} <= names
    assert set(failures.RECOMMENDED) == set(FACTORIES)


@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_docstring_recommends_the_guards_the_gym_measures(method):
    """Each factory's "Recommended guards" paragraph names the guarded arm's settings."""
    text = " ".join(FACTORIES[method].__doc__.split())
    assert "Recommended guards: ``" in text
    settings = text.split("Recommended guards: ``", 1)[1].split("``", 1)[0]
    assert eval(f"dict({settings})") == failures.RECOMMENDED[method]  # noqa: S307
    extra = {"main": "a"} if method == "lr_annealing" else {}
    FACTORIES[method]({"a": 1.0, "b": 1.0}, **failures.RECOMMENDED[method], **extra)


def test_main_writes_the_table_and_the_figure(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(failures, "run_gym", lambda names, **kwargs: tiny)
    failures.main(["--only", "nan", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failures.md", "failures.png"]
    text = (tmp_path / "failures.md").read_text()
    assert text.startswith("`python -m benchmarks.failures --only nan`")
    assert "| NaN batches | guarded | 0/2 |" in text
    assert str(tmp_path / "failures.md") in capsys.readouterr().out


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.skipif(
    shutil.which("git") is None or git("rev-parse").returncode != 0, reason="needs a git checkout"
)
def test_default_output_is_ignored_and_results_are_committed():
    for name in ("failures.md", "failures.png"):
        path = failures.DEFAULT_OUT / name
        assert git("check-ignore", "-q", str(path)).returncode == 0, f"{path} is not ignored"
        assert (ROOT / "results" / name).is_file()
