"""Gramian weightings: TorchJD's reference values, ports of the reference code, and properties.

Compilations are few on purpose: every method is stacked into one jitted, vmapped function,
and every batch of Gramians has the same shape, so one compilation serves most tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import minimize

import adaptive_optax as ao
from adaptive_optax._src.balancers import gramian as gm

METHODS = {
    "mgda": gm.mgda_from_gramian,
    "upgrad": gm.upgrad_from_gramian,
    "dualproj": gm.dualproj_from_gramian,
    "imtl_g": gm.imtl_g_from_gramian,
    "aligned_mtl": gm.aligned_mtl_from_gramian,
    "cagrad": gm.cagrad_from_gramian,  # c = 0.5
    "pcgrad": gm.pcgrad_from_gramian,
    "config": gm.config_from_gramian,
    "nash_mtl": gm.nash_mtl_from_gramian,
}
NAMES = tuple(METHODS)
INDEX = {name: i for i, name in enumerate(NAMES)}
K = 4  # terms in every property batch
BATCH = 32
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


@pytest.fixture(autouse=True)
def strict_promotion():
    """The library must not rely on implicit dtype promotion."""
    with jax.numpy_dtype_promotion("strict"):
        yield


def all_methods(gramian):
    return jnp.stack([method(gramian) for method in METHODS.values()])


ALL = jax.jit(jax.vmap(all_methods))  # (B, K, K) -> (B, len(METHODS), K)


def run_all(gramians) -> np.ndarray:
    return np.asarray(ALL(jnp.asarray(gramians)), np.float64)


def gramians_of(jacobians: np.ndarray) -> np.ndarray:
    return jacobians @ np.swapaxes(jacobians, -1, -2)


def aggregates(weights: np.ndarray, jacobians: np.ndarray) -> np.ndarray:
    return np.einsum("bk,bkn->bn", weights, jacobians)


def well_posed(seed: int, n: int = 8) -> np.ndarray:
    """Independent gradients with row norms over two decades: every method is well defined."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(BATCH, K, n)) * 10 ** rng.uniform(-1, 1, size=(BATCH, K, 1))
    return rows * 10 ** rng.uniform(-3, 3, size=(BATCH, 1, 1))


