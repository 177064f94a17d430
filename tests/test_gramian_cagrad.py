"""CAGrad moves whenever the gradients are not Pareto-stationary.

References are transcribed in NumPy (torch and cvxpy are not test dependencies):

- the authors' two-task CAGrad, ``cagrad`` in ``cityscapes/utils.py`` of Cranial-XIX/CAGrad
  (a bounded scalar search over ``w = (x, 1 - x)``, ``g = g_0 + c ||g_0|| g_w / ||g_w||``);
- TorchJD's ``CAGradWeighting.forward`` (``aggregation/_cagrad.py``): the subproblem on the
  trace-normalized Gramian, weights ``1/K + sqrt_phi / ||g_w|| w``, or zeros when
  ``||g_w|| < norm_eps``; its convex subproblem is solved here by SLSQP from several starts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize, minimize_scalar

import adaptive_optax as ao
from adaptive_optax._src.balancers import gramian as gm

C = 0.5


def authors_two_task(jacobian: np.ndarray, alpha: float = C) -> np.ndarray:
    """Cranial-XIX/CAGrad ``cityscapes/utils.py::cagrad`` (rescale=0), in float64."""
    g1, g2 = jacobian.astype(np.float64)
    g11, g12, g22 = g1 @ g1, g1 @ g2, g2 @ g2
    g0_norm = 0.5 * np.sqrt(g11 + g22 + 2 * g12)
    coef = alpha * g0_norm

    def obj(x):
        return (
            coef * np.sqrt(x**2 * (g11 + g22 - 2 * g12) + 2 * x * (g12 - g22) + g22 + 1e-8)
            + 0.5 * x * (g11 + g22 - 2 * g12)
            + (0.5 + x) * (g12 - g22)
            + g22
        )

    x = minimize_scalar(obj, bounds=(0, 1), method="bounded", options={"xatol": 1e-12}).x
    gw_norm = np.sqrt(x**2 * g11 + (1 - x) ** 2 * g22 + 2 * x * (1 - x) * g12 + 1e-8)
    lmbda = coef / (gw_norm + 1e-8)
    return (0.5 + lmbda * x) * g1 + (0.5 + lmbda * (1 - x)) * g2


def torchjd_weights(jacobian: np.ndarray, c: float = C, norm_eps: float = 1e-4) -> np.ndarray:
    """TorchJD ``CAGradWeighting(c, norm_eps)`` on ``J J^T``, in float64."""
    j = jacobian.astype(np.float64)
    gramian = j @ j.T
    g = gramian / np.trace(gramian)  # torchjd._linalg.normalize
    k = len(g)
    sqrt_phi = c * np.sqrt(np.ones(k) @ g @ np.ones(k)) / k

    def cost(w):
        return g.mean(1) @ w + sqrt_phi * np.sqrt(max(w @ g @ w, 0.0))

    starts = [np.full(k, 1 / k)] + [0.98 * np.eye(k)[i] + 0.02 / k for i in range(k)]
    best = min(
        (
            minimize(
                cost,
                x0,
                bounds=[(0, 1)] * k,
                constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
                method="SLSQP",
                options={"ftol": 1e-16, "maxiter": 2000},
            )
            for x0 in starts
        ),
        key=lambda r: r.fun,
    )
    w = np.clip(best.x, 0, None)
    g_w_norm = np.sqrt(max(w @ g @ w, 0.0))
    if g_w_norm < norm_eps:
        return np.zeros(k)
    return np.full(k, 1 / k) + sqrt_phi / g_w_norm * w


@jax.jit
def _padded(jacobian, mask, norm_eps):
    return gm.cagrad_from_gramian(jacobian @ jacobian.T, c=C, norm_eps=norm_eps, mask=mask)


def ours(jacobian, norm_eps=1e-4):
    """Our weights in float32; padded to 4 x 4 with masked-out terms (one compilation)."""
    k, n = jacobian.shape
    padded = np.zeros((4, 4), np.float32)
    padded[:k, :n] = jacobian
    weights = _padded(jnp.asarray(padded), jnp.arange(4) < k, jnp.float32(norm_eps))
    return np.asarray(weights)[:k]


def direction_error(d, expected):
    return np.linalg.norm(d - expected) / np.linalg.norm(expected)


BASE = np.array([[1.0, 0.3, 0.0], [-0.2, 1.0, 0.5]])


@pytest.mark.parametrize(
    "ratio, norm_eps", [(1.0, 1e-4), (30.0, 1e-4), (3000.0, 1e-4), (3e4, 0.0), (1e5, 0.0)]
)
def test_two_terms_of_disparate_norms_follow_the_authors(ratio, norm_eps):
    # Scaled so that the authors' absolute 1e-8 terms are negligible. Below norm_eps relative
    # norm (1 / 30000 here) TorchJD stops; norm_eps=0 follows the authors, who never stop.
    jacobian = max(1e3, ratio) * BASE * np.array([[1.0], [1.0 / ratio]])
    weights = np.asarray(ours(jacobian, norm_eps), np.float64)
    assert np.all(weights > 0)  # it moves: no zero weights
    d = weights @ jacobian
    assert direction_error(d, authors_two_task(jacobian)) < 1e-4


DISPARATE = {
    "2 terms, 1/3000": BASE * np.array([[1.0], [1 / 3000]]),
    "2 terms, 1/200": BASE * np.array([[1.0], [1 / 200]]),
    "3 terms, 1, 1/100, 1/2000": np.array([[1.0, 0.2, 0.0], [0.1, -1, 0.3], [0.3, 0.2, -1]])
    * np.array([[1.0], [1 / 100], [1 / 2000]]),
    "4 heads, one x100": np.array(
        [[1.0, 0.1, 0.0, 0.2], [0.0, 1.0, -0.1, 0.0], [0.2, 0.0, 1.0, 0.1], [0.0, 0.3, 0.0, 1.0]]
    )
    * np.array([[100.0], [1.0], [1.0], [1.0]]),
    # Rank-deficient: three gradients in a plane, one a multiple of another.
    "rank 2 of 3": np.array([[1.0, 0.5, 0.0], [-0.5, 1.0, 0.0], [2.0, 1.0, 0.0]]),
    "rank 2 of 3, 1/500": np.array([[1.0, 0.5, 0.0], [-0.5, 1.0, 0.0], [0.5, 1.5, 0.0]])
    * np.array([[1.0], [1.0], [1 / 500]]),
    "duplicated row": np.array([[1.0, 0.0, 0.2], [1.0, 0.0, 0.2], [-0.3, 1.0, 0.0]]),
}


@pytest.mark.parametrize("name", DISPARATE)
def test_disparate_and_rank_deficient_jacobians_match_torchjd(name):
    jacobian = DISPARATE[name]
    weights = np.asarray(ours(jacobian), np.float64)
    expected = torchjd_weights(jacobian)
    assert np.any(expected != 0)  # none of these is Pareto-stationary
    assert np.all(weights >= 0) and np.any(weights > 0)
    d = weights @ jacobian
    assert direction_error(d, expected @ jacobian) < 1e-3


def test_stops_where_torchjd_stops():
    # Zero in the hull, but CAGrad's own direction is not short: both move.
    around = np.array([[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1]])
    expected = torchjd_weights(around)
    assert np.all(expected > 0)
    assert direction_error(np.asarray(ours(around), np.float64) @ around, expected @ around) < 1e-3
    # A zero gradient: w* is that term, ||J^T w*|| = 0.
    np.testing.assert_array_equal(np.asarray(ours(BASE * [[1.0], [0.0]])), 0.0)
    # Below norm_eps (relative to sqrt(trace G)), as TorchJD.
    tiny = BASE * np.array([[1.0], [1e-6]])
    np.testing.assert_array_equal(np.asarray(ours(tiny)), 0.0)
    assert np.all(torchjd_weights(tiny) == 0)


def test_norm_eps_zero_never_stops():
    # The authors' code has no stationarity test. Opposite gradients (0 in their hull) with a
    # non-zero mean: CAGrad moves, as the authors' code and TorchJD.
    opposite = np.array([[1.0, 2.0], [-2.0, -4.0]])
    for norm_eps in (0.0, 1e-4):
        d = np.asarray(ours(opposite, norm_eps=norm_eps), np.float64) @ opposite
        assert direction_error(d, authors_two_task(1e3 * opposite) / 1e3) < 1e-4
        assert direction_error(d, torchjd_weights(opposite) @ opposite) < 1e-4
    # A zero gradient keeps its 1/K share; the other term moves along its gradient.
    zero = BASE * np.array([[1.0], [0.0]])
    weights = np.asarray(ours(zero, norm_eps=0.0), np.float64)
    assert weights[1] == 0.5 and weights[0] >= 0.5
    tiny = BASE * np.array([[1.0], [1e-5]])
    weights = np.asarray(ours(tiny, norm_eps=0.0), np.float64)
    assert direction_error(weights @ tiny, authors_two_task(1e3 * tiny) / 1e3) < 1e-3


def test_quadratics_with_gradients_3000_times_apart_train():
    # The new user's case: two quadratics, gradients 3000x apart, 100 Adam steps.
    weighting = ao.cagrad_weights({"big": 1.0, "small": 1.0})
    optimizer = optax.adam(1e-2)
    scales = {"big": 3000.0, "small": 1.0}
    centres = {"big": jnp.array([1.0, 0.0]), "small": jnp.array([0.0, 1.0])}

    def losses_of(x):
        return {k: 0.5 * scales[k] * jnp.sum((x - centres[k]) ** 2) for k in scales}

    def step(carry, _):
        x, opt_state, state = carry
        jac = jax.jacrev(lambda x: jnp.stack(list(losses_of(x).values())))(x)
        losses = losses_of(x)
        weights, state = weighting.update(losses, state, grad_stats={"gramian": jac @ jac.T})
        grad = weights["big"] * jac[0] + weights["small"] * jac[1]
        updates, opt_state = optimizer.update(grad, opt_state)
        return (optax.apply_updates(x, updates), opt_state, state), weights

    x0 = jnp.array([2.0, 3.0])  # off the Pareto set (the segment between the centres)
    carry = (x0, optimizer.init(x0), weighting.init())
    with jax.numpy_dtype_promotion("standard"):
        step = jax.jit(step)
        moved = []
        for _ in range(100):
            carry, weights = step(carry, None)
            moved.append(float(weights["big"] + weights["small"]) > 0)
    assert all(moved)  # never a zero update
    assert float(jnp.linalg.norm(carry[0] - x0)) > 0.3
