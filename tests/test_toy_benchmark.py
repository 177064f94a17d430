"""Smoke test of CAGrad's toy benchmark at a few steps (the full run is a command)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import toy

# Adam from optax, which promotes dtypes implicitly
pytestmark = pytest.mark.standard_promotion


def test_the_pareto_set_joins_the_two_minima():
    front = toy.pareto_set()
    # the minima of f1 and f2, and the authors' Pareto line x2 = -8.3552 at x1 = 0
    np.testing.assert_allclose(front[[0, -1]], [[-7.0, -8.4345], [7.0, -8.4345]], atol=1e-4)
    np.testing.assert_allclose(front[len(front) // 2], [0.0, -8.3551], atol=1e-4)
    # Pareto-stationary: the unit gradients of the two losses cancel inside the set
    inside = jnp.asarray(front[100:-100:300], jnp.float32)
    jacobians = np.asarray(jax.vmap(jax.jacrev(toy.toy_losses))(inside), np.float64)
    units = jacobians / np.linalg.norm(jacobians, axis=2, keepdims=True)
    assert np.abs(units.sum(axis=1)).max() < 1e-3
    # the distance is 0 on the set and Euclidean off it
    assert toy.distance_to(front, front[::50]).max() < 1e-9
    above = front[len(front) // 2] + [0.0, 1.0]  # the set is flat at x1 = 0 (symmetry)
    np.testing.assert_allclose(toy.distance_to(front, above[None]), 1.0, rtol=1e-6)


def test_benchmark_runs_small(tmp_path):
    results = toy.main(["--steps", "20", "--methods", "equal,mgda", "--out", str(tmp_path)])
    assert list(results) == ["equal", "mgda"]
    for result in results.values():
        assert result.final.shape == (len(toy.STARTS), 2)
        assert result.trajectory.shape == (len(toy.STARTS), 20 // toy.RECORD_EVERY, 2)
        np.testing.assert_allclose(result.trajectory[:, 0], toy.STARTS)
        assert np.all(np.isfinite(result.final)) and not np.any(result.reached)
    # 20 Adam steps of lr 1e-3 move each coordinate by about 0.02
    moved = np.abs(results["equal"].final - np.asarray(toy.STARTS))
    assert moved.min() > 0.015 and moved.max() < 0.025
    table = (tmp_path / "toy.md").read_text()
    assert "| mgda | 0/5 |" in table
    assert (tmp_path / "toy.png").stat().st_size > 0
