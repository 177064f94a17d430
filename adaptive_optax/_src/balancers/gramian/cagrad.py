"""CAGrad: the best worst-case improvement near the mean gradient; solver, rule and preset."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    QP_ITERATIONS,
    Array,
    check_iterations,
    divide_or_zero,
    finish,
    gramian_rule,
    min_norm_weights,
    normalize,
    uniform,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule

#: Root-finding (Illinois) steps of CAGrad's outer problem; each solves one simplex QP.
CAGRAD_ITERATIONS = 16
#: The default radius of the ball, relative to the mean gradient's norm.
C = 0.5
#: The default relative norm below which the gradients are taken as Pareto-stationary.
NORM_EPS = 1e-4


def _check_settings(c, rescale, norm_eps, iterations, qp_iterations) -> tuple[bool, int, int]:
    """``rescale``, ``iterations`` and ``qp_iterations``, checked with ``c`` and ``norm_eps``."""
    c = validation.check_number("c", c, low=0)
    rescale = validation.check_flag("rescale", rescale)
    norm_eps = validation.check_number("norm_eps", norm_eps, low=0, high=1, high_open=True)
    iterations = check_iterations("iterations", iterations)
    return rescale, iterations, check_iterations("qp_iterations", qp_iterations)


def _rounding_error(g: Array, w: Array) -> Array:
    """A bound on the rounding error of ``w^T G w`` (``||J^T w||^2``) in ``g``'s dtype."""
    return 8 * g.shape[0] * jnp.finfo(g.dtype).eps * (jnp.abs(w) @ jnp.abs(g) @ jnp.abs(w))


def _cagrad_direction_weights(g: Array, mean: Array, s: Array, iterations, qp_iterations, active):
    """``w* = argmin_{w in simplex} w^T G mean + s sqrt(w^T G w)``.

    Since ``sqrt(q) = min_t (q / t + t) / 2``, the minimizer is ``w(t*)`` with
    ``w(t) = argmin_simplex (t / s) (G 1/K)^T w + 1/2 w^T G w`` and ``t* = ||J^T w(t*)||``;
    ``psi(t) = log ||J^T w(t)|| - log t`` decreases in ``t`` (the partial minimum over ``w`` is
    convex in ``t``). The root is bracketed by ``[||J^T w_0||, sqrt(max G_ii)]``, where
    ``w_0 = w(0)`` is the min-norm point (no simplex point is shorter, none longer than the
    longest gradient), and found by the Illinois method in ``log t``. The lower end is raised
    to the rounding error of ``||J^T w_0||`` when ``0`` is (numerically) in the hull. The
    bracket follows the gradients' scales: a term whose gradient is thousands of times shorter
    than another's still moves the solution (no fixed floor).

    Returns ``(w*, w_0)``: the root's weights and the min-norm point's.
    """
    b = g @ mean
    tiny = jnp.sqrt(jnp.finfo(g.dtype).tiny)

    def norm(w):
        return jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))

    def floor(w):
        # The shortest resolved ||J^T w||: below it, psi is rounding noise.
        return jnp.maximum(jnp.sqrt(_rounding_error(g, w)), tiny)

    def evaluate(log_t):
        w = min_norm_weights(g, qp_iterations, shift=b * jnp.exp(log_t) / s, active=active)
        return jnp.log(jnp.maximum(norm(w), tiny)) - log_t, w

    def step(t, state):
        # Step 0 finds the min-norm point (t = 0), steps 1 and 2 evaluate the ends of the
        # bracket, the others its secant point, so that the graph holds one QP (it compiles in
        # about half the time of two).
        lo, f_lo, w_lo, hi, f_hi, w_hi, side, w_0 = state
        secant = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        mid = jnp.where(jnp.isfinite(secant), jnp.clip(secant, lo, hi), 0.5 * (lo + hi))
        log_t = jnp.select([t == 0, t == 1, t == 2], [-jnp.inf, lo, hi], mid)
        f_mid, w_mid = evaluate(log_t)
        low_side = f_mid > 0  # the root lies above mid
        # Illinois: halve the value kept at an end that survives twice in a row.
        halved_hi = jnp.where(low_side & (side == 1), 0.5 * f_hi, f_hi)
        halved_lo = jnp.where(~low_side & (side == -1), 0.5 * f_lo, f_lo)
        cases = (
            (jnp.log(jnp.maximum(norm(w_mid), floor(w_mid))), f_lo, w_mid, hi, f_hi, w_mid, side),
            (lo, f_mid, w_mid, hi, f_hi, w_hi, side),
            (lo, f_lo, w_lo, hi, f_mid, w_mid, side),
            (
                jnp.where(low_side, mid, lo),
                jnp.where(low_side, f_mid, halved_lo),
                jnp.where(low_side, w_mid, w_lo),
                jnp.where(low_side, hi, mid),
                jnp.where(low_side, halved_hi, f_mid),
                jnp.where(low_side, w_hi, w_mid),
                jnp.where(low_side, jnp.int32(1), jnp.int32(-1)),
            ),
        )
        new = jax.tree.map(lambda *x: jnp.select([t == 0, t == 1, t == 2], x[:3], x[3]), *cases)
        return (*new, jnp.where(t == 0, w_mid, w_0))

    hi = 0.5 * jnp.log(jnp.maximum(jnp.max(jnp.diag(g)), tiny**2))
    zero, weights = jnp.zeros((), g.dtype), jnp.zeros_like(mean)
    start = (hi, zero, weights, hi, zero, weights, jnp.zeros((), jnp.int32), weights)
    lo, f_lo, w_lo, hi, f_hi, w_hi, _, w_0 = jax.lax.fori_loop(0, iterations + 3, step, start)
    return jnp.where(jnp.abs(f_lo) < jnp.abs(f_hi), w_lo, w_hi), w_0


