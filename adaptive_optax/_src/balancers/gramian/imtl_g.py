"""IMTL-G: equal projections of the aggregate on the unit gradients; solver, rule, preset."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    Array,
    divide_where,
    finish,
    gramian_rule,
    normalize,
    pinv_solve,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule


def imtl_g_from_gramian(gramian, *, mask=None) -> Array:
    """IMTL-G: the aggregate has the same projection on every unit gradient.

    Closed form (TorchJD's generalization to linearly dependent gradients)::

        v = pinv(G) sqrt(diag(G)),    w = v / sum(v)

    For independent gradients, ``u_i^T (J^T v) = 1`` for every unit gradient ``u_i``; the
    authors' code (LibMTL) solves the equivalent ``(K-1)``-dimensional system with
    ``torch.inverse`` and needs independent gradients. The pseudo-inverse drops eigenvalues
    below ``K * eps * lambda_max`` (``torch.linalg.pinv``'s default). When ``sum(v)``
    vanishes (``|sum(v)| <= eps * sum|v|``), the weights are zero, as in TorchJD.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` weights summing to 1 (or zeros, see above); uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.imtl_g(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.5923, 0.4077]

    References:
      Liu et al., *Towards Impartial Multi-task Learning*, ICLR 2021; TorchJD
      ``IMTLGWeighting``.
    """
    n = normalize(gramian, mask)
    g = n.gramian
    v, _ = pinv_solve(g, jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0)))
    v = jnp.where(n.active, v, 0.0)
    total = jnp.sum(v)
    significant = jnp.abs(total) > jnp.finfo(g.dtype).eps * jnp.sum(jnp.abs(v))
    return finish(divide_where(significant, v, total), n)


def imtl_g_rule() -> Rule:
    """IMTL-G: the aggregate has the same projection on every unit gradient.

    ``ao.gramian.imtl_g`` on ``G_b = D_b G D_b``; the loss weight is ``b_i w_i``. The method is
    invariant to each term's gradient scale, so the base weights change only the length of the
    aggregate, not its direction. IMTL-G gives a negative weight to a term whose gradient is
    much longer than another's and well aligned with it; the weights of this library are
    non-negative, and the guards clip such a weight to 0 (or to the lower bound): a departure
    from the method.

    Recommended guards (``ao.RECOMMENDED["imtl_g"]``): none; ``every=k`` amortizes the
    eigendecomposition, and bounds keep a weight from reaching 0.

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing IMTL-G's weights, needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.imtl_g_rule(), {"seg": 1.0, "depth": 1.0})

    References:
      See ``ao.gramian.imtl_g``.
    """
    return gramian_rule("imtl_g_rule", imtl_g_from_gramian)


@preset
def imtl_g_weights(base_weights: PyTree, **guards: Any) -> LossWeighting:
    """IMTL-G (Liu et al. 2021) as a weighting: equal projections on the unit gradients.

    See :func:`adaptive_optax.imtl_g_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["imtl_g"]`` (none: run it bare).

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.imtl_g_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.5923, 0.4077)

    References:
      See ``ao.gramian.imtl_g``.
    """
    return bare(imtl_g_rule(), base_weights, guards)
