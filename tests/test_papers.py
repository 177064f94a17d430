"""The published PINN tables (benchmarks/papers.py): the set-ups, a reduced run, the records.

The reduced runs train a few steps of one arm each (the full tables are the committed
``results/papers_*.json``); the invariants tests check that those files, their pages and the
blocks that quote them agree.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_optax as ao
from benchmarks import papers, problems, stats

# the benchmarks train with optax's Adam, which promotes implicitly (tests/conftest.py)
pytestmark = pytest.mark.standard_promotion

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def test_latin_hypercube_puts_one_point_in_each_stratum():
    points = np.asarray(papers.latin_hypercube(jax.random.key(3), 50, 2))
    assert points.shape == (50, 2)
    assert np.all((points >= 0) & (points < 1))
    for d in range(2):
        assert sorted(np.floor(points[:, d] * 50).astype(int).tolist()) == list(range(50))


def test_cole_hopf_agrees_with_direct_quadrature():
    nu = problems.BURGERS_NU
    t, x = np.array([0.0, 0.37, 1.0]), np.array([-0.9, 0.004, 0.5])
    u = problems.cole_hopf(t, x)
    np.testing.assert_allclose(u[0], -np.sin(np.pi * x), atol=1e-12)
    z = np.linspace(-12.0, 12.0, 200001)
    for i in (1, 2):
        for j, xj in enumerate(x):
            y = xj - np.sqrt(4 * nu * t[i]) * z
            log_f = -np.cos(np.pi * y) / (2 * np.pi * nu) - z**2
            f = np.exp(log_f - log_f.max())
            assert abs(u[i, j] + (np.sin(np.pi * y) * f).sum() / f.sum()) < 1e-9
    # the suite's reference grid is cole_hopf on its own grid
    tr, xr, ur = problems.burgers_reference()
    np.testing.assert_array_equal(ur, problems.cole_hopf(tr, xr))


def test_their_burgers_array_differs_from_cole_hopf_as_the_page_says():
    check = papers.burgers_reference_check()
    assert np.load(papers.BURGERS_DATA).shape == (papers.BURGERS_NT, papers.BURGERS_NX)
    assert check["mse_t0_shifted"] < check["mse_t0"] / 100  # their first row is not t = 0
    assert check["mse"] < 1e-3
    assert 0.1 < check["max_abs"] < 0.2  # at the shock


def test_annealing_arm_is_the_library_rule_with_the_codes_statistics():
    table = papers.helmholtz_table()
    params = table.init(jax.random.key(0))
    key = jax.random.key(1)
    grads = {k: jax.grad(lambda p, k=k: table.losses(p, key)[k])(params) for k in table.terms}
    s = papers.code_statistics(grads)
    # the code: max over weight matrices; mean over layers of each matrix's mean |gradient|
    ws = {k: [layer["w"] for layer in g] for k, g in grads.items()}
    assert float(s["max_abs"]["residual"]) == max(
        float(jnp.max(jnp.abs(w))) for w in ws["residual"]
    )
    mean_b = np.mean([float(jnp.mean(jnp.abs(w))) for w in ws["boundary"]])
    assert float(s["mean_abs"]["boundary"]) == pytest.approx(mean_b, rel=1e-6)
    weighting = papers.weighting_of(table, "lr_annealing")
    assert weighting is not None
    losses = table.losses(params, key)
    weights, state = weighting.update(losses, weighting.init(), grad_stats=s)
    expected = 0.9 * 1.0 + 0.1 * float(s["max_abs"]["residual"]) / float(s["mean_abs"]["boundary"])
    assert float(state.weights["boundary"]) == pytest.approx(expected, rel=1e-5)
    assert float(state.weights["residual"]) == 1.0
    # between the updates (every 10 steps) the weight holds
    _, state2 = weighting.update(losses, state, grad_stats=s)
    assert float(state2.weights["boundary"]) == float(state.weights["boundary"])
    guarded = papers.weighting_of(table, "lr_annealing+guards")
    assert guarded is not None and guarded is not weighting
    assert papers.weighting_of(table, "plain") is None


def written_as_returned(name, data, out) -> None:
    """The json and page the reduced run wrote agree with what it returned."""
    saved = json.loads((out / f"papers_{name}.json").read_text())
    assert saved["arms"][0]["scores"] == data["arms"][0]["scores"]
    assert (out / f"papers_{name}.md").read_text() == papers.markdown(saved)
    assert not (out / f"papers_{name}.partial.json").exists()


def test_a_reduced_wang_table_anneals_under_the_guards_and_writes_its_page(tmp_path):
    """A few steps of lr annealing under its guards (one test per table: they compile long)."""
    wang = papers.main(
        ["klein_gordon", "--seeds", "2", "--steps", "20", "--arms", "lr_annealing+guards"]
        + ["--out", str(tmp_path), "--reduced", "20 steps, 2 seeds, one arm (a test)"]
    )
    assert wang is not None
    (row,) = wang["arms"]
    assert row["guarded"] and row["guards"] == dict(ao.RECOMMENDED["lr_annealing"])
    assert all(row["finished"]) and len(row["scores"]) == 2
    weights = np.asarray(row["final_weights"])
    assert np.all(weights[:, 0] == 1.0) and np.all(weights[:, 1:] != 1.0)  # annealed
    written_as_returned("klein_gordon", wang, tmp_path)


def test_a_reduced_burgers_table_trains_config_and_m_config_and_writes_its_page(tmp_path):
    burgers = papers.main(
        ["burgers", "--seeds", "2", "--steps", "20", "--arms", "config,m-config"]
        + ["--out", str(tmp_path)]
    )
    assert burgers is not None
    assert [r["label"] for r in burgers["arms"]] == ["config", "m-config"]
    # ao.RECOMMENDED["config"] is empty; M-ConFIG has no weights to guard, so no twin
    assert burgers["aliases"] == {"config": "config+guards"}
    for row in burgers["arms"]:
        assert all(row["finished"])
        assert all(np.isfinite(row["best"]["mse"])) and all(
            b <= f for b, f in zip(row["best"]["mse"], row["scores"], strict=True)
        )
    m_config = burgers["arms"][1]
    assert np.all(np.asarray(m_config["final_weights"]) == 1.0)  # no weights: reported as 1
    curve = np.asarray(m_config["curve"]["mse"])
    assert np.all(curve[:, -1] != curve[:, 0])  # it trained
    written_as_returned("burgers", burgers, tmp_path)


# The committed tables ---------------------------------------------------------------------------


def committed() -> dict[str, dict]:
    results = papers.load(RESULTS)
    assert set(results) == set(papers.TABLES), "every published table is committed"
    return results


@pytest.mark.parametrize("name", sorted(papers.TABLES))
def test_committed_table_records_and_page_agree(name):
    data = committed()[name]
    assert len(data["seeds"]) >= 5
    assert data["commit"] and data["command"].startswith(f"python -m benchmarks.papers {name}")
    assert (RESULTS / f"papers_{name}.md").read_text() == papers.markdown(
        data, papers.authors_run(RESULTS, name)
    )
    labels = [r["label"] for r in data["arms"]]
    for row in data["arms"]:
        assert row["scores"] == row["final"][data["score"]]
        assert len(row["scores"]) == len(data["seeds"]) == len(row["finished"])
    for c in data["comparisons"]:
        arm = next(r for r in data["arms"] if r["label"] == c["arm"])
        bare = next(r for r in data["arms"] if r["label"] == c["against"])
        regret = stats.paired_regret(
            np.asarray(arm["scores"]), np.asarray(bare["scores"]), relative=True
        )
        assert [c["value"], c["low"], c["high"]] == pytest.approx(list(regret), nan_ok=True)
    # every arm of the table: trained to the end, or stopped with its scores at the step reached
    stopped = [u["label"] for u in data["unfinished"]]
    assert sorted(labels + stopped) == sorted(label for label, _ in papers.TABLES[name]().arms)
    for u in data["unfinished"]:
        assert len(u["scores"]) == len(data["seeds"]) and 0 < u["step"] <= data["paper_steps"]
        assert (ROOT / u["log"]).exists()  # the progress log it was read from is committed
        assert (
            papers.unfinished_arm(u["label"], ROOT / u["log"], len(data["seeds"]))["scores"]
            == (u["scores"])
        )
    twins = {r["label"] for r in data["arms"]} & {"lr_annealing", "lr_annealing+guards"}
    expected = ["lr_annealing+guards"] if len(twins) == 2 else []
    assert [c["arm"] for c in data["comparisons"]] == expected
    if name == "burgers":
        assert data["aliases"] == ({"config": "config+guards"} if "config" in labels else {})


@pytest.mark.parametrize("page", papers.QUOTING)
def test_quoting_pages_hold_the_generated_block(page):
    text = (ROOT / page).read_text()
    begin = papers.BEGIN.format(name=papers.BLOCK)
    end = papers.END.format(name=papers.BLOCK)
    assert begin in text and end in text
    block = text.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    assert block == papers.block_text(committed())


def _authors(scores: dict[str, list[float]]) -> dict:
    return {
        "source": "their repository",
        "tensorflow": "2.x",
        "iterations": 40001,
        "seeds": list(range(5)),
        "machine": "a CPU",
        "command": "python -m benchmarks.authors_helmholtz REPO",
        "arms": [
            {"label": k, "method": "M2", "scores": v, "seconds": 1.0} for k, v in scores.items()
        ],
    }


def test_the_authors_code_section_says_where_their_seeds_put_the_gap():
    data = committed()["helmholtz"]
    ours = np.asarray(next(r for r in data["arms"] if r["label"] == "lr_annealing")["scores"])
    paper = data["published"]["lr_annealing"]["value"]
    # their seeds the same as ours: the paper's number is outside both, the gap is not the port
    same = "\n".join(papers.authors_code_text(data, _authors({"lr_annealing": list(ours)})))
    assert "| `lr_annealing` | 0.0144 +- 0.00637 |" in same and same.count("| no |") == 1
    assert "does not reproduce the paper's number either, so the gap is not in this" in same
    assert "missing the paper's 0.0144" in same and "p = 1;" in same
    # their seeds all far below ours and around the paper's number: the port is told apart
    low = [paper * f for f in (0.6, 0.8, 1.0, 1.1, 1.2)]
    apart = "\n".join(papers.authors_code_text(data, _authors({"lr_annealing": low})))
    assert "holding the paper's 0.0144" in apart and "| yes |" in apart
    assert "ours is told apart from theirs" in apart and "changes the score" in apart
    # their seeds spread over the paper's number, their mean not resolvably off it, and ours
    # among them: both agree with the paper
    spread = [0.012, 0.016, 0.02, 0.024, 0.03]
    agree = "\n".join(papers.authors_code_text(data, _authors({"lr_annealing": spread})))
    assert "not resolvably above the paper's mean" in agree and "not told apart" in agree
    assert "both agree with the paper" in agree
    # an arm the paper has no number for gets a row and no finding
    none = papers.authors_code_text(data, _authors({"lr_annealing+guards": list(ours)}))
    assert any(line.startswith("| `lr_annealing+guards` | - |") for line in none)
    assert not any("their code" in line and "p =" in line for line in none)


def test_the_committed_run_of_the_authors_code_names_its_command_and_seeds():
    authors = papers.authors_run(RESULTS, "helmholtz")
    assert authors is not None
    assert authors["command"].startswith("python -m benchmarks.authors_helmholtz ")
    data = committed()["helmholtz"]
    assert {a["label"] for a in authors["arms"]} <= set(data["published"])
    for arm in authors["arms"]:
        assert len(arm["scores"]) == len(authors["seeds"]) >= 5
        assert all(np.isfinite(arm["scores"]))
    assert "## The authors' code, run here" in (RESULTS / "papers_helmholtz.md").read_text()


def test_the_authors_code_is_set_up_with_our_table_s_solution_and_forcing():
    from benchmarks import authors_helmholtz

    points = np.random.default_rng(0).uniform(-1.0, 1.0, (64, 2))
    h = 1e-3  # central differences of the exact solution: the forcing is (u_xx + u_yy + u)
    shift = np.eye(2) * h
    laplacian = sum(
        (
            authors_helmholtz.exact(points + e)
            - 2 * authors_helmholtz.exact(points)
            + authors_helmholtz.exact(points - e)
        )
        / h**2
        for e in shift
    )
    forcing = authors_helmholtz.forcing(points)
    np.testing.assert_allclose(forcing, laplacian + authors_helmholtz.exact(points), atol=2e-2)
    table = papers.helmholtz_table()
    assert authors_helmholtz.LAYERS == [2, 50, 50, 50, 1]
    assert "2-50-50-50-1" in table.settings and table.steps == 40000


def test_an_unknown_method_of_the_authors_code_fails_before_anything_trains(capsys):
    from benchmarks import authors_helmholtz

    with pytest.raises(SystemExit):
        authors_helmholtz.main(["a-checkout", "--methods", "M2,M4"])
    assert "--methods: unknown M4 (known: M1, M2)" in capsys.readouterr().err
