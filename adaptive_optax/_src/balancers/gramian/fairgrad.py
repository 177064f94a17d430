"""FairGrad: alpha-fair resource allocation, ``G w = w^(-1/alpha)``; solver, rule and preset."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    Array,
    check_iterations,
    check_reg_eps,
    finish,
    gramian_rule,
    normalize,
    uniform,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule

#: The authors' default fairness parameter (``FairGrad(alpha=1.0)``: Nash-MTL's equation).
ALPHA = 1.0
#: Damped Newton steps on the ridged problem, then on the exact one.
FAIRGRAD_ITERATIONS = 40
POLISH_ITERATIONS = 8
#: The ridge that keeps the iterates bounded where no solution exists (then detected).
REG_EPS = 1e-5


def _check_settings(alpha, reg_eps, iterations) -> tuple[Any, int]:
    """``alpha`` (a traced one clipped into range) and ``iterations``, checked."""
    alpha = validation.check_number("alpha", alpha, low=0)
    check_reg_eps(reg_eps)
    return alpha, check_iterations("iterations", iterations)


def _newton(q: Array, w: Array, alpha: Array, iterations: int) -> Array:
    """Damped Newton on the convex ``F(w) = 1/2 w^T Q w - sum_i phi(w_i)``, ``phi' = w^(-1/a)``
    (``log`` for ``a = 1``), whose minimizer has ``Q w = w^(-1/a)``; each step is damped by
    ``1 / (1 + decrement)`` and kept a fraction 0.9 of the way to the boundary ``w > 0``."""
    p = 1.0 / alpha

    def step(_, w):
        power = jnp.exp(-p * jnp.log(w))  # w^(-1/alpha)
        grad = q @ w - power
        delta = jnp.linalg.solve(q + jnp.diag(p * power / w), grad)
        decrement = jnp.sqrt(jnp.maximum(grad @ delta, 0.0))
        rising = delta > 0
        boundary = jnp.min(jnp.where(rising, w / jnp.where(rising, delta, 1.0), jnp.inf))
        t = jnp.minimum(1.0 / (1.0 + decrement), 0.9 * boundary)
        new = w - t * delta
        return jnp.where(jnp.all(jnp.isfinite(new) & (new > 0)), new, w)

    return jax.lax.fori_loop(0, iterations, step, w)


def fairgrad_from_gramian(
    gramian,
    *,
    alpha: float = ALPHA,
    reg_eps: float = REG_EPS,
    iterations: int = FAIRGRAD_ITERATIONS,
    mask=None,
) -> Array:
    """FairGrad: the alpha-fair allocation, ``w > 0`` with ``G w = w^(-1/alpha)``.

    The update ``d = J^T w`` maximizes the alpha-fair utility ``sum_i (g_i . d)^(1 - alpha) /
    (1 - alpha)`` (``sum_i log(g_i . d)`` for ``alpha = 1``, Nash-MTL's bargaining) over a
    ball; its optimality condition is ``(G w)_i = w_i^(-1/alpha)`` (eq. 4 of Ban & Ji). The
    authors and TorchJD solve it with ``scipy.optimize.least_squares`` on ``G w -
    w^(-1/alpha)`` from ``1/K``, bounded to ``w >= 0``; here ``w`` is the minimizer of the
    strictly convex ``1/2 w^T G w - sum_i phi(w_i)`` (``phi' = w^(-1/alpha)``), found in-graph
    by damped Newton. ``alpha = 0`` gives uniform weights (linear scalarization), as in
    TorchJD; larger ``alpha`` favours the terms that progress least.

    Scale: the problem is solved on the trace-normalized Gramian and the weights rescaled by
    ``trace(G)^(-alpha / (1 + alpha))``, the exact scaling of the solution, so the iteration
    count does not depend on the gradients' scale (only the ratios of their norms matter).
    Where no solution exists (``0`` in the conic hull of the gradients: opposite gradients, a
    zero gradient), the least-squares residual of the authors has no zero and its answer
    depends on where scipy stops; here the ridge ``reg_eps * I`` (relative to the
    trace-normalized Gramian) keeps the iterates bounded, the case is detected (``w_i^(1/alpha)
    (G w)_i`` falls far below 1) and the weights are uniform ``1/K``. Where a solution exists,
    a few Newton steps without the ridge remove its bias.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      alpha: the fairness parameter (``>= 0``).
      reg_eps: the ridge of the first Newton steps (``>= 0``).
      iterations: damped Newton steps on the ridged problem (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` positive weights; uniform for invalid input or where no solution exists.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> G = J @ J.T
      >>> w = ao.gramian.fairgrad(G, alpha=2.0)
      >>> np.asarray(G @ w * w**0.5, np.float64).round(3).tolist()  # G w = w^(-1/2)
      [1.0, 1.0]

    References:
      Ban & Ji, *Fair Resource Allocation in Multi-Task Learning*, ICML 2024
      (arXiv:2402.15638); the authors' code (github OptMN-Lab/fairgrad,
      ``methods/weight_methods.py``, ``FairGrad``); TorchJD ``FairGradWeighting``.
    """
    checked, iterations = _check_settings(alpha, reg_eps, iterations)
    n = normalize(gramian, mask)
    g = n.gramian
    k = g.shape[0]
    linear = jnp.asarray(checked) == 0  # linear scalarization: uniform weights
    a = jnp.where(linear, 1.0, jnp.asarray(checked, g.dtype)).astype(g.dtype)
    eye = jnp.eye(k, dtype=g.dtype)
    # A left-out term is a decoupled unit gradient: it does not move the others' solution.
    exact = jnp.where(n.active[:, None] & n.active[None, :], g, eye)
    count = jnp.maximum(jnp.sum(n.active), 1).astype(g.dtype)
    start = jnp.full((k,), count ** (a / (1.0 + a)), g.dtype)
    w = _newton(exact + reg_eps * eye, start, a, iterations)
    balance = jnp.exp(jnp.log(w) / a) * (exact @ w)  # 1 at the solution
    solved = jnp.all(jnp.where(n.active, balance > 0.5, True))
    w = jnp.where(solved, _newton(exact, w, a, POLISH_ITERATIONS), w)
    scale = (n.root_scale**2) ** (-a / (1.0 + a))
    weights = jnp.where(solved & ~linear, w * scale, uniform(n.active, g.dtype))
    return finish(jnp.where(n.active, weights, 0.0), n)


def fairgrad_rule(
    *, alpha: float = ALPHA, reg_eps: float = REG_EPS, iterations: int = FAIRGRAD_ITERATIONS
) -> Rule:
    """FairGrad: the alpha-fair allocation of the update among the terms.

    ``ao.gramian.fairgrad`` on ``G_b = D_b G D_b`` of the ``k`` finite terms; the loss weight
    is ``b_i w_i``. Unlike Nash-MTL (``alpha = 1``), the weights depend on each term's
    gradient scale for ``alpha != 1``, so the base weights matter. Where no solution exists
    the weights are ``b_i / k``.

    Recommended guards (``ao.RECOMMENDED["fairgrad"]``): none, as the other Gramian methods;
    ``max_weight`` keeps a vanishing gradient's weight finite (it grows as the gradient
    vanishes).

    Args:
      alpha: the fairness parameter (``>= 0``); the authors use 0.5 to 8 by benchmark.
      reg_eps: the ridge of the first Newton steps (``>= 0``).
      iterations: damped Newton steps (static, ``>= 1``).

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing FairGrad's weights, needing
      ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.fairgrad_rule(alpha=2.0), {"seg": 1.0, "depth": 1.0})

    References:
      See ``ao.gramian.fairgrad``.
    """
    alpha, iterations = _check_settings(alpha, reg_eps, iterations)
    return gramian_rule(
        "fairgrad_rule", fairgrad_from_gramian, alpha=alpha, reg_eps=reg_eps, iterations=iterations
    )


@preset
def fairgrad_weights(
    base_weights: PyTree,
    *,
    alpha: float = ALPHA,
    reg_eps: float = REG_EPS,
    iterations: int = FAIRGRAD_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """FairGrad (Ban & Ji 2024) as a weighting: alpha-fair resource allocation.

    See :func:`adaptive_optax.fairgrad_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["fairgrad"]`` (none: run it bare).

    Args:
      alpha: the fairness parameter.
      reg_eps: the ridge of the first Newton steps.
      iterations: damped Newton steps.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.fairgrad_weights({"a": 1.0, "b": 1.0}, alpha=1.0)
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> # alpha = 1 is Nash-MTL's G w = 1 / w
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.5915, 0.4071)

    References:
      See ``ao.gramian.fairgrad``.
    """
    rule = fairgrad_rule(alpha=alpha, reg_eps=reg_eps, iterations=iterations)
    return bare(rule, base_weights, guards)