def degenerate(seed: int, n: int = 6) -> np.ndarray:
    """Rank-deficient, zero, duplicated, aligned and opposite gradients."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(BATCH):
        rank = 1 + b % (K - 1)
        jac = rng.normal(size=(K, rank)) @ rng.normal(size=(rank, n))
        kind = b % 5
        if kind == 1:
            jac[b % K] = 0.0
        elif kind == 2:
            jac[1] = jac[0]
        elif kind == 3:
            jac = jac + 4 * rng.normal(size=n)
        elif kind == 4:
            jac[1] = -jac[0]
        out.append(jac * 10 ** rng.uniform(-3, 3))
    return np.stack(out)


WELL_J = well_posed(0)
WELL_G = gramians_of(WELL_J).astype(np.float32)
DEGENERATE_J = degenerate(1)
DEGENERATE_G = gramians_of(DEGENERATE_J).astype(np.float32)


@functools.cache
def well_weights() -> np.ndarray:
    return run_all(WELL_G)


@functools.cache
def degenerate_weights() -> np.ndarray:
    return run_all(DEGENERATE_G)


# ------------------------------------------------------------- TorchJD's reference values

# From TorchJD, tests/unit/aggregation/test_values.py at commit
# 862baeda7dc5beef3731f75a23382427ad5db3ef (github.com/SimplexLab/TorchJD); compared there with
# assert_close(rtol=0, atol=1e-4). WEIGHTING_PARAMETRIZATIONS give the weights on
# G_base = J_base J_base^T, AGGREGATOR_PARAMETRIZATIONS the aggregate w^T J_base.
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
TORCHJD_WEIGHTS = {
    "aligned_mtl": [0.5591, 0.4083],  # AlignedMTLWeighting()
    "imtl_g": [0.5923, 0.4077],  # IMTLGWeighting()
    "mgda": [0.6000, 0.4000],  # MGDAWeighting()
    "pcgrad": [2.2222, 1.5789],  # PCGradWeighting()
    "dualproj": [0.6109, 0.5000],  # DualProjWeighting()
    "upgrad": [1.1109, 0.7894],  # UPGradWeighting()
    "cagrad": [0.7041, 0.5000],  # CAGradWeighting(c=0.5)
}
TORCHJD_AGGREGATES = {
    "aligned_mtl": [0.2133, 0.9673, 0.9673],  # AlignedMTL()
    "config": [0.1588, 2.0706, 2.0706],  # ConFIG()
    "imtl_g": [0.0767, 1.0000, 1.0000],  # IMTLG()
    "mgda": [0.0, 1.0, 1.0],  # MGDA()
    "pcgrad": [0.5848, 3.8012, 3.8012],  # PCGrad()
    "dualproj": [0.5563, 1.1109, 1.1109],  # DualProj()
    "upgrad": [0.2929, 1.9004, 1.9004],  # UPGrad()
    "cagrad": [0.1835, 1.2041, 1.2041],  # CAGrad(c=0.5)
    "nash_mtl": [0.0542, 0.7061, 0.7061],  # NashMTL(n_tasks=2), max_norm=1.0
}
# Not shared: Constant, GradDrop, GradVac, Krum, Mean, Random, Sum, TrimmedMean, FairGrad.


def reference_weights(dtype) -> np.ndarray:
    """Every method on G_base (one unbatched jit; the property tests run them vmapped), with
    Nash-MTL clipped at max_norm=1 as in TorchJD's NashMTL."""

    def methods(gramian):
        weights = all_methods(gramian)
        nash = gm.nash_mtl_from_gramian(gramian, max_norm=1.0)
        return weights.at[INDEX["nash_mtl"]].set(nash)

    gramian = jnp.asarray(J_BASE @ J_BASE.T, dtype)
    return np.asarray(jax.jit(methods)(gramian), np.float64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torchjd_reference_values(dtype):
    with jax.enable_x64(dtype == "float64"):
        weights = reference_weights(jnp.dtype(dtype))
    assert weights.dtype == np.float64
    for name, expected in TORCHJD_WEIGHTS.items():
        np.testing.assert_allclose(weights[INDEX[name]], expected, rtol=0, atol=1e-4, err_msg=name)
    for name, expected in TORCHJD_AGGREGATES.items():
        aggregate = weights[INDEX[name]] @ J_BASE
        np.testing.assert_allclose(aggregate, expected, rtol=0, atol=1e-4, err_msg=name)


# -------------------------------------------------- ports of the reference code (float64)


def torchjd_imtl_g(g):
    v = np.linalg.pinv(g) @ np.sqrt(np.diag(g))
    return v / v.sum()


def torchjd_aligned_mtl(g, mode):
    """Port of TorchJD's AlignedMTLWeighting._compute_balance_transformation, then B 1/K."""
    lam, vec = np.linalg.eigh(g)
    rank = int(np.sum(lam > lam.max() * len(g) * np.finfo(np.float32).eps))
    order = np.argsort(lam)[::-1][:rank]
    lam, vec = lam[order], vec[:, order]
    scale = {"min": lam[-1], "median": np.sort(lam)[(rank - 1) // 2], "rmse": lam.mean()}[mode]
    balance = np.sqrt(scale) * vec @ np.diag(1 / np.sqrt(lam)) @ vec.T
    return balance @ np.full(len(g), 1 / len(g))


def torchjd_pcgrad(g):
    """Port of TorchJD's PCGradWeighting, visiting the other terms in index order."""
    k = len(g)
    total = np.zeros(k)
    for i in range(k):
        w = np.eye(k)[i]
        for j in range(k):
            inner = g[j] @ w
            if j != i and inner < 0:
                w[j] -= inner / g[j, j]
        total += w
    return total


def torchjd_config_aggregate(jac):
    """Port of TorchJD's ConFIG aggregator (the authors' ConFIG_update with pinv)."""
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    direction = np.linalg.pinv(units) @ np.ones(len(jac))
    unit = direction / np.linalg.norm(direction)
    return np.sum(jac @ unit) * unit


def relative_error(actual, expected):
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def test_imtl_g_aligned_mtl_pcgrad_match_ports_of_torchjd():
    weights = well_weights()
    for b, g in enumerate(WELL_G.astype(np.float64)):
        assert relative_error(weights[b, INDEX["imtl_g"]], torchjd_imtl_g(g)) < 1e-3
        aligned = torchjd_aligned_mtl(g, "min")
        assert relative_error(weights[b, INDEX["aligned_mtl"]], aligned) < 1e-4
        assert relative_error(weights[b, INDEX["pcgrad"]], torchjd_pcgrad(g)) < 1e-5


def test_aligned_mtl_scale_modes_match_torchjd():
    modes = ("median", "rmse")

    @jax.jit
    @jax.vmap
    def both(g):
        return jnp.stack([gm.aligned_mtl_from_gramian(g, scale_mode=m) for m in modes])

    # Full rank, then the first three degenerate cases (ranks 1, 2, 3).
    for gramians, cases in ((WELL_G, range(BATCH)), (DEGENERATE_G, range(K - 1))):
        out = np.asarray(both(jnp.asarray(gramians)), np.float64)
        for b in cases:
            for m, mode in enumerate(modes):
                expected = torchjd_aligned_mtl(gramians[b].astype(np.float64), mode)
                assert relative_error(out[b, m], expected) < TOLERANCE["aligned_mtl"], (b, mode)


def test_config_matches_torchjd_aggregator():
    mine = aggregates(well_weights()[:, INDEX["config"]], WELL_J)
    for b, jac in enumerate(WELL_J):
        assert relative_error(mine[b], torchjd_config_aggregate(jac)) < 1e-4


def test_pcgrad_on_two_terms_is_upgrad_of_the_sum():
    # TorchJD's test_equivalence_upgrad_sum_two_rows, on a batch.
    jac = np.random.default_rng(2).normal(size=(BATCH, 2, 9))

    @jax.jit
    @jax.vmap
    def both(g):
        upgrad = gm.upgrad_from_gramian(g, pref_vector=jnp.ones(2), reg_eps=0.0)
        return jnp.stack([gm.pcgrad_from_gramian(g), upgrad])

    out = np.asarray(both(jnp.asarray(gramians_of(jac), jnp.float32)), np.float64)
    np.testing.assert_allclose(out[:, 0], out[:, 1], rtol=1e-5, atol=1e-6)


def test_pcgrad_with_key_follows_its_random_orders():
    @jax.jit
    def run(g, key):  # the orders PCGrad draws: one permutation per term
        orders = jnp.argsort(jax.random.uniform(key, (K, K)), axis=1)
        return gm.pcgrad_from_gramian(g, key=key), orders

    got, orders = run(jnp.asarray(WELL_G[0]), jax.random.key(3))
    got, orders = np.asarray(got), np.asarray(orders)
    g = WELL_G[0].astype(np.float64)
    total = np.zeros(K)
    for i in range(K):
        w = np.eye(K)[i]
        for j in orders[i]:
            inner = g[j] @ w
            if j != i and inner < 0:
                w[j] -= inner / g[j, j]
        total += w
    assert relative_error(got, total) < 1e-5


# ------------------------------------------------------- optimality of the in-graph solvers


def test_mgda_is_the_min_norm_point():
    # KKT on the simplex: (G w)_i >= w^T G w for every i, with equality on the support.
    for weights, gramians in ((well_weights(), WELL_G), (degenerate_weights(), DEGENERATE_G)):
        w = weights[:, INDEX["mgda"]]
        g = gramians.astype(np.float64)
        trace = np.trace(g, axis1=1, axis2=2)[:, None]
        gw = np.einsum("bij,bj->bi", g, w)
        norm2 = np.einsum("bi,bi->b", w, gw)[:, None]
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
        assert np.all(w >= -1e-7)
        assert np.all(gw - norm2 >= -1e-5 * trace)
        assert np.all(np.where(w > 1e-3, np.abs(gw - norm2), 0.0) <= 1e-5 * trace)


def test_dualproj_solves_its_qp_and_upgrad_sums_the_row_projections():
    # KKT of min v^T Q v s.t. v >= u, Q = G / tr(G) + reg I: v >= u, Q v >= 0, (v - u) Q v = 0.
    eye = jnp.eye(K, dtype=jnp.float32)

    @jax.jit
    @jax.vmap
    def rows(g):
        return jax.vmap(lambda u: gm.dualproj_from_gramian(g, pref_vector=u))(eye / K)

    per_row = np.asarray(rows(jnp.asarray(WELL_G)), np.float64)  # (B, K rows, K)
    np.testing.assert_allclose(per_row.sum(1), well_weights()[:, INDEX["upgrad"]], atol=1e-6)
    g = WELL_G.astype(np.float64)
    q = g / np.trace(g, axis1=1, axis2=2)[:, None, None] + 1e-4 * np.eye(K)
    for v, u in ((per_row, np.broadcast_to(np.eye(K) / K, per_row.shape)),):
        qv = np.einsum("bij,brj->bri", q, v)
        assert np.all(v - u >= -1e-7)
        assert np.all(qv >= -1e-6)
        assert np.all(np.abs(np.sum((v - u) * qv, axis=-1)) <= 1e-6)


def cagrad_reference(g, c):
    """CAGrad's subproblem by scipy's SLSQP (as the authors), in float64, best of K+1 starts."""
    k = len(g)
    b = g.mean(1)
    s = c * np.sqrt(g.mean())

    def objective(w):
        return b @ w + s * np.sqrt(max(w @ g @ w, 0.0))

    starts = [np.full(k, 1 / k)] + [0.9 * np.eye(k)[i] + 0.1 / k for i in range(k)]
    solutions = [
        minimize(
            objective,
            x0,
            bounds=[(0, 1)] * k,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        for x0 in starts
    ]
    w = min(solutions, key=lambda r: r.fun).x
    return 1 / k + s / np.sqrt(w @ g @ w) * w


def test_cagrad_matches_scipy_on_the_subproblem():
    weights = well_weights()[:, INDEX["cagrad"]]
    for b, jac in enumerate(WELL_J[:12]):
        g = jac @ jac.T
        expected = aggregates(cagrad_reference(g / np.trace(g), 0.5)[None], jac[None])[0]
        assert relative_error(weights[b] @ jac, expected) < 1e-4


def test_cagrad_direction_lies_on_the_ball():
    # d = g0 + c ||g0|| g_w / ||g_w||: ||d - g0|| = c ||g0|| unless the weights are zero.
    for weights, jacobians in ((well_weights(), WELL_J), (degenerate_weights(), DEGENERATE_J)):
        d = aggregates(weights[:, INDEX["cagrad"]], jacobians)
        g0 = jacobians.mean(1)
        radius = 0.5 * np.linalg.norm(g0, axis=1)
        distance = np.linalg.norm(d - g0, axis=1)
        zero = np.all(weights[:, INDEX["cagrad"]] == 0, axis=1)
        scale = np.sqrt(np.sum(jacobians**2, axis=(1, 2)))
        assert np.all(zero | (np.abs(distance - radius) <= 1e-4 * scale))


def test_nash_mtl_solves_the_bargaining_fixed_point():
    alpha = well_weights()[:, INDEX["nash_mtl"]]
    g = WELL_G.astype(np.float64)
    products = alpha * np.einsum("bij,bj->bi", g, alpha)  # alpha_i (G alpha)_i = 1
    assert np.all(alpha > 0)
    np.testing.assert_allclose(products, 1.0, atol=1e-3)


def test_nash_mtl_warm_start_and_max_norm():
    alpha = well_weights()[:, INDEX["nash_mtl"]].astype(np.float32)

    @jax.jit
    @jax.vmap
    def variants(g, init):
        return jnp.stack(
            [
                gm.nash_mtl_from_gramian(g, init=init, iterations=3),
                gm.nash_mtl_from_gramian(g, init=-init),  # unusable: the default start
                gm.nash_mtl_from_gramian(g, max_norm=0.5),
            ]
        )

    out = np.asarray(variants(jnp.asarray(WELL_G), jnp.asarray(alpha)), np.float64)
    assert relative_error(out[:, 0], alpha) < 1e-4  # already converged: 3 steps keep it
    np.testing.assert_allclose(out[:, 1], alpha, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(aggregates(out[:, 2], WELL_J), axis=1), 0.5, 1e-4)


# ------------------------------------------------------------------------------ properties

NON_CONFLICTING = ("mgda", "upgrad", "dualproj")
# Relative tolerances on the weights of well-posed Gramians. IMTL-G and Aligned-MTL apply
# pinv(G) or G^(-1/2), which amplify float32 rounding by the condition number (up to ~1e4 in
# WELL_G: row norms span two decades); the solvers reach ~1e-5.
TOLERANCE = dict.fromkeys(NAMES, 1e-4) | {"imtl_g": 2e-3, "aligned_mtl": 2e-3}


def test_non_conflicting_aggregates():
    # J (w^T J) >= -tol: up to reg_eps = 1e-4 (of the trace) for UPGrad and DualProj, exactly
    # (to float precision) with reg_eps = 0 and for MGDA.
    @jax.jit
    @jax.vmap
    def unregularised(g):
        return jnp.stack(
            [
                gm.upgrad_from_gramian(g, reg_eps=0.0),
                gm.dualproj_from_gramian(g, reg_eps=0.0),
            ]
        )

    for jacobians, gramians, weights in (
        (WELL_J, WELL_G, well_weights()),
        (DEGENERATE_J, DEGENERATE_G, degenerate_weights()),
    ):
        trace = np.trace(gramians_of(jacobians), axis1=1, axis2=2)[:, None]
        exact = np.asarray(unregularised(jnp.asarray(gramians)), np.float64)
        cases = [(weights[:, INDEX[name]], 1.1e-4) for name in NON_CONFLICTING]
        cases += [(exact[:, 0], 1e-6), (exact[:, 1], 1e-6)]
        for w, tol in cases:
            products = np.einsum("bkn,bn->bk", jacobians, aggregates(w, jacobians))
            bound = tol * trace * np.max(np.abs(w), axis=1, keepdims=True)
            assert np.all(products >= -bound)


@SETTINGS
@given(permutation=st.permutations(range(K)))
def test_permuting_terms_permutes_weights(permutation):
    perm = np.asarray(permutation)
    permuted = run_all(WELL_G[:, perm][:, :, perm])
    original = well_weights()[:, :, perm]
    for name in NAMES:
        if name == "pcgrad":  # index order: not permutation-invariant for K >= 3
            continue
        i = INDEX[name]
        scale = np.max(np.abs(original[:, i]), axis=1, keepdims=True)
        assert np.all(np.abs(permuted[:, i] - original[:, i]) <= TOLERANCE[name] * scale), name


@SETTINGS
@given(permutation=st.permutations(range(K)))
def test_permuting_degenerate_terms_keeps_the_unique_aggregates(permutation):
    # With rank-deficient Gramians the weights need not be unique, but these aggregates are.
    # A Gramian fixes ||d||^2 = w^T G w only to ~eps ||J||^2, so a min-norm point at (or near)
    # zero is only resolved to ~sqrt(eps) ||J||: MGDA's tolerance.
    tolerance = {"mgda": 1e-3, "upgrad": 1e-5, "dualproj": 1e-5, "cagrad": 1e-5, "nash_mtl": 1e-5}
    perm = np.asarray(permutation)
    permuted = run_all(DEGENERATE_G[:, perm][:, :, perm])
    original = degenerate_weights()
    scale = np.sqrt(np.sum(DEGENERATE_J**2, axis=(1, 2)))
    for name, tol in tolerance.items():
        i = INDEX[name]
        moved = aggregates(permuted[:, i], DEGENERATE_J[:, perm])
        difference = np.linalg.norm(moved - aggregates(original[:, i], DEGENERATE_J), axis=1)
        size = np.max(np.abs(original[:, i]), axis=1)
        assert np.all(difference <= tol * scale * np.maximum(size, 1.0)), name


@SETTINGS
@given(exponent=st.floats(-20.0, 20.0))
def test_weights_are_scale_invariant(exponent):
    # Every method but Nash-MTL is invariant to G -> c G; Nash-MTL's alpha scales as c^(-1/2).
    c = 10.0**exponent
    scaled = run_all((WELL_G.astype(np.float64) * c).astype(np.float32))
    expected = well_weights().copy()
    expected[:, INDEX["nash_mtl"]] /= np.sqrt(c)
    for name in NAMES:
        i = INDEX[name]
        scale = np.max(np.abs(expected[:, i]), axis=1, keepdims=True)
        assert np.all(np.abs(scaled[:, i] - expected[:, i]) <= TOLERANCE[name] * scale), name


def hostile_gramians() -> np.ndarray:
    rng = np.random.default_rng(4)
    psd = gramians_of(rng.normal(size=(K, 6)))
    nan, inf = psd.copy(), psd.copy()
    nan[0, 1] = np.nan
    inf[2, 2] = np.inf
    zero_row = psd.copy()
    zero_row[1], zero_row[:, 1] = 0.0, 0.0
    cases = [
        nan,
        inf,
        -inf,
        np.zeros((K, K)),
        -psd,  # negative definite: trace < 0
        psd * 1e37,
        psd * 1e-37,
        psd * 1e-44,  # subnormal
        np.ones((K, K)),  # four identical gradients
        np.eye(K),
        zero_row,
        rng.normal(size=(K, K)),  # not symmetric, indefinite
        gramians_of(np.outer([1.0, -1.0, 2.0, -2.0], [1.0, 2.0])),  # balanced opposite signs
        gramians_of(np.outer([1.0, -1.0, 0.0, 3.0], [1.0, 2.0])),
        np.diag([1.0, 1e-30, 0.0, 1e-12]),
        np.full((K, K), np.finfo(np.float32).max),
    ]
    cases += [gramians_of(rng.normal(size=(K, 3)) * 10 ** rng.uniform(-20, 20)) for _ in cases]
    return np.stack(cases)[:BATCH]


INVALID = 5  # the first five hostile cases: non-finite entries, zero or negative trace


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_finite_for_hostile_inputs(dtype):
    gramians = jnp.asarray(hostile_gramians(), jnp.float32).astype(dtype)
    out = ALL(gramians)
    assert out.dtype == jnp.float32  # half precision is computed and returned in float32
    out = np.asarray(out, np.float64)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:INVALID], 1.0 / K)  # the documented fallback


@settings(max_examples=10, deadline=None, derandomize=True)
@given(hnp.arrays(np.float32, (BATCH, K, K), elements=st.floats(width=32)))
def test_finite_for_arbitrary_float32_matrices(matrices):
    assert np.all(np.isfinite(run_all(matrices)))


def test_half_precision_gramians_are_computed_in_float32():
    # A well-posed float16 Gramian gives the weights of its float32 image.
    half = WELL_G / np.trace(WELL_G, axis1=1, axis2=2)[:, None, None]
    out = np.asarray(ALL(jnp.asarray(half, jnp.float16)), np.float64)
    again = run_all(half.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(out, again, rtol=1e-5, atol=1e-6)


def test_degenerate_cases_follow_the_documentation():
    weights = degenerate_weights()
    assert np.all(np.isfinite(weights))
    # Two exactly opposite gradients (kind 4): MGDA finds the zero vector in their hull.
    opposite = [b for b in range(BATCH) if b % 5 == 4]
    d = aggregates(weights[opposite, INDEX["mgda"]], DEGENERATE_J[opposite])
    assert np.all(np.linalg.norm(d, axis=1) <= 1e-5 * np.abs(DEGENERATE_J[opposite]).max())


def test_weights_are_constants_for_autodiff():
    def loss(g):
        return jnp.sum(gm.imtl_g_from_gramian(g) * jnp.arange(K, dtype=g.dtype))

    grad = jax.jit(jax.grad(loss))(jnp.asarray(WELL_G[0]))
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: gm.mgda_from_gramian(jnp.ones((2, 3))), "square"),
        (lambda: gm.mgda_from_gramian(jnp.ones((0, 0))), "square"),
        (lambda: gm.mgda_from_gramian(jnp.eye(2), iterations=0), "iterations"),
        (lambda: gm.upgrad_from_gramian(jnp.eye(2), reg_eps=-1.0), "reg_eps"),
        (lambda: gm.upgrad_from_gramian(jnp.eye(2), pref_vector=jnp.ones(3)), "pref_vector"),
        (lambda: gm.aligned_mtl_from_gramian(jnp.eye(2), scale_mode="max"), "scale_mode"),
        (lambda: gm.cagrad_from_gramian(jnp.eye(2), c=-0.1), "c must"),
        (lambda: gm.nash_mtl_from_gramian(jnp.eye(2), max_norm=0.0), "max_norm"),
        (lambda: gm.nash_mtl_from_gramian(jnp.eye(2), init=jnp.ones(3)), "init"),
        (lambda: gm.mgda_from_gramian(jnp.eye(2), mask=jnp.ones(3, bool)), "mask"),
    ],
)
def test_bad_settings_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------- the rules end to end, through weight_gradients

