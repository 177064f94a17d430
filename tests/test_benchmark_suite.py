"""The benchmark suite in its quick profile (every problem, tiny), and the failure gym.

One run of ``python -m benchmarks.report --profile quick`` (module fixture) serves the tests
that need training: the tables must have every cell, the best fixed weights' own regret must be
0 and the selection rule must hold on the grid, a learning rate that diverges must be flagged
and never chosen, and the distilled arms must replay what the adaptive arm did. The statistics
and the selection rule are also tested alone, on numbers built to break them.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from benchmarks import failures, fingerprint, harness, problems, profiles, report, stats
from tests.test_results_invariants import check_problem

QUICK = profiles.PROFILES["quick"]

# optax training loops, which promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    report.main(["--profile", "quick", "--out", str(out)])
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
    assert header.count("|") == len(problems.PROBLEMS) + 5  # arm, problems, tally, cost, gradients
    by_label = {row.split("|")[1].strip(): row for row in rows}
    assert "base" in by_label and "stable" in by_label and "mgda" in by_label
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert len(cells) == len(problems.PROBLEMS) + 4
        assert all(cells), row  # no empty cell
    # the base weights and every arm that ran on a problem have a measured regret there
    base_cells = [c.strip() for c in by_label["base"].split("|")[2 : 2 + len(problems.PROBLEMS)]]
    assert "not run" not in base_cells
    for name, labels in QUICK.arms.items():
        for label in labels:
            assert any(r["label"] == label for r in data[name]["rows"]), (name, label)


def test_summary_orders_arms_as_the_table_and_shows_guards_bare_and_guarded():
    def row(label, regret, method, call="unclear"):
        return dict(
            label=label,
            kind="method",
            method=method,
            median=1.0,
            regret=regret,
            regret_low=regret - 0.1,
            regret_high=regret + 0.1,
            call=call,
            cost=1.0,
        )

    results = {
        "p": dict(
            kind="relative",
            rows=[row("dwa+guards", 0.0, "dwa", "as good"), row("dwa", 1.0, "dwa", "worse")],
        ),
        "q": dict(
            kind="relative", rows=[row("dwa", 0.0, "dwa"), row("dwa+guards", math.inf, "dwa")]
        ),
    }
    order = report._ordered(["dwa (averaged)", "dwa+guards", "dwa", "stable", "dwa (distilled)"])
    assert order == ["stable", "dwa", "dwa (distilled)", "dwa (averaged)", "dwa+guards"]
    guards = [line for line in report.guards_markdown(results) if line.startswith("| dwa ")]
    assert guards == [
        "| dwa | +100.0 % [+90.0, +110.0] -> +0.0 % [-10.0, +10.0] | "
        "+0.0 % [-10.0, +10.0] -> failed |"
    ]
    table = report._table(results, ["dwa", "dwa+guards"], costs=True)
    assert table[2].split("|")[-4].strip() == "0 / 0 / 2"  # worse and unclear are not counted
    assert table[3].split("|")[-4].strip() == "0 / 1 / 2"


def test_best_fixed_has_zero_regret_and_the_selection_rule_holds(quick):
    _, data = quick
    for name, problem_data in data.items():
        rows = {r["label"]: r for r in problem_data["rows"]}
        assert rows["best fixed"]["regret"] == 0.0, name
        assert (rows["best fixed"]["regret_low"], rows["best fixed"]["regret_high"]) == (0, 0)
        check_problem(problem_data, QUICK, fingerprints=False)
        for row in problem_data["rows"]:
            assert row["runs"] == len(QUICK.plan.evaluation_seeds)
            assert 0 <= row["finished"] <= row["runs"]
            assert row["runs_needed"] >= 1
        assert rows["best fixed"]["runs_needed"] >= len(problem_data["grid"])


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
    for method in QUICK.arms["toy"]:
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


def test_the_one_term_arm_is_m_config_then_sgd_on_the_due_terms_gradient():
    """M-ConFIG's arm trains as the authors' loop: term ``t % K``'s gradient only, the
    transform, then SGD; the same metrics as that loop written out, and weights of 1."""
    import functools

    import jax
    import optax

    import adaptive_optax as ao

    problem = fingerprint.synthetic()
    steps, rate = 30, 0.05
    arm = harness.m_config_arm(problem.base)
    runs = harness.train(problem, arm, seeds=[0], rates=[rate], steps=steps)
    init_key, data_key = jax.random.split(jax.random.key(0))
    params = problem.init(init_key)
    tx = optax.chain(ao.m_config(len(problem.terms)), optax.sgd(rate))
    opt_state = tx.init(params)

    @functools.partial(jax.jit, static_argnums=3)  # one compile per term
    def step(params, opt_state, t, index):
        term = problem.terms[index]
        loss = lambda p: problem.losses(p, jax.random.fold_in(data_key, t), t)[term]  # noqa: E731
        grad = jax.grad(loss)(params)
        updates, opt_state = tx.update(grad, opt_state, params, index=index)
        return optax.apply_updates(params, updates), opt_state

    expected = [float(problem.metrics(params)["x"])]
    for t in range(steps):
        params, opt_state = step(params, opt_state, t, t % 3)
        if (t + 1) % (steps // harness.CHECKPOINTS) == 0:
            expected.append(float(problem.metrics(params)["x"]))
    np.testing.assert_allclose(runs.metrics["x"][0], expected, rtol=1e-5)
    assert runs.finished.all() and np.all(runs.weights == 1.0)
    # SGD after an Adam-scaled update: an SGD problem's arm is tuned on the Adam problems' rates
    assert harness.rates_of(problems.PROBLEMS["digits"](), arm) == problems.log_rates(1e-3, 4, 3)
    assert harness.rates_of(problem, arm) == problem.rates  # an Adam problem: its own grid


def test_calibration_and_evaluation_seeds_must_be_disjoint():
    problem = problems.PROBLEMS["toy"]().quick_version()
    plan = harness.Plan(calibration_seeds=(0,), evaluation_seeds=(0, 1))
    with pytest.raises(ValueError, match="disjoint"):
        harness.run_problem(problem, labels=(), plan=plan)


def test_every_method_of_the_library_has_an_arm():
    import adaptive_optax as ao

    presets = {name[: -len("_weights")] for name in ao.__all__ if name.endswith("_weights")}
    presets.remove("distilled")  # ao.distilled_weights reads a state: not a method
    weightings = [arm for arm in harness.ARMS if arm.factory is not harness.m_config_arm]
    assert {arm.factory.__name__[: -len("_weights")] for arm in weightings} == presets
    assert [arm.label for arm in harness.ARMS if arm not in weightings] == ["m_config"]
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


# The selection rule and the statistics, alone ---------------------------------------------------


def test_a_non_finite_metric_is_a_failed_run():
    metrics = {"m": np.asarray([[1.0, 0.5], [1.0, np.nan], [1.0, 0.2]])}
    finished = np.asarray([True, True, False])  # the second: losses finite, metric NaN
    np.testing.assert_array_equal(harness._score(metrics, finished)[:, -1], [0.5, np.inf, np.inf])


def test_selection_never_picks_a_non_finite_or_partly_failed_setting():
    nan_cell = stats.Candidate(0.25, np.asarray([np.nan, 0.1, 0.1, 0.1, 0.1]), (0.25,))
    failed_once = stats.Candidate(0.2, np.asarray([np.inf, 0.2, 0.2, 0.2, 0.2]), (0.2,))
    good = stats.Candidate(0.14, np.asarray([0.79, 0.8, 0.78, 0.81, 0.79]), (0.14,))
    chosen, how = stats.select([nan_cell, failed_once, good])
    assert chosen is good and how == "lowest"
    chosen, how = stats.select([nan_cell, failed_once])
    assert how == "none finished" and chosen is failed_once  # the most conservative


def test_selection_breaks_ties_within_the_noise_toward_the_smaller_rate_then_scale():
    noisy = np.asarray([1.0, 1.2, 0.8, 1.1, 0.9])
    best = stats.Candidate("large", noisy, (0.1, 1.0))
    close = stats.Candidate("small", noisy + 0.05, (0.03, 1.0))  # within one standard error
    far = stats.Candidate("tiny", noisy + 1.0, (0.01, 1.0))  # beyond it
    assert stats.select([best, close, far]) == (close, "tie")
    smaller_scale = stats.Candidate("half", noisy + 0.05, (0.03, 0.5))
    assert stats.select([best, close, smaller_scale])[0] is smaller_scale
    exact = stats.Candidate("exact", np.full(5, 1.0), (0.1, 1.0))  # no noise: no tie
    assert stats.select([exact, stats.Candidate("s", np.full(5, 1.01), (0.03, 1.0))])[0] is exact


def test_paired_regret_pairs_seeds_and_its_interval_covers_a_known_shift():
    rng = np.random.default_rng(0)
    reference = rng.lognormal(0.0, 0.5, 20)  # seed-to-seed noise far above the shift
    arm = reference * 1.05
    regret = stats.paired_regret(arm, reference, relative=True)
    assert regret.low > 0 and regret.low <= regret.value <= regret.high  # paired: resolved
    unpaired = stats.paired_regret(rng.permutation(arm), reference, relative=True)
    assert unpaired.high - unpaired.low > 5 * (regret.high - regret.low)
    same = stats.paired_regret(reference, reference, relative=True)
    assert same == (0.0, 0.0, 0.0)
    failed = stats.paired_regret(np.full(20, np.inf), reference, relative=True)
    assert failed.value == np.inf


def test_calls_read_the_interval_against_the_margin():
    assert stats.call(stats.Regret(-0.1, -0.2, -0.01), 0.02) == "better"
    assert stats.call(stats.Regret(0.0, -0.02, 0.019), 0.02) == "as good"
    assert stats.call(stats.Regret(0.0, -0.02, 0.021), 0.02) == "unclear"
    assert stats.call(stats.Regret(0.1, 0.03, 0.2), 0.02) == "worse"
    reference = np.asarray([1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.2, 0.8, 1.0, 1.0])
    sigma = 1.4826 * np.median(np.abs(reference - np.median(reference)))
    expected = np.sqrt(np.pi / 2) * sigma / np.sqrt(10) / np.median(reference)
    np.testing.assert_allclose(stats.margin(reference, relative=True), expected, rtol=1e-5)


def fake_runs(scores: np.ndarray) -> harness.Runs:
    """Runs whose final validation scores are ``scores`` (inf: failed)."""
    n = len(scores)
    finished = np.isfinite(scores)
    metric = {"m": np.stack([np.ones(n), np.where(finished, scores, np.nan)], axis=1)}
    empty = np.zeros((n,))
    return harness.Runs(
        metric, metric, finished, empty, np.ones((n, 2)), empty, empty, empty, None, 0, 0, empty
    )


def test_rates_at_the_grid_edge_are_extended_until_interior_or_marked():
    def score_at_optimum(optimum):
        def score_at(rates):
            return {
                r: fake_runs(1 + np.log(r / optimum) ** 2 + 0.001 * np.arange(5)) for r in rates
            }

        return score_at

    grid = (0.001, 0.003, 0.01, 0.03)
    choice = harness.tune_rate(score_at_optimum(0.25), grid, extensions=3)
    assert choice.status == "extended 3" and choice.rate == 0.27 and max(choice.tried) == 0.81
    choice = harness.tune_rate(score_at_optimum(10.0), grid, extensions=1)
    assert choice.status == "edge" and choice.rate == max(choice.tried) == 0.09
    choice = harness.tune_rate(score_at_optimum(0.005), grid, extensions=1)
    assert choice.status == "interior" and choice.tried == grid


def test_fixed_weight_grids_move_every_term_at_once():
    base = {"a": 1.0, "b": 2.0, "c": 0.5}
    moves = problems.joint(base, 10.0, 8)
    assert moves[0] == base and len(moves) == 9
    for move in moves[1:]:
        factors = [move[k] / base[k] for k in base]
        assert all(f != 1.0 and 0.1 <= f <= 10.0 for f in factors)
    assert problems.log_rates(0.001, 4, 3.0) == (0.001, 0.003, 0.009, 0.027)


def test_the_toy_metric_projects_onto_the_pareto_set_between_its_samples():
    front = problems.pareto_set()
    midpoint = (front[1000] + front[1001]) / 2
    assert np.min(np.linalg.norm(front - midpoint, axis=1)) > 1e-5  # the old metric's floor
    assert float(problems.distance_to_polyline(midpoint, front)) < 1e-6
    # the interpolant's own error: midpoints against the curve solved at twice the resolution
    finer = problems.pareto_set(2 * len(front) - 1)
    sagitta = np.abs((front[:-1, 1] + front[1:, 1]) / 2 - finer[1::2, 1]).max()
    assert sagitta < 1e-6


def test_fingerprints_tell_arms_apart_and_find_identical_ones():
    labels = ("uncertainty", "imtl_l", "dwa+guards", "encodec+guards", "encodec wide+guards")
    prints = {label: fingerprint.of_label(label) for label in labels}
    assert prints["uncertainty"] == prints["imtl_l"]  # the same rule: shown once
    assert len({prints[k] for k in labels[2:]} | {prints["uncertainty"]}) == 4
    assert fingerprint.of_label("uncertainty") == fingerprint.of_label("uncertainty")


def test_a_merge_keeps_current_rows_and_refuses_stale_ones():
    def row(label, print_):
        return dict(label=label, fingerprint=print_, rate=0.1, weights=None, scores=[1.0])

    fixed = fingerprint.of(None)
    best = row("best fixed", fixed)
    data = dict(problem="p", profile="committed", command="b", seconds=1, compile_s=1)
    data["rows"] = [best, row("base", fixed)]
    previous = dict(data, command="a", rows=[best, row("stable", fingerprint.of_label("stable"))])
    previous["rows"].append(row("uncertainty", "0123456789abcdef"))  # measured by other code
    merged = report.merge(dict(data), previous)
    assert [r["label"] for r in merged["rows"]] == ["best fixed", "base", "stable"]
    assert merged["command"] == "a; b"
    other = report.merge(dict(data), dict(previous, profile="full"))  # another profile
    assert [r["label"] for r in other["rows"]] == ["best fixed", "base"]
