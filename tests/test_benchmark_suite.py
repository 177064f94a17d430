"""The benchmark suite in its quick mode (every problem, tiny), and the failure gym on the harness.

One run of ``python -m benchmarks.report --quick`` (module fixture) serves every test here: the
tables must have every cell, the best fixed weights' own regret must be 0 and no grid setting
may beat them on the calibration seeds, a learning rate that diverges must be flagged and never
chosen, and the distilled arms must replay what the adaptive arm did.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from benchmarks import failures, harness, problems, report

# optax training loops, which promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    report.main(["--quick", "--out", str(out)])
    data = {
        name: report.from_json(json.loads((out / f"{name}.json").read_text()))
        for name in problems.PROBLEMS
    }
    return out, data


def test_every_problem_writes_its_table_figure_and_a_summary_row(quick):
    out, data = quick
    for name in problems.PROBLEMS:
        assert (out / f"{name}.md").read_text().startswith("# ")
        assert (out / f"{name}.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    first_table = summary.split("\n\n| arm |", 1)[1].split("\n\n", 1)[0]
    table = [line for line in ("| arm |" + first_table).splitlines() if line.startswith("| ")]
    header, rows = table[0], table[1:]
    assert header.count("|") == len(problems.PROBLEMS) + 5  # arm, problems, 2 %, cost, gradients
    by_label = {row.split("|")[1].strip(): row for row in rows}
    assert "base" in by_label and "stable" in by_label and "mgda" in by_label
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert len(cells) == len(problems.PROBLEMS) + 4
        assert all(cells), row  # no empty cell
    # the base weights and every arm that ran on a problem have a measured regret there
    base_cells = [c.strip() for c in by_label["base"].split("|")[2 : 2 + len(problems.PROBLEMS)]]
    assert "not run" not in base_cells
    for name, labels in report.QUICK_ARMS.items():
        for label in labels:
            assert any(r["label"] == label for r in data[name]["rows"]), (name, label)


def test_summary_orders_arms_as_the_table_and_tallies_what_the_guards_buy():
    def row(label, median, regret, method):
        return dict(label=label, kind="method", method=method, median=median, regret=regret)

    results = {
        "p": dict(
            kind="relative",
            command="c",
            machine="m",
            rows=[
                row("dwa+guards", 1.0, 0.0, "dwa"),
                row("dwa", 2.0, 1.0, "dwa"),
                row("stable", 1.0, 0.0, "stable"),
                row("dwa (averaged)", 1.0, 0.0, "dwa"),
                row("dwa (distilled)", 1.0, 0.0, "dwa"),
            ],
        ),
        "q": dict(
            kind="relative",
            command="c",
            machine="m",
            rows=[row("dwa", 1.0, 0.0, "dwa"), row("dwa+guards", math.inf, math.inf, "dwa")],
        ),
        "r": dict(  # both arms failed: no better, no worse
            kind="relative",
            command="c",
            machine="m",
            rows=[
                row("dwa", math.inf, math.inf, "dwa"),
                row("dwa+guards", math.inf, math.inf, "dwa"),
            ],
        ),
    }
    for r in results["p"]["rows"] + results["q"]["rows"] + results["r"]["rows"]:
        r["cost"] = 1.0
    order = report._ordered(["dwa (averaged)", "dwa+guards", "dwa", "stable", "dwa (distilled)"])
    assert order == ["stable", "dwa", "dwa (distilled)", "dwa (averaged)", "dwa+guards"]
    guards = [line for line in report.guards_markdown(results) if line.startswith("| dwa ")]
    assert guards == [
        "| dwa | +100.0 % -> +0.0 % | +0.0 % -> failed | failed -> failed | 1 / 1 / 1 |"
    ]


def test_best_fixed_has_zero_regret_and_no_grid_setting_beats_it(quick):
    _, data = quick
    for name, problem_data in data.items():
        rows = {r["label"]: r for r in problem_data["rows"]}
        assert rows["best fixed"]["regret"] == 0.0, name
        assert rows["best fixed"]["regret_time"] == 0.0, name
        best = rows["best fixed"]["calibration"]
        assert all(g["score"] >= best for g in problem_data["grid"]), name
        for row in problem_data["rows"]:
            assert row["runs"] == len(report.QUICK_SEEDS["evaluation_seeds"])
            assert 0 <= row["finished"] <= row["runs"]
            assert row["runs_needed"] >= 1
        assert rows["best fixed"]["runs_needed"] == rows["base"]["runs_needed"] * len(
            problem_data["grid"]
        ) // len(problems.PROBLEMS[name]().quick_version().rates)


def test_a_diverging_learning_rate_is_flagged_and_never_chosen(quick):
    _, data = quick
    tts = data["tts_sgd"]  # quick rates: 0.05 and 50 (every run diverges at 50)
    assert all(math.isinf(g["score"]) for g in tts["grid"] if g["rate"] == 50.0)
    assert all(math.isfinite(g["score"]) for g in tts["grid"] if g["rate"] == 0.05)
    rows = {r["label"]: r for r in tts["rows"]}
    for label in ("base", "best fixed"):
        assert rows[label]["rate"] == 0.05
        assert rows[label]["stable_rate"] == 0.05  # 50 is not stable
        assert rows[label]["finished"] == rows[label]["runs"]


def test_the_distilled_arm_replays_the_methods_average_weights(quick):
    _, data = quick
    toy = {r["label"]: r for r in data["toy"]["rows"]}
    base_total = sum(problems.PROBLEMS["toy"]().base.values())
    for method in report.QUICK_ARMS["toy"]:
        distilled = toy[f"{method} (distilled)"]
        averaged = toy[f"{method} (averaged)"]
        assert distilled["rate"] == averaged["rate"] == toy[method]["rate"]
        np.testing.assert_allclose(sum(distilled["weights"].values()), base_total, rtol=1e-5)
        ratio = np.asarray(list(averaged["weights"].values()))
        np.testing.assert_allclose(
            np.asarray(list(distilled["weights"].values())),
            ratio / ratio.sum() * base_total,
            rtol=1e-5,
        )


def test_fixed_weights_are_traced_one_compile_trains_a_grid():
    """Runs with different weights and rates differ; the same seed and setting agree."""
    problem = problems.PROBLEMS["toy"]().quick_version()
    # the terms out of sorted order: each column of ``fixed`` is the term of its position
    problem = dataclasses.replace(problem, base={"f2": 1.0, "f1": 1.0})
    train = harness.trainer(problem, None, batch=4)
    runs = train(
        seeds=[0, 0, 0, 1],
        rates=[0.01, 0.01, 0.03, 0.01],
        fixed=np.asarray([[1.0, 1.0], [0.2, 1.8], [1.0, 1.0], [1.0, 1.0]]),
    )
    final = runs.metrics["pareto"][:, -1]
    assert runs.finished.all() and np.isfinite(final).all()
    assert len(set(np.round(final, 6))) == 4
    np.testing.assert_allclose(runs.mean_weights[1], [0.2, 1.8], rtol=1e-6)  # f2 0.2, f1 1.8
    again = train(seeds=[0], rates=[0.01], fixed=np.asarray([[1.0, 1.0]]))  # padded: no compile
    np.testing.assert_allclose(again.metrics["pareto"][0], runs.metrics["pareto"][0], rtol=1e-5)


def test_calibration_and_evaluation_seeds_must_be_disjoint():
    problem = problems.PROBLEMS["toy"]().quick_version()
    with pytest.raises(ValueError, match="disjoint"):
        harness.run_problem(problem, labels=(), calibration_seeds=(0,), evaluation_seeds=(0, 1))


def test_every_method_of_the_library_has_an_arm():
    import adaptive_optax as ao

    presets = {name[: -len("_weights")] for name in ao.__all__ if name.endswith("_weights")}
    presets.remove("distilled")  # ao.distilled_weights reads a state: not a method
    assert {arm.factory.__name__[: -len("_weights")] for arm in harness.ARMS} == presets
    labels = [v.label for v in harness.variants()]
    assert len(labels) == len(set(labels))
    assert "dwa+guards" in labels and "mgda+guards" not in labels


def test_failure_gym_nan_burst_on_the_harness():
    """Bare, NaN batches reach the parameters for good; guarded (apply_if_finite), never."""
    results = failures.run_gym(["nan"], seeds=2, steps=40, arms=("bare", "guarded"))
    scenario, arms = results["nan"]
    start, _ = scenario.poisoned
    for result in arms.values():
        assert result.trace.weights.shape == (2, 40, len(scenario.base))
        assert np.all(np.isfinite(result.trace.weights))
    assert arms["bare"].failed.all()
    np.testing.assert_array_equal(arms["bare"].first_failure, [start, start])
    assert not arms["guarded"].failed.any()
    np.testing.assert_array_equal(arms["guarded"].first_failure, [-1, -1])
    # when the terms went NaN: at the poisoned step (ao.metrics counts steps from 1), every
    # term at once, as b's NaN loss makes every per-term gradient NaN (0 x NaN in the shared
    # backward pass); the bare run's parameters are NaN from then on
    first, last = arms["bare"].nonfinite_steps[:, 0, :], arms["bare"].nonfinite_steps[:, 1, :]
    np.testing.assert_array_equal(first, start + 1)
    np.testing.assert_array_equal(last, 40)
    np.testing.assert_array_equal(arms["guarded"].nonfinite_steps, 0)  # skipped before it
    assert f"| {scenario.name} | bare | " in failures.attribution(results)
