"""The confirmation tier: screen problems at a realistic size, their arms and fixed-weight grid
chosen from the screen's committed results by calibration scores only."""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from benchmarks import pages, problems, profiles, report

# the invariants train fingerprints through the harness's optax loops
pytestmark = pytest.mark.standard_promotion

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def test_confirmation_problems_are_screen_problems_at_100k_parameters_or_more():
    for name, make in problems.CONFIRMATION.items():
        problem = make()
        assert problem.name == name
        assert problem.screen in problems.PROBLEMS
        assert problems.parameter_count(problem) >= 100_000
        screen = problems.PROBLEMS[problem.screen]()
        assert problem.base == screen.base and problem.terms == screen.terms
    # the screen problems themselves are unchanged by the width setting
    assert problems.parameter_count(problems.digits()) == 7508
    assert problems.parameter_count(problems.imbalanced()) == 387


def _fake_screen(tmp_path: pathlib.Path) -> pathlib.Path:
    rows = [
        dict(label="base", kind="fixed", calibration=0.1),
        dict(label="stable", kind="method", calibration=0.01),  # the default: always run
        dict(label="stable ratios", kind="method", calibration=0.02),
        dict(label="a", kind="method", calibration=0.5),
        dict(label="b", kind="method", calibration=0.3),
        dict(label="c", kind="method", calibration=float("nan")),  # never finished
        dict(label="d", kind="method", calibration=0.4),
        dict(label="e", kind="method", calibration=0.9),
    ]
    grid = [
        dict(weights={"x": 1.0, "y": 1.0}, score=0.3, finished=2),
        dict(weights={"x": 2.0, "y": 2.0}, score=0.1, finished=2),  # the same ratio as above
        dict(weights={"x": 3.0, "y": 1.0}, score=0.05, finished=1),  # a failed calibration run
        dict(weights={"x": 1.0, "y": 3.0}, score=0.2, finished=2),
        dict(weights={"x": 1.0, "y": 9.0}, score=float("inf"), finished=2),
        dict(weights={"x": 9.0, "y": 1.0}, score=0.25, finished=2),
        dict(weights={"x": 5.0, "y": 1.0}, score=0.35, finished=2),
    ]
    data = dict(calibration_seeds=[1, 2], rows=rows, grid=grid)
    (tmp_path / "fake.json").write_text(json.dumps(report.to_json(data)))
    return tmp_path


def test_screen_methods_are_the_best_by_calibration_without_the_default(tmp_path):
    results = _fake_screen(tmp_path)
    assert profiles.screen_methods("fake", 3, results) == ("b", "d", "a")


def test_screen_ratios_are_the_best_finished_cells_each_ratio_once(tmp_path):
    results = _fake_screen(tmp_path)
    ratios = profiles.screen_ratios("fake", 3, results)
    assert [tuple(round(v, 6) for v in r.values()) for r in ratios] == [
        (0.5, 0.5),
        (0.25, 0.75),
        (0.9, 0.1),
    ]


def test_a_missing_screen_result_names_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fake\.json.*--problems fake"):
        profiles.screen_methods("fake", 3, tmp_path)


def test_the_confirm_profile_runs_the_default_and_seeds_the_grid_from_the_screen():
    profile = profiles.PROFILES["confirm"]
    for name, make in problems.CONFIRMATION.items():
        screen = make().screen
        assert profile.labels(name) == ("stable", *profiles.screen_methods(screen))
        assert profile.problem(name).ratios == profiles.screen_ratios(screen)
    # the other profiles leave the confirmation problems' own grids alone
    assert profiles.PROFILES["quick"].problem("digits_wide").ratios != profiles.screen_ratios(
        "digits"
    )


@pytest.mark.parametrize("name", list(problems.CONFIRMATION))
def test_committed_confirmation_results_hold_the_suites_invariants(name):
    from tests.test_results_invariants import check_problem

    path = RESULTS / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not committed")
    data = report.from_json(json.loads(path.read_text()))
    profile = profiles.PROFILES["confirm"]
    check_problem(data, profile)
    assert len(data["evaluation_seeds"]) >= 5
    labels = [r["label"] for r in data["rows"] if r["kind"] == "method"]
    not_run = profiles.CONFIRMATION_NOT_RUN.get(name, {})
    assert set(profile.labels(name)) - set(not_run) <= set(labels)
    assert not set(not_run) & set(labels), "a declared gap that has its row: drop the gap"
    assert set(not_run) <= set(profile.labels(name)), "a declared gap the profile never runs"
    best = next(r for r in data["rows"] if r["label"] == "best fixed")
    assert math.isfinite(best["median"])


def test_the_confirmation_page_is_generated_from_the_json():
    confirmed = report.load_confirmation(RESULTS)
    if not confirmed:
        pytest.skip("no confirmation results committed")
    screens = report.load_results(RESULTS)
    text = (RESULTS / "confirmation.md").read_text()
    assert text == report.confirmation_markdown(confirmed, screens)
    page = (ROOT / pages.CONFIRMATION_PAGE).read_text()
    assert pages.block(page, pages.CONFIRMATION_PAGE, pages.CONFIRMATION_BLOCK) == (
        pages.confirmation(confirmed, screens)
    )