# Five terms with unequal base weights; per-term gradients on two parameter leaves, some in
# conflict. Steps 1 to 3 see the same gradients; at step 3 the loss of "c" is NaN (its
# gradient finite, as an L1 loss of a NaN target gives), so the rules leave "c" out: the other
# four get the method's weights on their own four-term problem (the shape of the property
# batches above: no new compilation). At step 4 the gradient of "c" is NaN too.
TERMS = ("a", "b", "c", "d", "e")
E2E_BASE = dict(zip(TERMS, [1.0, 2.0, 0.5, 1.5, 1.0], strict=True))
LEFT_OUT = TERMS.index("c")


def e2e_jacobian() -> np.ndarray:
    rng = np.random.default_rng(7)
    jac = rng.normal(size=(len(TERMS), 10)) * 10 ** rng.uniform(-1, 1, size=(len(TERMS), 1))
    jac[1] = -0.8 * jac[0] + 0.3 * jac[1]  # a strong conflict
    return jac


def e2e_weightings():
    """Every Gramian weighting, bare, with the solvers' defaults (PCGrad in the fixed order)."""
    factories = {
        "mgda": ao.mgda_weights,
        "upgrad": ao.upgrad_weights,
        "dualproj": ao.dualproj_weights,
        "imtl_g": ao.imtl_g_weights,
        "aligned_mtl": ao.aligned_mtl_weights,
        "cagrad": ao.cagrad_weights,
        "pcgrad": functools.partial(ao.pcgrad_weights, seed=None),
        "config": ao.config_weights,
        "nash_mtl": ao.nash_mtl_weights,
    }
    assert tuple(factories) == NAMES
    return {name: factory(E2E_BASE) for name, factory in factories.items()}


