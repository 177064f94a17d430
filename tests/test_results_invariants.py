"""Invariants of the committed results (``results/*.json``) and of the pages that quote them.

Each committed problem must come from the ``committed`` profile; its tuned reference must be
finite and what the selection rule picks from its own grid; every arm's learning rate must be
interior to the rates it tried or marked; every row must carry its per-seed scores, its record
and a behavioural fingerprint equal to the current code's (no stale rows); the regrets, intervals
and calls must be what the per-seed scores give. The generated blocks of MEASURED.md, the
choosing page and the README must be what the json gives today.
"""

from __future__ import annotations

import json
import math
import pathlib
import re

import numpy as np
import pytest

from benchmarks import pages, problems, profiles, report, stats

# the fingerprints train through the harness, whose optax loops promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
STATUS = re.compile(r"^(interior|extended \d+|edge|none finished)$")


def load(name: str) -> dict:
    return report.from_json(json.loads((RESULTS / f"{name}.json").read_text()))


def _same(a: float, b: float) -> bool:
    """Equal up to float32 rounding (the scores are float32; the json holds float64)."""
    return (
        (math.isnan(a) and math.isnan(b))
        or a == b
        or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)
    )


def check_selection(data: dict) -> None:
    """The tuned reference is finite and the selection rule's choice on its own grid."""
    best = next(r for r in data["rows"] if r["label"] == "best fixed")
    scores = np.asarray(best["calibration_scores"])
    assert scores.size >= 1 and np.all(np.isfinite(scores)), "reference failed in calibration"
    assert math.isfinite(best["median"]), "reference not finite on the evaluation seeds"
    complete = [g for g in data["grid"] if np.all(np.isfinite(g["scores"]))]
    assert complete, "no grid setting finished every calibration run"
    lowest = min(complete, key=lambda g: g["score"])
    # chosen within one standard error of the lowest cell, then its rate within its own
    bar = lowest["score"] + stats.median_se(np.asarray(lowest["scores"])) + stats.median_se(scores)
    assert best["calibration"] <= bar + 1e-12
    assert all(not math.isnan(g["score"]) for g in data["grid"])  # a NaN is a failed run: inf


def check_row(data: dict, row: dict, reference: np.ndarray) -> None:
    """A row's record, rate, per-seed scores and statistics."""
    label = row["label"]
    for key in ("commit", "command", "machine", "profile", "fingerprint"):
        assert row.get(key), (label, key)
    assert row["profile"] == data["profile"], label
    scores = np.asarray(row["scores"])
    assert len(scores) == row["runs"] == len(data["evaluation_seeds"]), label
    assert _same(float(np.median(scores)), row["median"]), label
    assert np.isfinite(scores).sum() <= row["finished"], label
    if row["kind"] in ("fixed", "method"):
        assert STATUS.match(row["rate_status"]), (label, row["rate_status"])
        tried = row["rates_tried"]
        assert row["rate"] in tried, label
        if row["rate_status"].startswith(("interior", "extended")) and len(tried) > 1:
            assert min(tried) < row["rate"] < max(tried), (label, row["rate"], tried)
    relative = data["kind"] == "relative"
    regret = stats.paired_regret(scores, reference, relative=relative)
    for key, value in zip(("regret", "regret_low", "regret_high"), regret, strict=True):
        assert _same(value, row[key]), (label, key, value, row[key])
    assert row["call"] == stats.call(regret, data["margin"]), label


def check_problem(data: dict, profile: profiles.Profile, *, fingerprints: bool = True) -> None:
    """Every invariant of one problem's data (the module docstring)."""
    assert data["profile"] == profile.name
    assert data["steps"] == profile.problem(data["problem"]).steps
    assert len(data["calibration_seeds"]) == len(profile.plan.calibration_seeds)
    assert not set(data["calibration_seeds"]) & set(data["evaluation_seeds"])
    reference = np.asarray(next(r for r in data["rows"] if r["label"] == "best fixed")["scores"])
    relative = data["kind"] == "relative"
    assert _same(stats.margin(reference, relative=relative), data["margin"])
    check_selection(data)
    for row in data["rows"]:
        check_row(data, row, reference)
    if fingerprints:
        assert report.stale(data["rows"]) == [], "stale rows: rerun them"


@pytest.mark.parametrize("name", list(problems.PROBLEMS))
def test_committed_results_hold_their_invariants(name):
    profile = profiles.PROFILES["committed"]
    data = load(name)
    check_problem(data, profile)
    assert len(data["calibration_seeds"]) >= 5
    assert len(data["evaluation_seeds"]) >= 10
    best = next(r for r in data["rows"] if r["label"] == "best fixed")
    if stats.robust_sigma(best["scores"]) / abs(best["median"]) > 0.1:
        assert len(data["evaluation_seeds"]) >= 20  # a noisy tuned arm asks for 20 seeds
    labels = {r["label"] for r in data["rows"]}
    assert {"base", "best fixed", "stable"} <= labels


def test_committed_tables_and_pages_are_generated_from_the_json():
    results = report.load_results(RESULTS)
    assert list(results) == list(problems.PROBLEMS)
    assert (RESULTS / "summary.md").read_text() == report.summary_markdown(results)
    for name, data in results.items():
        problem = profiles.PROFILES["committed"].problem(name)
        assert (RESULTS / f"{name}.md").read_text() == report.problem_markdown(problem, data)
    for path, block in pages.generated_blocks(results).items():
        text = (ROOT / path).read_text()
        assert pages.block(text, path) == block, f"{path}: run --summary --out results"


def test_the_toy_metric_resolves_what_the_toy_reports():
    """The interpolant's error is below the float32 metric's own resolution (about 5e-7 at
    the set's coordinates, up to 8) and far below the toy's margin."""
    front = problems.pareto_set()
    finer = problems.pareto_set(2 * len(front) - 1)
    sagitta = np.abs((front[:-1, 1] + front[1:, 1]) / 2 - finer[1::2, 1]).max()
    assert sagitta < 1e-7
    assert sagitta < 0.01 * load("toy")["margin"]


def test_the_readme_measured_paragraph_quotes_the_demo_as_measured():
    """The paragraph's statement outside the suite's block: the 20-seed demo at lr 0.14."""
    readme = (ROOT / "README.md").read_text()
    paragraph = readme.split("## Measured", 1)[1]
    assert "the default finishes at least as many runs as they do, most collapsed as" in paragraph
    assert "finishes them all at lr 0.14" in paragraph
    rows = {}
    for line in (RESULTS / "demo_20seeds.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and "(0.14)" in cells[0]:
            rows[cells[1]] = cells
    finished = {k: int(v[2].split("/")[0]) for k, v in rows.items()}
    seeds = int(rows["fixed"][2].split("/")[1])
    assert finished["stable"] >= finished["fixed"]
    assert 2 * int(rows["stable"][3]) > finished["stable"]  # most collapsed
    assert int(rows["fixed"][3]) == finished["fixed"]  # as theirs
    assert finished["fixed_floor"] == seeds
