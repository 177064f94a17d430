"""DualProj: the mean gradient projected onto the dual cone; solver, rule and preset."""

from __future__ import annotations

from typing import Any

from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian import _shared
from adaptive_optax._src.balancers.gramian._shared import Array
from adaptive_optax._src.base import LossWeighting, PyTree, Rule


def dualproj_from_gramian(
    gramian,
    *,
    pref_vector=None,
    reg_eps: float = _shared.REG_EPS,
    iterations: int = _shared.DUAL_CONE_ITERATIONS,
    mask=None,
) -> Array:
    """DualProj: project the mean gradient onto the dual cone of the gradients.

    ``w = argmin_v v^T G v`` s.t. ``v >= u`` with ``u = pref_vector`` (default ``1/K``): the
    weights of the projection of ``J^T u`` onto ``{d : J d >= 0}`` (Equation 11 of GEM,
    in TorchJD's dual form). Same solver, regularization and departures as
    ``upgrad_from_gramian`` (``ao.gramian.upgrad``).

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` weights of the vector to project; default ``1/K`` each.
      reg_eps: ridge added to the trace-normalized Gramian (``>= 0``).
      iterations: the most principal pivots (static; the loop stops once the problem is
        solved, in about ``K`` pivots).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` DualProj weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.dualproj(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.6109, 0.5]

    References:
      Lopez-Paz & Ranzato, *Gradient Episodic Memory for Continual Learning*, NeurIPS 2017;
      TorchJD ``DualProjWeighting``.
    """
    iterations = _shared.check_qp_settings(reg_eps, iterations)
    n = _shared.normalize(gramian, mask)
    pref = _shared.preference(pref_vector, n, mean=True)
    return _shared.finish(
        _shared.dual_cone_weights(n.gramian, pref, reg_eps, iterations, n.active), n
    )


def dualproj_rule(
    *, reg_eps: float = _shared.REG_EPS, iterations: int = _shared.DUAL_CONE_ITERATIONS
) -> Rule:
    """DualProj: project the mean gradient onto the dual cone of the gradients.

    ``ao.gramian.dualproj`` on ``G_b = D_b G D_b`` with the preference ``1 / k`` (``k`` finite
    terms): the weights of the projection of ``sum_i b_i g_i / k`` onto the dual cone of the
    gradients (GEM's projection). The loss weight is ``b_i w_i``; the aggregate conflicts with
    no term.

    Recommended guards (``ao.RECOMMENDED["dualproj"]``): none; options as for
    :func:`adaptive_optax.upgrad_rule`.

    Args:
      reg_eps: ridge added to the trace-normalized Gramian (>= 0).
      iterations: the most principal pivots (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing DualProj's weights, needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.dualproj_rule(), {"seg": 1.0, "depth": 1.0})

    References:
      See ``ao.gramian.dualproj``.
    """
    iterations = _shared.check_qp_settings(reg_eps, iterations)
    return _shared.gramian_rule(
        "dualproj_rule", dualproj_from_gramian, reg_eps=reg_eps, iterations=iterations
    )


@preset
def dualproj_weights(
    base_weights: PyTree,
    *,
    reg_eps: float = _shared.REG_EPS,
    iterations: int = _shared.DUAL_CONE_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """DualProj (GEM's projection, Lopez-Paz & Ranzato 2017) as a weighting.

    See :func:`adaptive_optax.dualproj_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["dualproj"]`` (none: run it bare).

    Args:
      reg_eps: ridge of the projection's QP, added to the trace-normalized Gramian.
      iterations: the most principal pivots of the projection.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.dualproj_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 3), round(float(weights["b"]), 3)  # TorchJD: 0.6109, 0.5
      (0.611, 0.5)

    References:
      See ``ao.gramian.dualproj``.
    """
    rule = dualproj_rule(reg_eps=reg_eps, iterations=iterations)
    return bare(rule, base_weights, guards)