def per_term_gradients(jac: np.ndarray) -> dict:
    """``jax.jacrev``'s layout: {term: {"w": (3, 2), "v": (4,)}}."""
    return {
        t: {"w": jnp.asarray(row[:6].reshape(3, 2), jnp.float32), "v": jnp.asarray(row[6:])}
        for t, row in zip(TERMS, jac.astype(np.float32), strict=True)
    }


def flat(tree: dict) -> np.ndarray:
    return np.concatenate([np.ravel(tree["w"]), np.ravel(tree["v"])]).astype(np.float64)


@functools.cache
def e2e_run():
    """For every method, four steps of ``weight_gradients`` in one ``lax.scan``, all in one
    jit: the aggregates and the weights after each step."""
    jac = e2e_jacobian()
    bad = jac.copy()
    bad[LEFT_OUT] = np.nan
    jacobians = (jac, jac, jac, bad)
    grads = jax.tree.map(lambda *x: jnp.stack(x), *map(per_term_gradients, jacobians))
    losses = {t: jnp.asarray([1.0, 0.9, 0.8, 0.7], jnp.float32) for t in TERMS}
    losses["c"] = jnp.asarray([1.0, 0.9, np.nan, np.nan], jnp.float32)
    params = {"w": jnp.zeros((3, 2)), "v": jnp.zeros(4)}
    transforms = {name: ao.weight_gradients(w) for name, w in e2e_weightings().items()}

    @jax.jit
    def run(grads, losses):
        out = {}
        for name, tx in transforms.items():

            def step(state, inputs, tx=tx):
                g, loss = inputs
                aggregate, state = tx.update(g, state, params, losses=loss)
                return state, (aggregate, ao.find_state(state).weights)

            _, out[name] = jax.lax.scan(step, tx.init(params), (grads, losses))
        return out

    out = run(grads, losses)
    return {
        name: (
            np.stack([flat(jax.tree.map(lambda x, t=t: x[t], aggregate)) for t in range(4)]),
            np.stack([[float(weights[term][t]) for term in TERMS] for t in range(4)]),
        )
        for name, (aggregate, weights) in out.items()
    }


