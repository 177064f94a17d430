"""MGDA: the min-norm point of the convex hull of the gradients; solver, rule and preset."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    QP_ITERATIONS,
    Array,
    check_iterations,
    finish,
    gramian_rule,
    min_norm_weights,
    normalize,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule


def mgda_from_gramian(gramian, *, iterations: int = QP_ITERATIONS, mask=None) -> Array:
    """MGDA: the weights of the min-norm point of the convex hull of the gradients.

    ``w = argmin_{w >= 0, sum(w) = 1} w^T G w``. The aggregate ``d = J^T w`` satisfies
    ``J d >= ||d||^2 >= 0``: it conflicts with no gradient.

    Solved by a primal-dual interior-point method (fixed ``iterations``, no early stop, so
    the iterations of one Gramian never depend on the others of a ``vmap`` batch) on the
    trace-normalized Gramian, where the authors and TorchJD run Frank-Wolfe (Algorithm 2 of
    Sener & Koltun) with an early stop at ``gamma < 0.001`` or 100 iterations: the minimizer is
    the same, reached to float precision.

    The min-norm point ``d`` is unique; the weights are not when the gradients are linearly
    dependent (a duplicated gradient, ``0`` in the hull of a rank-deficient set). What is
    guaranteed then: identical gradients (identical rows of ``G``, compared exactly) get
    identical weights, since the weights are averaged over each group of identical rows
    (the average of optimal weights is optimal); TorchJD's Frank-Wolfe gives the whole group's
    weight to one of them. In other non-unique cases the weights are one optimal choice
    that rounding decides, so it may differ between ``jit`` and ``vmap`` or between batch
    sizes and orders of the terms, while the aggregate ``d`` agrees to rounding.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      iterations: interior-point iterations (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` weights on the simplex; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.mgda(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.6, 0.4]

    References:
      Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective optimization*,
      2012; Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018.
    """
    iterations = check_iterations("iterations", iterations)
    n = normalize(gramian, mask)
    w = min_norm_weights(n.gramian, iterations, active=n.active)
    return finish(average_identical(w, n.gramian, n.active), n)


def average_identical(w: Array, g: Array, active: Array) -> Array:
    """``w`` averaged over each group of active terms whose rows of ``g`` are identical
    (exactly); unchanged, bit for bit, where no two rows are."""
    same = jnp.all(g[:, None, :] == g[None, :, :], axis=-1) & active[:, None] & active[None, :]
    same = same | jnp.eye(g.shape[0], dtype=bool)
    return jnp.where(same, w[None, :], 0.0).sum(-1) / same.sum(-1).astype(w.dtype)


def mgda_rule(*, iterations: int = QP_ITERATIONS) -> Rule:
    """MGDA as a rule: ``ao.gramian.mgda`` on ``D_b G D_b``.

    ``w = argmin_{w >= 0, sum(w) = 1} ||sum_i w_i b_i g_i||^2``; the loss weight is
    ``b_i w_i``. The aggregate ``d`` satisfies ``<b_i g_i, d> >= ||d||^2 >= 0``: it conflicts
    with no term, and it vanishes at a Pareto-stationary point. Non-finite terms are left out
    of the hull.

    Recommended guards (``ao.RECOMMENDED["mgda"]``): none, for the guarantee (a change limit,
    bounds or gate make the applied weights differ from the solver's, and the aggregate may
    then conflict); ``every=k`` consults the solver every ``k`` steps only.

    Args:
      iterations: interior-point iterations (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing MGDA's weights, needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.mgda_rule(), {"seg": 1.0, "depth": 1.0}, warmup_steps=10)

    References:
      See ``ao.gramian.mgda``.
    """
    iterations = check_iterations("iterations", iterations)
    return gramian_rule("mgda_rule", mgda_from_gramian, iterations=iterations)


@preset
def mgda_weights(
    base_weights: PyTree, *, iterations: int = QP_ITERATIONS, **guards: Any
) -> LossWeighting:
    """MGDA (Désidéri 2012; Sener & Koltun 2018) as a weighting: the min-norm aggregate.

    See :func:`adaptive_optax.mgda_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["mgda"]`` (none: run it bare).

    Args:
      iterations: interior-point iterations.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.mgda_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.6, 0.4)

    References:
      See ``ao.gramian.mgda``.
    """
    return bare(mgda_rule(iterations=iterations), base_weights, guards)
