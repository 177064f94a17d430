"""MGDA where its weights are not unique: identical gradients, and batches under ``vmap``.

Issue 27: with ``J = [[1, 0], [1, 0], [0, 1]]`` the two identical gradients got 0.2474 and
0.2526 (any split of 0.5 is optimal; rounding in the interior-point iterations chose one),
and under ``vmap`` the split changed with the batch's size and the other Gramians in it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_optax as ao

DUPLICATE = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)


def gramian(jacobian):
    jacobian = jnp.asarray(jacobian, jnp.float32)
    return jacobian @ jacobian.T


def others(count, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return [gramian(rng.normal(size=(k, 4))) for _ in range(count)]


def test_identical_gradients_get_identical_weights():
    for solve in (ao.gramian.mgda, jax.jit(ao.gramian.mgda)):
        np.testing.assert_array_equal(np.asarray(solve(gramian(DUPLICATE))), [0.25, 0.25, 0.5])
    # Three copies among five terms, in scattered positions.
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(3, 4)).astype(np.float32)
    jacobian = np.stack([rows[0], rows[1], rows[0], -rows[2], rows[0]])
    w = np.asarray(ao.gramian.mgda(gramian(jacobian)))
    assert w[0] == w[2] == w[4]
    d = w @ jacobian
    assert np.all(jacobian @ d >= -1e-5)  # still the min-norm point: it conflicts with none


@pytest.mark.parametrize("batch", [2, 4, 8])
def test_vmap_gives_each_gramian_its_own_weights(batch):
    gramians = jnp.stack([gramian(DUPLICATE), *others(batch - 1)])
    batched = np.asarray(jax.vmap(ao.gramian.mgda)(gramians))
    single = np.stack([np.asarray(jax.jit(ao.gramian.mgda)(g)) for g in gramians])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    np.testing.assert_array_equal(batched[0], [0.25, 0.25, 0.5])


@pytest.mark.parametrize("permutation", [(1, 0, 2), (2, 0, 1), (0, 2, 1)])
def test_permuting_identical_gradients_keeps_their_weights_identical(permutation):
    base = np.asarray(ao.gramian.mgda(gramian(DUPLICATE)))
    moved = np.asarray(ao.gramian.mgda(gramian(DUPLICATE[list(permutation)])))
    np.testing.assert_allclose(moved, base[list(permutation)], atol=1e-6)
    copies = [list(permutation).index(0), list(permutation).index(1)]
    assert moved[copies[0]] == moved[copies[1]]


def test_identical_rows_of_a_left_out_term_are_not_averaged_in():
    # The third term equals the first but is masked out: weight 0, the first keeps its own.
    jacobian = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    w = np.asarray(ao.gramian.mgda(gramian(jacobian), mask=jnp.array([True, True, False])))
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0], atol=1e-6)
    assert w[2] == 0.0
