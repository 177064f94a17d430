"""``ao.weight_grid``: a grid of fixed weights, ratio and scale apart, stacked for ``jax.vmap``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao

positive = st.floats(1e-3, 1e3, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    ratios=st.lists(st.tuples(positive, positive, positive), min_size=1, max_size=5),
    scales=st.lists(positive, min_size=1, max_size=4),
)
def test_each_row_is_a_scale_times_a_normalized_ratio(ratios, scales):
    trees = [{"a": a, "b": {"c": b, "d": c}} for a, b, c in ratios]
    grid = ao.weight_grid(trees, scales)
    assert jax.tree.structure(grid) == jax.tree.structure(trees[0])
    stacked = np.stack(jax.tree.leaves(grid), axis=1).astype(np.float64)
    assert stacked.shape == (len(ratios) * len(scales), 3)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(grid))
    for i, (ratio, scale) in enumerate((r, s) for r in ratios for s in scales):
        np.testing.assert_allclose(stacked[i].sum(), scale, rtol=1e-5)
        np.testing.assert_allclose(stacked[i] / scale, np.asarray(ratio) / sum(ratio), rtol=1e-5)


def test_vmap_over_the_grid_trains_every_setting_in_one_compile():
    grid = ao.weight_grid([{"fit": r, "smooth": 1.0 - r} for r in (0.2, 0.5, 0.8)], (1.0, 2.0))
    target = jnp.array([1.0, -1.0, 2.0])

    def final_loss(weights):
        def loss(params):
            losses = {"fit": jnp.sum((params - target) ** 2), "smooth": jnp.sum(params**2)}
            return ao.weighted_sum(losses, weights)

        params = jnp.zeros(3)
        for _ in range(5):
            params = params - 0.1 * jax.grad(loss)(params)
        return jnp.sum((params - target) ** 2)

    errors = jax.jit(jax.vmap(final_loss))(grid)
    assert errors.shape == (6,)
    assert np.all(np.isfinite(errors))
    assert np.argmin(errors) == 5  # the most weight on the fit, the largest scale


@pytest.mark.parametrize(
    ("ratios", "scales", "match"),
    [
        ([], (1.0,), "at least one ratio"),
        ([{"a": 1.0}], (), "scales"),
        ([{"a": 1.0}], (0.0,), "scales"),
        ([{"a": 1.0}], (float("inf"),), "scales"),
        ([{"a": 1.0, "b": -1.0}], (1.0,), "non-negative"),
        ([{"a": 0.0, "b": 0.0}], (1.0,), "positive sum"),
        ([{"a": float("nan")}], (1.0,), "finite"),
        ([{"a": 1.0}, {"b": 1.0}], (1.0,), "structure"),
    ],
)
def test_bad_grids_fail_with_the_setting_named(ratios, scales, match):
    with pytest.raises(ValueError, match=match):
        ao.weight_grid(ratios, scales)