def cagrad_from_gramian(
    gramian,
    *,
    c: float = C,
    rescale: bool = False,
    norm_eps: float = NORM_EPS,
    iterations: int = CAGRAD_ITERATIONS,
    qp_iterations: int = QP_ITERATIONS,
    mask=None,
) -> Array:
    """CAGrad: the best worst-case improvement within a ball around the mean gradient.

    On the trace-normalized Gramian, with ``g_0 = J^T 1/K`` and ``s = c ||g_0||``::

        w* = argmin_{w in simplex} w^T G 1/K + s ||J^T w||
        weights = 1/K + (s / ||J^T w*||) w*

    (TorchJD's formulation, Algorithm 1 of Liu et al.). The simplex subproblem is solved
    in-graph (see ``_cagrad_direction_weights``: one min-norm QP, then ``iterations`` Illinois
    steps, each one interior-point QP of ``qp_iterations``), where TorchJD uses cvxpy/Clarabel
    and the authors scipy's SLSQP. The weights do not depend on the scale of ``G``.

    The weights are zero, as in TorchJD, only when ``||J^T w*|| < norm_eps`` (relative to
    ``sqrt(trace(G))``, TorchJD's normalization) or when ``||J^T w*||^2`` is below its
    rounding error in the computing dtype (``w*`` is then noise; this happens near
    Pareto-stationary points, where ``0`` is in the convex hull of the gradients). Where the
    min-norm point of the hull is shorter than ``norm_eps`` (or than its rounding error), it is
    taken as ``w*`` when ``c >= 1`` (no point of the simplex costs less: the cost is at least
    ``(c - 1) ||g_0|| ||J^T w||``; the other minimizers give the same zero aggregate, which
    float32 would only resolve as rounding noise that may conflict with a term) and, for
    ``c < 1``, when it costs no more than the root found (zero gradients beside gradients along
    the mean): the weights are then zero, as TorchJD's, and the aggregate conflicts with no
    term. Gradients
    of different scales are not stationary: a term whose gradient is 3000 times shorter than
    another's (relative norm ``3e-4``) still gives CAGrad's direction, as in TorchJD and the
    authors' code. ``norm_eps=0`` never zeroes the weights, as the authors' code: where
    ``||J^T w*||`` is not resolved it gives the mean gradient (``1/K`` each). A term with a
    zero gradient keeps ``1/K`` (its weight does not change the aggregate). ``c = 0`` (or a
    zero mean gradient) gives ``1/K``.
    ``rescale=True`` divides by ``1 + c**2``, as the authors' NYUv2 code does by default;
    TorchJD does not rescale.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      c: radius of the ball, relative to ``||g_0||`` (``>= 0``).
      rescale: divide the weights by ``1 + c**2``.
      norm_eps: relative norm of ``J^T w*`` below which the weights are zero, in ``[0, 1)``.
      iterations: root-finding steps (static).
      qp_iterations: interior-point iterations of each QP (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` CAGrad weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.cagrad(J @ J.T, c=0.5)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.7041, 0.5]

    References:
      Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021;
      TorchJD ``CAGradWeighting``.
    """
    rescale, iterations, qp_iterations = _check_settings(
        c, rescale, norm_eps, iterations, qp_iterations
    )
    n = normalize(gramian, mask)
    g = n.gramian
    mean = uniform(n.active, g.dtype)
    s = c * jnp.sqrt(jnp.maximum(mean @ g @ mean, 0.0))
    safe_s = jnp.where(s > 0, s, 1.0)
    w, w_0 = _cagrad_direction_weights(g, mean, safe_s, iterations, qp_iterations, n.active)

    def norm_of(v):
        return jnp.sqrt(jnp.maximum(v @ g @ v, 0.0))

    # The interior point converges slowly onto a zero gradient (degenerate: its multiplier
    # goes to 0 too): the shortest gradient's vertex, where shorter, is the min-norm point.
    diag = jnp.where(n.active, jnp.diag(g), jnp.inf)
    vertex = jax.nn.one_hot(jnp.argmin(diag), g.shape[0], dtype=g.dtype)
    w_0 = jnp.where(jnp.min(diag) < w_0 @ g @ w_0, vertex, w_0)
    # 0 in the hull (to norm_eps or rounding): the min-norm point w_0 costs about 0, and for
    # c >= 1 no point costs less (cost(w) >= (c - 1) ||g_0|| ||J^T w||), so w* = w_0; for
    # c < 1 it is w* where no root costs less (zero gradients with others parallel).
    at_zero = (norm_of(w_0) < norm_eps) | (w_0 @ g @ w_0 <= _rounding_error(g, w_0))
    cost_0 = (g @ mean) @ w_0 + s * norm_of(w_0)
    cheaper = cost_0 <= (g @ mean) @ w + s * norm_of(w)
    w = jnp.where(at_zero & ((c >= 1) | cheaper), w_0, w)
    norm = norm_of(w)
    resolved = w @ g @ w > _rounding_error(g, w)
    moving = jnp.where(resolved, mean + divide_or_zero(s, norm) * w, mean)
    # A zero gradient's weight does not move the aggregate: keep its share of the mean.
    moving = jnp.where(jnp.diag(g) > 0, moving, mean)
    stationary = (norm_eps > 0) & (~resolved | (norm < norm_eps))
    weights = jnp.where(s > 0, jnp.where(stationary, 0.0, moving), mean)
    if rescale:
        weights = weights / (1.0 + c**2)
    return finish(weights, n)


