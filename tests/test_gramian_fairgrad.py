"""FairGrad (``ao.gramian.fairgrad``, ``ao.fairgrad_weights``) against TorchJD 0.18.0, and its
properties.

Reference values: ``torchjd.aggregation.FairGradWeighting(alpha)`` of torchjd 0.18.0 (torch
2.13, scipy 1.17 ``least_squares``, as the authors' code), float64, on ``J @ J.T`` of the
seeded Jacobians stored here (``numpy.random.default_rng(seed)``: correlated rows with norms
over two decades, rounded to 6 decimals); their relative residuals
``|G w - w^(-1/alpha)| / |w^(-1/alpha)|`` are below 5e-11. Ours agreed to a relative 2.5e-10 in
float64 and 5e-7 in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adaptive_optax as ao

CASES = {
    "K=2 alpha=1.0": (
        1.0,
        [
            [2.142837, 1.136598, -0.067022, 1.618924, 3.38969],
            [0.501264, -0.070573, -0.265139, -0.042702, 0.187513],
        ],
        [0.177598833566, 1.31726933424],
    ),
    "K=3 alpha=0.5": (
        0.5,
        [
            [-0.848094, 1.483985, 0.999324, -0.039021, 1.141606, 0.912945],
            [6.321503, 4.20638, 8.33211, -1.882237, 2.683325, 0.142335],
            [0.21343, 0.104831, 0.040311, -0.054755, 0.047161, 0.098697],
        ],
        [0.443703990621, 0.174781574042, 1.31138889531],
    ),
    "K=3 alpha=2.0": (
        2.0,
        [
            [-0.647671, 0.767179, 0.548491, 0.058239, 0.42494, 0.260611],
            [-0.021279, 0.584157, 0.074897, 0.067675, -0.1155, 0.377543],
            [1.703654, 4.443117, -0.455605, 2.664402, -1.667405, 5.702047],
        ],
        [0.482245526549, 1.15656565882, 0.0147181680227],
    ),
    "K=4 alpha=1.0": (
        1.0,
        [
            [0.007025, 0.042192, -0.225496, 0.039769, -0.054181, 0.567156, 0.107673],
            [0.043856, 0.065087, -0.050009, -0.165208, 0.032497, 0.292219, 0.077804],
            [5.837603, 1.202144, 2.0994, 8.192502, 4.185131, -0.020939, 1.270073],
            [1.519066, 3.554993, 0.336332, 0.37438, 2.193232, -0.564194, 0.304068],
        ],
        [1.23598520173, 2.18274584768, 0.0795641564376, 0.176622188514],
    ),
    "K=5 alpha=5.0": (
        5.0,
        [
            [
                3.806616,
                -0.949843,
                4.990112,
                -8.525612,
                5.706668,
                5.6575,
                15.968397,
                6.282688,
                7.77443,
            ],
            [
                -1.046298,
                2.900137,
                -1.491453,
                1.687578,
                0.179205,
                -0.40103,
                -0.164654,
                -0.181226,
                0.927323,
            ],
            [
                3.495318,
                17.771177,
                -11.918174,
                4.454234,
                -3.514271,
                11.436535,
                -14.503808,
                1.401077,
                6.365779,
            ],
            [
                -0.142819,
                0.215507,
                0.098482,
                0.218647,
                0.21173,
                -0.069628,
                -0.043211,
                0.043047,
                0.181081,
            ],
            [
                2.214912,
                -0.343779,
                -0.17575,
                -0.488281,
                -0.138109,
                0.429675,
                0.60364,
                4.194031,
                -0.010499,
            ],
        ],
        [0.000206035762187, 0.000838417577827, 1.94703109772e-06, 3.88306522657, 0.133273691241],
    ),
}

FAIRGRAD = jax.jit(ao.gramian.fairgrad, static_argnames=("alpha",))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-6), ("float64", 1e-9)])
def test_weights_match_torchjd(case, dtype, rtol):
    alpha, jacobian, expected = CASES[case]
    jacobian = np.asarray(jacobian)
    with jax.enable_x64(dtype == "float64"):
        weights = FAIRGRAD(jnp.asarray(jacobian @ jacobian.T, dtype), alpha=alpha)
    np.testing.assert_allclose(weights, expected, rtol=rtol)


JACOBIANS = hnp.arrays(np.float64, (3, 6), elements=st.floats(-10, 10))


def independent(jacobian):
    """Rows well away from linear dependence (a solution exists and is well conditioned)."""
    singular = np.linalg.svd(jacobian, compute_uv=False)
    return singular[-1] > 1e-2 * max(singular[0], 1e-2)


@given(JACOBIANS, st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]))
@settings(max_examples=40, deadline=None)
def test_the_weights_solve_the_fairness_condition(jacobian, alpha):
    """``(G w)_i = w_i^(-1/alpha)`` with ``w > 0`` (independent rows: a solution exists)."""
    if not independent(jacobian):
        return
    with jax.enable_x64(True):
        gramian = jnp.asarray(jacobian @ jacobian.T)
        w = np.asarray(FAIRGRAD(gramian, alpha=alpha))
    assert np.all(w > 0)
    np.testing.assert_allclose(np.asarray(gramian) @ w, w ** (-1.0 / alpha), rtol=1e-7)


@given(JACOBIANS, st.floats(1e-3, 1e3))
@settings(max_examples=30, deadline=None)
def test_alpha_one_is_nash_mtl_and_the_scale_law_holds(jacobian, c):
    if not independent(jacobian):
        return
    with jax.enable_x64(True):
        gramian = jnp.asarray(jacobian @ jacobian.T)
        w = np.asarray(FAIRGRAD(gramian, alpha=1.0))
        np.testing.assert_allclose(w, ao.gramian.nash_mtl(gramian), rtol=1e-6)
        # G -> c G maps w to c^(-alpha / (1 + alpha)) w
        scaled = np.asarray(FAIRGRAD(c * gramian, alpha=2.0))
        np.testing.assert_allclose(
            scaled, c ** (-2.0 / 3.0) * np.asarray(FAIRGRAD(gramian, alpha=2.0)), rtol=1e-7
        )


def test_alpha_zero_is_uniform_and_no_solution_is_uniform():
    gramian = jnp.array([[4.0, 1.0], [1.0, 9.0]])
    np.testing.assert_allclose(ao.gramian.fairgrad(gramian, alpha=0.0), [0.5, 0.5])
    for degenerate in ([[1.0, -1.0], [-1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]):
        np.testing.assert_allclose(ao.gramian.fairgrad(jnp.asarray(degenerate)), [0.5, 0.5])
    for invalid in (jnp.full((2, 2), jnp.nan), jnp.zeros((2, 2))):
        np.testing.assert_allclose(ao.gramian.fairgrad(invalid), [0.5, 0.5])


def test_a_left_out_term_gets_zero_and_the_others_their_own_problem():
    jacobian = np.array([[1.0, 0.0, 0.5], [0.3, 1.0, 0.0], [0.2, -0.4, 2.0]])
    gramian = jnp.asarray(jacobian @ jacobian.T, jnp.float32).at[1, :].set(jnp.nan)
    weights = ao.gramian.fairgrad(gramian, alpha=2.0, mask=jnp.array([True, False, True]))
    two = jacobian[[0, 2]]
    expected = ao.gramian.fairgrad(jnp.asarray(two @ two.T, jnp.float32), alpha=2.0)
    assert float(weights[1]) == 0.0
    np.testing.assert_allclose(weights[jnp.array([0, 2])], expected, rtol=1e-5)


def test_the_preset_is_the_solver_on_the_base_scaled_gramian_and_takes_a_traced_alpha():
    base = {"a": 1.0, "b": 2.0, "c": 0.5}
    jacobian = np.array([[1.0, 0.0, 0.5], [0.3, 1.0, 0.0], [0.2, -0.4, 2.0]])
    gramian = jnp.asarray(jacobian @ jacobian.T, jnp.float32)
    b = np.array(list(base.values()))
    u = b / b.max()
    expected = b * np.asarray(ao.gramian.fairgrad(u[:, None] * gramian * u[None, :], alpha=2.0))

    @jax.jit
    def weights_for(alpha):
        weighting = ao.fairgrad_weights(base, alpha=alpha)
        weights, _ = weighting.update(
            dict.fromkeys(base, 1.0), weighting.init(), grad_stats={"gramian": gramian}
        )
        return jnp.stack(jax.tree.leaves(weights))

    np.testing.assert_allclose(weights_for(2.0), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "setting, value", [("alpha", -0.5), ("alpha", np.nan), ("reg_eps", -1e-3),
                       ("iterations", 0), ("iterations", 2.5)],
)  # fmt: skip
def test_bad_settings_fail_at_construction_naming_them(setting, value):
    with pytest.raises(ValueError, match=rf"^fairgrad_weights: {setting}"):
        ao.fairgrad_weights({"a": 1.0, "b": 1.0}, **{setting: value})
    with pytest.raises(ValueError, match=setting):
        ao.fairgrad_rule(**{setting: value})
