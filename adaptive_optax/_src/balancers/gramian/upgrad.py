"""UPGrad: each gradient projected onto the dual cone of all, averaged; solver, rule, preset."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    DUAL_CONE_ITERATIONS,
    REG_EPS,
    Array,
    check_qp_settings,
    dual_cone_weights,
    finish,
    gramian_rule,
    normalize,
    preference,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule


def upgrad_from_gramian(
    gramian,
    *,
    pref_vector=None,
    reg_eps: float = REG_EPS,
    iterations: int = DUAL_CONE_ITERATIONS,
    mask=None,
) -> Array:
    """UPGrad: project each gradient onto the dual cone of all gradients, and average.

    With ``u = pref_vector`` (default ``1/K``), each row ``u_i e_i`` is projected onto the dual
    cone ``{d : J d >= 0}`` by solving ``v_i = argmin_v v^T G v`` s.t. ``v >= u_i e_i``
    (Proposition 1 of Quinton & Rey) and ``w = sum_i v_i``. The aggregate ``J^T w`` is
    non-conflicting (``J J^T w >= 0``) up to the regularization.

    As in TorchJD's ``QuadprogProjector``, the QP runs on ``G / trace(G) + reg_eps * I``;
    ``reg_eps = 1e-4`` reproduces TorchJD's values (and its small ``O(reg_eps)`` departure
    from the exact projection). The ``K`` box-constrained QPs are solved in-graph, all at once,
    as linear complementarity problems by principal pivoting (each pivot a rank-one update of
    a ``(K, K)`` tableau; about ``K`` pivots), then polished by two steps of iterative
    refinement, where TorchJD calls quadprog on the host, row by row; the two agree to about
    1e-9 of the aggregate's norm in float64. The pivoting loop stops once every row is solved
    (at most ``iterations`` pivots). Unlike TorchJD, which zeroes a Gramian whose trace is
    below ``norm_eps = 1e-4``, nothing here depends on the absolute scale.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` preference weights; default ``1/K`` each.
      reg_eps: ridge added to the trace-normalized Gramian (``>= 0``).
      iterations: the most principal pivots per row (static; the loop stops once every row is
        solved, in about ``K`` pivots, so the default cap is rarely reached).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` UPGrad weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.upgrad(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [1.1109, 0.7894]

    References:
      Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024, Section 3;
      TorchJD ``UPGradWeighting``; for the solver, Murty, *Linear Complementarity, Linear and
      Nonlinear Programming*, 1988, Chapter 4 (principal pivoting methods).
    """
    iterations = check_qp_settings(reg_eps, iterations)
    n = normalize(gramian, mask)
    pref = preference(pref_vector, n, mean=True)
    projected = dual_cone_weights(n.gramian, jnp.diag(pref), reg_eps, iterations, n.active)
    return finish(jnp.sum(projected, axis=0), n)


def upgrad_rule(*, reg_eps: float = REG_EPS, iterations: int = DUAL_CONE_ITERATIONS) -> Rule:
    """UPGrad: project each gradient onto the dual cone of all gradients, and average.

    ``ao.gramian.upgrad`` on ``G_b = D_b G D_b`` with the preference ``1 / k`` (``k`` finite
    terms): each ``b_i g_i / k`` projected onto the dual cone of the gradients, and the
    projections summed. The loss weight is ``b_i w_i``. The aggregate conflicts with no term (up
    to ``reg_eps``); with equal base weights it is TorchJD's ``UPGrad()``, and the base weights
    act as TorchJD's preference vector (``pref_vector = b / k``).

    Recommended guards (``ao.RECOMMENDED["upgrad"]``): none, for the guarantee (see
    :func:`adaptive_optax.mgda_rule`); ``every=k`` amortizes the ``n`` small QPs.

    Args:
      reg_eps: ridge added to the trace-normalized Gramian (>= 0).
      iterations: the most principal pivots per row (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing UPGrad's weights, needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.upgrad_rule(), {"seg": 1.0, "depth": 1.0}, warmup_steps=10)

    References:
      See ``ao.gramian.upgrad``.
    """
    iterations = check_qp_settings(reg_eps, iterations)
    return gramian_rule("upgrad_rule", upgrad_from_gramian, reg_eps=reg_eps, iterations=iterations)


@preset
def upgrad_weights(
    base_weights: PyTree,
    *,
    reg_eps: float = REG_EPS,
    iterations: int = DUAL_CONE_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """UPGrad (Quinton & Rey 2024) as a weighting: the average of the projected gradients.

    See :func:`adaptive_optax.upgrad_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["upgrad"]`` (none: run it bare).

    Args:
      reg_eps: ridge added to the trace-normalized Gramian.
      iterations: the most principal pivots per row of the projection.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.upgrad_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 3), round(float(weights["b"]), 3)  # TorchJD: 1.1109, 0.7894
      (1.111, 0.789)

    References:
      See ``ao.gramian.upgrad``.
    """
    rule = upgrad_rule(reg_eps=reg_eps, iterations=iterations)
    return bare(rule, base_weights, guards)
