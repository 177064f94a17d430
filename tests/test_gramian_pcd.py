"""PCD (``ao.gramian.pcd``, ``ao.pcd_weights``) against TorchJD 0.18.0, and its properties.

Reference values: ``torchjd.aggregation.PCDWeighting(tau, beta)`` of torchjd 0.18.0 (torch
2.13, float64; its QP by the dual active-set method of Goldfarb and Idnani), called on
``J @ J.T`` of the seeded Jacobians stored here (``numpy.random.default_rng(seed)``: a base
matrix with rows scaled over two decades plus noise at each step, rounded to 6 decimals), one
call per step with its moving average kept; the primary is row 0. Ours (the dual QP by the
in-graph interior-point method) agreed to 2e-15 in float64 and 3.3e-7 in float32.
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
    "K=2 tau=0.02 beta=0.999": (
        dict(tau=0.02, beta=0.999),
        [
            [
                [-6.431566, -1.221649, -0.992342, -1.745959, -3.925644],
                [0.014196, 0.161235, 0.169812, -0.080378, -0.031282],
            ],
            [
                [-1.45568, 0.488011, 5.45111, 0.731077, -4.52293],
                [-0.028721, 0.099607, 0.111519, -0.142837, -0.142976],
            ],
            [
                [0.061124, 1.055604, 3.38618, 1.514587, -4.254114],
                [0.02743, 0.18763, 0.201777, -0.16052, -0.020829],
            ],
            [
                [4.57314, 1.776477, 3.535461, -0.491838, 2.076824],
                [0.175578, 0.25977, 0.189136, -0.045933, -0.213804],
            ],
        ],
        [
            [1.00464951815, 3.74861063768],
            [1, 0],
            [1, 0],
            [1, 0],
        ],
    ),
    "K=3 tau=0.2 beta=0.9": (
        dict(tau=0.2, beta=0.9),
        [
            [
                [0.038962, 0.440879, 0.264187, -0.816944, -0.106414, 0.082699],
                [-0.278615, 0.244538, 0.172927, 0.594595, -0.251006, 0.094509],
                [2.196681, 0.917912, -0.056937, 0.757187, -3.528478, -0.555062],
            ],
            [
                [0.107675, -0.009578, -0.037727, -0.345459, 0.062281, 0.096366],
                [-0.157337, 0.202824, 0.003403, 0.23754, 0.21829, 0.258139],
                [-4.147061, 1.106271, -2.639008, 3.846277, -2.250667, 1.101278],
            ],
            [
                [0.084615, -0.0134, 0.028254, -0.322923, 0.279797, -0.061548],
                [-0.439135, 0.241245, 0.012667, 0.153612, 0.187448, -0.203296],
                [-1.768728, 2.199396, -2.186868, 0.09907, 1.793785, -0.364413],
            ],
            [
                [0.248251, 0.148018, -0.180397, -0.352242, 0.151414, 0.252436],
                [-0.134343, -0.187579, -0.157982, 0.305489, 0.168764, 0.03298],
                [-2.335112, 0.471945, -0.488558, 3.839806, 0.694533, -1.136648],
            ],
            [
                [0.041955, 0.398302, -0.317787, -0.35736, 0.236958, -0.140719],
                [-0.101737, 0.041909, 0.324063, 0.069017, 0.166278, 0.468516],
                [-1.483711, -2.457782, -4.884879, 5.784706, -0.120946, -2.453149],
            ],
        ],
        [
            [1.07141316268, 0.829160285916, 0],
            [1.13903499907, 0.116457292475, 0.0668302882542],
            [0.968138938373, 0.266374034251, 0],
            [1.38822127636, 0, 0.154883722517],
            [1.05391091694, 1.108006826, 0.0759202182829],
        ],
    ),
    "K=4 tau=0.5 beta=0.99": (
        dict(tau=0.5, beta=0.99),
        [
            [
                [0.160727, 0.194952, -2.755501, -6.264133, 4.508554, 5.505122, -1.96969, 0.042262],
                [-0.564805, 0.622625, 4.060665, 3.078904, -8.18859, -0.01089, 5.890073, -5.455069],
                [1.269551, 0.474226, 0.366342, -0.374339, 4.86953, 0.738607, 0.261192, -0.25133],
                [
                    -0.362266,
                    0.419721,
                    1.256023,
                    -1.11332,
                    -0.828754,
                    -1.463903,
                    -0.149204,
                    -1.024153,
                ],
            ],
            [
                [2.35325, -1.078275, 1.474084, -5.602574, 2.93022, 3.384604, -0.867565, -0.238327],
                [-1.689743, 3.410705, 6.12105, -0.095321, -2.609061, -6.367456, 5.38941, -0.861196],
                [
                    0.027058,
                    -1.363444,
                    -0.986196,
                    -1.476566,
                    3.173749,
                    -0.772518,
                    2.587643,
                    -0.110522,
                ],
                [
                    -0.587422,
                    0.128563,
                    1.236228,
                    -1.043831,
                    -1.322421,
                    -1.298467,
                    0.238604,
                    -0.290077,
                ],
            ],
            [
                [
                    -2.082886,
                    -1.617842,
                    -0.302711,
                    -4.132769,
                    5.156111,
                    6.556041,
                    -0.234257,
                    1.040005,
                ],
                [
                    7.947668,
                    -6.427013,
                    8.268035,
                    -4.890186,
                    -0.404265,
                    -10.837704,
                    5.416042,
                    -1.048655,
                ],
                [-0.256884, 1.104072, 1.288571, -1.672924, 0.621661, 0.306657, 0.419726, 1.78502],
                [-0.293984, 0.20532, 1.087322, -1.307593, -1.738743, -1.247799, 0.505102, 0.398205],
            ],
            [
                [2.548253, -2.491653, -0.062669, -6.30034, 7.444212, 2.540792, 0.059662, 0.271216],
                [
                    -1.429722,
                    -2.060819,
                    3.539591,
                    -0.315911,
                    -7.102366,
                    -1.641835,
                    -0.872391,
                    5.526159,
                ],
                [0.667766, 0.312916, -1.652411, -1.151338, 0.427551, -0.297139, 0.676375, 0.366693],
                [
                    -0.536968,
                    0.849586,
                    1.634518,
                    -1.105228,
                    -1.745167,
                    -1.344785,
                    0.45806,
                    -0.882114,
                ],
            ],
            [
                [1.637716, -1.58046, -1.34812, -4.068721, 5.18945, 2.972949, -2.349206, 2.268512],
                [2.614679, -5.859107, 8.529655, 0.224565, -8.528033, -3.529866, -2.14919, 3.477128],
                [2.159121, -2.683224, -0.95797, -1.596627, 1.311366, 2.442028, 1.651617, 0.413861],
                [-0.394433, -0.415784, 1.478429, -0.671037, -1.206017, -1.301802, 0.80472, 0.97522],
            ],
        ],
        [
            [0.7217543455, 0.857173005829, 1.38798452879, 1.37459174046],
            [0.84916768403, 0.497271696026, 0.304779391403, 0.177201752927],
            [0.907381416234, 0.312655161477, 0, 1.76411909105],
            [0.930320868864, 0.57672531088, 0.865914204016, 2.09734311243],
            [0.802508022891, 0.223551592704, 0.324951104018, 1.52362283952],
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype, atol", [("float32", 2e-6), ("float64", 1e-10)])
def test_weights_match_torchjd_step_after_step(case, dtype, atol):
    settings_, jacobians, expected = CASES[case]
    with jax.enable_x64(dtype == "float64"):
        solve = jax.jit(lambda g, s: ao.gramian.pcd(g, s, **settings_))
        state = ao.gramian.pcd_init(len(jacobians[0]))
        state = state._replace(sq_norm_ema=state.sq_norm_ema.astype(dtype))
        for jacobian, weights_expected in zip(jacobians, expected, strict=True):
            jacobian = np.asarray(jacobian)
            weights, state = solve(jnp.asarray(jacobian @ jacobian.T, dtype), state)
            np.testing.assert_allclose(weights, weights_expected, rtol=0, atol=atol)
        assert solve._cache_size() == 1


PCD = jax.jit(ao.gramian.pcd, static_argnames=("tau",))


@given(
    hnp.arrays(np.float64, (3, 5), elements=st.floats(-10, 10)), st.sampled_from([0.0, 0.1, 0.5])
)
@settings(max_examples=40, deadline=None)
def test_kkt_the_constraints_hold_and_the_norm_is_the_primarys(jacobian, tau):
    """On the first call with ``eps = 0`` the normalized gradients are the unit gradients
    ``h_i``; ``w_1 = c / ||g_1||``, ``w_j = mu_j c / ||g_j||`` with ``d_tilde = d / c``: each
    constraint ``h_j . d_tilde >= tau`` holds, with equality where ``mu_j > 0``, and
    ``||d|| = ||g_1||``."""
    norms = np.linalg.norm(jacobian, axis=1)
    if norms.min() < 1e-2 * max(norms.max(), 1e-2):
        return
    with jax.enable_x64(True):
        gramian = jnp.asarray(jacobian @ jacobian.T)
        weights, _ = PCD(gramian, ao.gramian.pcd_init(3), tau=tau, eps=0.0)
    weights = np.asarray(weights)
    if np.all(weights == 0):
        return  # d_tilde vanished (up to rounding)
    d = weights @ jacobian
    np.testing.assert_allclose(np.linalg.norm(d), norms[0], rtol=1e-6)
    c = weights[0] * norms[0]
    d_tilde, mu = d / c, weights[1:] * norms[1:] / c
    units = jacobian / norms[:, None]
    progress = units[1:] @ d_tilde
    if np.allclose(mu, 0.0) and np.any(progress < tau - 1e-6):
        # infeasible: the constraints were dropped (three terms: two secondaries that cannot
        # both progress), and d = g_1
        np.testing.assert_allclose(d, jacobian[0], atol=1e-9)
        return
    assert np.all(progress >= tau - 1e-6), progress
    np.testing.assert_allclose(progress[mu > 1e-6], tau, atol=1e-6)  # complementarity


def test_zero_primary_gives_zero_and_infeasible_constraints_give_the_primary_alone():
    state = ao.gramian.pcd_init(3)
    jacobian = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    weights, _ = ao.gramian.pcd(jnp.asarray(jacobian @ jacobian.T), state)
    np.testing.assert_array_equal(weights, 0.0)
    # two opposite secondaries cannot both progress: their constraints are dropped
    jacobian = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    weights, _ = ao.gramian.pcd(jnp.asarray(jacobian @ jacobian.T), state, tau=0.3)
    np.testing.assert_allclose(weights, [1.0, 0.0, 0.0], atol=1e-6)


def test_non_finite_input_keeps_the_state_and_left_out_terms_are_not_averaged():
    state = ao.gramian.pcd_init(3)
    jacobian = np.array([[1.0, 0.0, 0.5], [-0.3, 1.0, 0.0], [0.2, -0.4, 2.0]])
    gramian = jnp.asarray(jacobian @ jacobian.T, jnp.float32)
    _, state = ao.gramian.pcd(gramian, state)
    weights, after = ao.gramian.pcd(gramian.at[0, 1].set(jnp.nan), state)
    assert np.all(np.isfinite(weights))
    np.testing.assert_array_equal(after.sq_norm_ema, state.sq_norm_ema)
    np.testing.assert_array_equal(after.counts, state.counts)
    weights, after = ao.gramian.pcd(gramian, state, mask=jnp.array([True, True, False]))
    assert float(weights[2]) == 0.0
    np.testing.assert_array_equal(after.counts, [2, 2, 1])
    assert float(after.sq_norm_ema[2]) == float(state.sq_norm_ema[2])


def test_the_preset_takes_the_main_term_by_name_and_keeps_its_average():
    base = {"fair": 1.0, "task": 1.0}
    rng = np.random.default_rng(0)
    weighting = ao.pcd_weights(base, main="task", tau=0.2)
    assert weighting.init().rule_state.counts.shape == (2,)
    update = jax.jit(weighting.update)
    state = weighting.init()
    ref_state = ao.gramian.pcd_init(2)
    for _ in range(4):
        jacobian = rng.normal(size=(2, 3))
        gramian = jnp.asarray(jacobian @ jacobian.T, jnp.float32)
        weights, state = update(dict.fromkeys(base, 1.0), state, grad_stats={"gramian": gramian})
        expected, ref_state = ao.gramian.pcd(gramian, ref_state, primary=1, tau=0.2)
        np.testing.assert_allclose(jax.tree.leaves(weights), expected, rtol=1e-5, atol=1e-7)
    assert update._cache_size() == 1
    np.testing.assert_allclose(state.rule_state.sq_norm_ema, ref_state.sq_norm_ema, rtol=1e-6)
    by_index = ao.pcd_weights(base, main=1, tau=0.2)
    assert jax.tree.leaves(by_index.init()) is not None


@pytest.mark.parametrize(
    "setting, value", [("tau", -0.1), ("tau", 1.5), ("beta", 1.0), ("eps", -1.0),
                       ("iterations", 0), ("main", "speed"), ("main", 2), ("main", -1)],
)  # fmt: skip
def test_bad_settings_fail_at_construction_naming_them(setting, value):
    with pytest.raises(ValueError, match=rf"^pcd_weights: {setting}"):
        ao.pcd_weights({"task": 1.0, "fair": 1.0}, **{setting: value})


def test_primary_out_of_range_is_refused():
    with pytest.raises(ValueError, match="primary must be an index below 2"):
        ao.gramian.pcd(jnp.eye(2), ao.gramian.pcd_init(2), primary=2)