def solver_weights(gramian: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The documented convention: ``b * w(D_b G D_b)`` for every method, shape (methods, K),
    clipped at 0 as the guards do (the library's weights are non-negative)."""
    scaled = (base[:, None] * gramian * base[None, :]).astype(np.float32)
    if scaled.shape[0] == K:  # the property batches' shape: reuse their compilation
        weights = run_all(np.broadcast_to(scaled, (BATCH, K, K)))[0]
    else:
        weights = run_all(scaled[None])[0]
    return np.maximum(base * weights, 0.0)


def test_rules_through_weight_gradients_give_the_solvers_aggregates():
    jac = e2e_jacobian()
    base = np.array(list(E2E_BASE.values()))
    expected = solver_weights(jac @ jac.T, base)
    # ConFIG proposes a negative weight for "c" on this problem: it lands as 0
    assert expected[INDEX["config"], LEFT_OUT] == 0.0
    keep = np.arange(len(TERMS)) != LEFT_OUT
    sub = jac[keep]
    expected_kept = solver_weights(sub @ sub.T, base[keep])
    for name, (aggregates, weights) in e2e_run().items():
        i = INDEX[name]
        tol = 5 * TOLERANCE[name]  # the Gramian of the float32 gradients is rounded apart
        # each step's gradients are weighted with the weights of that step's Gramian
        # (weight_gradients' this_steps_weights, its default for these rules)
        np.testing.assert_allclose(weights[0], expected[i], rtol=tol, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(aggregates[0], weights[0] @ jac, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(weights[1], weights[0], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(aggregates[1], weights[1] @ jac, rtol=1e-5, atol=1e-4)
        # step 3: the loss of "c" is NaN (ao.apply_if_finite skips such a step): "c" keeps
        # its weight, the others get the method's weights on the four finite terms.
        assert weights[2][LEFT_OUT] == weights[1][LEFT_OUT]
        np.testing.assert_allclose(
            weights[2][keep], expected_kept[i], rtol=tol, atol=1e-6, err_msg=name
        )
        # step 4: the gradient of "c" is NaN too: the aggregate is NaN, the weights stay
        # finite; the core judges each term by its own diagonal entry of the Gramian, so
        # only "c" is left out and holds, and the others are solved without it again.
        assert not np.all(np.isfinite(aggregates[3]))
        assert weights[3][LEFT_OUT] == weights[2][LEFT_OUT]
        np.testing.assert_allclose(weights[3][keep], weights[2][keep], rtol=tol, atol=1e-6)


@pytest.mark.parametrize("name", ["mgda", "upgrad"])
def test_aggregates_through_weight_gradients_do_not_conflict(name):
    jac = e2e_jacobian()
    assert np.min(jac @ jac.T) < 0  # a problem with conflicts
    assert np.min(jac @ (np.array(list(E2E_BASE.values())) @ jac)) < 0  # which the sum keeps
    aggregates, _ = e2e_run()[name]
    products = jac @ aggregates[1]
    # UPGrad: up to its reg_eps = 1e-4 of the trace (see test_non_conflicting_aggregates)
    assert np.all(products >= -1.1e-4 * np.trace(jac @ jac.T) * np.abs(aggregates[1]).max())


def test_nash_mtl_rule_keeps_alpha_in_its_state_and_every_k_holds_it():
    weighting = ao.nash_mtl_weights({"a": 1.0, "b": 4.0}, every=3)
    assert set(ao.metrics(weighting.init())) >= {"rule/alpha/a", "rule/alpha/b"}
    rng = np.random.default_rng(8)
    jacobians = rng.normal(size=(7, 2, 3))
    gramians = jnp.asarray(gramians_of(jacobians), jnp.float32)

    @jax.jit
    def run(gramians):
        def step(state, gramian):
            weights, state = weighting.update(
                {"a": 1.0, "b": 1.0}, state, grad_stats={"gramian": gramian}
            )
            return state, (jnp.stack(jax.tree.leaves(weights)), state.rule_state.alpha)

        return jax.lax.scan(step, weighting.init(), gramians)[1]

    weights, alpha = map(np.asarray, run(gramians))
    # consulted at steps 1, 4, 7 only; held in between
    changed = np.any(weights[1:] != weights[:-1], axis=1)
    np.testing.assert_array_equal(changed, [False, False, True, False, False, True])
    np.testing.assert_array_equal(alpha, weights)
    # the base weights do not change Nash-MTL: alpha solves G alpha = 1 / alpha
    for t in (0, 3, 6):
        g = gramians_of(jacobians[t])
        np.testing.assert_allclose(g @ weights[t] * weights[t], 1.0, rtol=1e-3)