def cagrad_rule(
    *,
    c: float = C,
    rescale: bool = False,
    norm_eps: float = NORM_EPS,
    iterations: int = CAGRAD_ITERATIONS,
    qp_iterations: int = QP_ITERATIONS,
) -> Rule:
    """CAGrad: the best worst-case improvement within a ball around the mean gradient.

    ``ao.gramian.cagrad`` on ``G_b = D_b G D_b`` of the ``k`` finite terms, around the mean
    ``g_0`` of the ``b_i g_i``; the loss weight is ``b_i w_i``. ``rescale=True`` divides by
    ``1 + c**2`` as the authors' code does; TorchJD does not. The weights are 0, as in TorchJD,
    only where the gradients are Pareto-stationary (``norm_eps``, or ``||J^T w*||`` below its
    rounding error); gradients of disparate norms (one 3000 times shorter) still move.
    ``norm_eps=0`` never stops, as the authors' code.

    Recommended guards (``ao.RECOMMENDED["cagrad"]``): none, for the method's guarantee;
    ``every=k`` amortizes the solve (``iterations`` QPs).

    Args:
      c: radius of the ball relative to ``||g_0||`` (>= 0); the authors use 0.4 to 0.5.
      rescale: divide the weights by ``1 + c**2``.
      norm_eps: relative norm below which the gradients are taken as Pareto-stationary, in
        ``[0, 1)`` (a simplex point is never longer than the longest gradient).
      iterations: root-finding steps (static, >= 1).
      qp_iterations: interior-point iterations of each QP (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing CAGrad's weights, needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.cagrad_rule(c=0.4), {"seg": 1.0, "depth": 1.0})

    References:
      See ``ao.gramian.cagrad``.
    """
    rescale, iterations, qp_iterations = _check_settings(
        c, rescale, norm_eps, iterations, qp_iterations
    )
    return gramian_rule(
        "cagrad_rule",
        cagrad_from_gramian,
        c=c,
        rescale=rescale,
        norm_eps=norm_eps,
        iterations=iterations,
        qp_iterations=qp_iterations,
    )


@preset
def cagrad_weights(
    base_weights: PyTree,
    *,
    c: float = C,
    rescale: bool = False,
    norm_eps: float = NORM_EPS,
    iterations: int = CAGRAD_ITERATIONS,
    qp_iterations: int = QP_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """CAGrad (Liu et al. 2021) as a weighting: conflict-averse gradient descent.

    See :func:`adaptive_optax.cagrad_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["cagrad"]`` (none: run it bare).

    Args:
      c: radius of the ball relative to the mean gradient's norm.
      rescale: divide the weights by ``1 + c**2``.
      norm_eps: relative norm below which the gradients are taken as Pareto-stationary.
      iterations: root-finding steps.
      qp_iterations: interior-point iterations of each QP.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.cagrad_weights({"a": 1.0, "b": 1.0}, c=0.5)
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 3), round(float(weights["b"]), 3)  # TorchJD: 0.7041, 0.5
      (0.704, 0.5)

    References:
      See ``ao.gramian.cagrad``.
    """
    rule = cagrad_rule(
        c=c, rescale=rescale, norm_eps=norm_eps, iterations=iterations, qp_iterations=qp_iterations
    )
    return bare(rule, base_weights, guards)
