"""Nash-MTL against TorchJD on rank-deficient Gramians and where no solution exists.

The expected values come from TorchJD's ``_NashMTLWeighting.forward``
(``aggregation/_nash_mtl.py``, adapted from the authors' AvivNavon/nash-mtl): its cvxpy
problem transcribed with NumPy and solved with ECOS (cvxpy 1.9.3), on the first call (previous
``alpha`` = ones), ``optim_niter=20``, ``max_norm=0`` (no clipping) unless stated. torch and
cvxpy are not test dependencies, so the values are recorded here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_optax as ao
from adaptive_optax._src.balancers import gramian as gm

# name: (Jacobian, TorchJD's alpha)
RANK_DEFICIENT = {
    "duplicated row": (
        [[1.0, 0.0, 0.2], [1.0, 0.0, 0.2], [-0.3, 1.0, 0.0]],
        [0.7851303037, 0.7851303037, 1.1979903253],
    ),
    "rank 2 of 3": (
        [[1.0, 0.5, 0.0], [-0.5, 1.0, 0.0], [0.5, 1.5, 0.0]],
        [0.7302967426, 0.7302967426, 0.3651483727],
    ),
    "rank 1": ([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]], [0.3162277658, 0.1581138840]),
    "three in a plane": (
        [[1.0, 0.2], [0.3, 1.0], [0.8, 0.9]],
        [0.6722050831, 0.6345307581, 0.4809005805],
    ),
}

# No bargaining solution: ECOS fails and TorchJD keeps its previous alpha (ones), clipped
# to max_norm=1.0 when that is set.
NO_SOLUTION = {
    "opposite": ([[1.0, 2.0], [-1.0, -2.0]], None, [1.0, 1.0]),
    "zero gradient": ([[1.0, 2.0], [0.0, 0.0]], None, [1.0, 1.0]),
    "zero gradient, max_norm=1": ([[1.0, 2.0], [0.0, 0.0]], 1.0, [0.4472135955] * 2),
    "zero in the hull": ([[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1]], None, [1.0, 1.0, 1.0]),
    "two opposite, one free": (
        [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        1.0,
        [1.0, 1.0, 1.0],
    ),
}


@jax.jit
def _padded(jacobian, mask, init, max_norm):
    gramian = jacobian @ jacobian.T
    clipped = gm.nash_mtl_from_gramian(gramian, max_norm=max_norm, init=init, mask=mask)
    return clipped, gm.nash_mtl_from_gramian(gramian, init=init, mask=mask)


def ours(jacobian, max_norm=None, init=None):
    """Our weights in float32; padded to 3 x 3 with masked-out terms (one compilation)."""
    jacobian = np.asarray(jacobian, np.float32)
    k, n = jacobian.shape
    padded, start = np.zeros((3, 3), np.float32), np.ones(3, np.float32)
    padded[:k, :n] = jacobian
    start[:k] = 1.0 if init is None else init
    clipped, free = _padded(padded, np.arange(3) < k, start, max_norm or 1.0)
    return np.asarray(free if max_norm is None else clipped)[:k]


@pytest.mark.parametrize("name", RANK_DEFICIENT)
def test_rank_deficient_gramians_match_torchjd(name):
    jacobian, expected = RANK_DEFICIENT[name]
    # float32 against the transcribed float64 values.
    np.testing.assert_allclose(ours(jacobian), expected, rtol=2e-5)


@pytest.mark.parametrize("name", NO_SOLUTION)
def test_without_a_solution_the_previous_alpha_is_kept_as_torchjd(name):
    jacobian, max_norm, expected = NO_SOLUTION[name]
    np.testing.assert_allclose(ours(jacobian, max_norm), expected, rtol=1e-5)
    previous = np.array([2.0, 0.5, 1.0][: len(expected)], np.float32)
    if max_norm is None:
        np.testing.assert_allclose(ours(jacobian, init=previous), previous, rtol=1e-5)


def test_the_rule_keeps_its_previous_alpha_when_no_solution_exists():
    weighting = ao.nash_mtl_weights({"a": 1.0, "b": 1.0})
    update = jax.jit(weighting.update)
    losses = {"a": 1.0, "b": 1.0}
    well = jnp.array([[18.0, -22.0], [-22.0, 38.0]])  # gradients (-4, 1, 1) and (6, 1, 1)
    weights, state = update(losses, weighting.init(), grad_stats={"gramian": well})
    solved = np.array([weights["a"], weights["b"]])
    opposite = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    weights, state = update(losses, state, grad_stats={"gramian": opposite})
    np.testing.assert_allclose([weights["a"], weights["b"]], solved, rtol=1e-5)
