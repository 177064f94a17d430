"""Aligned-MTL: the gradients' principal components aligned; solver, rule and preset."""

from __future__ import annotations

from typing import Any, Literal

import jax.numpy as jnp

from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    Array,
    finish,
    gramian_rule,
    normalize,
    preference,
    spectrum,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule

ScaleMode = Literal["min", "median", "rmse"]
#: The default scale: the smallest kept eigenvalue, the authors' choice.
SCALE_MODE: ScaleMode = "min"


def _check_scale_mode(scale_mode) -> None:
    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")


def _aligned_scale(lam: Array, keep: Array, mode: ScaleMode) -> Array:
    """Aligned-MTL's scale among the kept eigenvalues (``lam`` ascending, kept at the top)."""
    rank = jnp.sum(keep)
    if mode == "min":
        return jnp.min(jnp.where(keep, lam, jnp.inf))
    if mode == "median":  # torch.median: the lower median
        return lam[lam.shape[0] - rank + (rank - 1) // 2]
    return jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1).astype(lam.dtype)


def aligned_mtl_from_gramian(
    gramian, *, pref_vector=None, scale_mode: ScaleMode = SCALE_MODE, mask=None
) -> Array:
    """Aligned-MTL: align the gradients' principal components, then combine them.

    With ``G = V diag(lambda) V^T`` restricted to the ``r`` eigenvalues above
    ``K * eps * lambda_max``::

        B = sqrt(s) V diag(lambda)^(-1/2) V^T,    w = B u

    where ``u = pref_vector`` (default ``1/K``) and ``s`` is the smallest kept eigenvalue
    (``"min"``, default), their lower median (``"median"``) or their mean (``"rmse"``), as in
    TorchJD. For rank 0, ``B = I``. The authors' code (LibMTL) uses ``"min"`` and sums the
    columns of ``B`` (``u = 1``), which only scales the weights by ``K``.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` preference weights; default ``1/K`` each.
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"`` (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` Aligned-MTL weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.aligned_mtl(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.5591, 0.4083]

    References:
      Senushkin et al., *Independent Component Alignment for Multi-Task Learning*, CVPR 2023;
      TorchJD ``AlignedMTLWeighting``.
    """
    _check_scale_mode(scale_mode)
    n = normalize(gramian, mask)
    pref = preference(pref_vector, n, mean=True)
    lam, vec, keep = spectrum(n.gramian)
    inverse_root = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    scale = _aligned_scale(lam, keep, scale_mode)
    balance = jnp.sqrt(jnp.maximum(scale, 0.0)) * (vec * inverse_root) @ vec.T
    return finish(jnp.where(jnp.any(keep), balance @ pref, pref), n)


def aligned_mtl_rule(*, scale_mode: ScaleMode = SCALE_MODE) -> Rule:
    """Aligned-MTL: align the principal components of the gradients, then combine them.

    ``ao.gramian.aligned_mtl`` on ``G_b = D_b G D_b`` with the preference ``1 / k`` (``k``
    finite terms); the loss weight is ``b_i w_i``. A negative ``w_i`` is clipped to 0 by the
    guards (the library's weights are non-negative), a departure from the method.

    Recommended guards (``ao.RECOMMENDED["aligned_mtl"]``): none; options as for
    :func:`adaptive_optax.imtl_g_rule`.

    Args:
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing Aligned-MTL's weights, needing
      ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.aligned_mtl_rule(), {"seg": 1.0, "depth": 1.0})

    References:
      See ``ao.gramian.aligned_mtl``.
    """
    _check_scale_mode(scale_mode)
    return gramian_rule("aligned_mtl_rule", aligned_mtl_from_gramian, scale_mode=scale_mode)


@preset
def aligned_mtl_weights(
    base_weights: PyTree,
    *,
    scale_mode: ScaleMode = SCALE_MODE,
    **guards: Any,
) -> LossWeighting:
    """Aligned-MTL (Senushkin et al. 2023) as a weighting: aligned principal components.

    See :func:`adaptive_optax.aligned_mtl_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["aligned_mtl"]`` (none: run it bare).

    Args:
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.aligned_mtl_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.5591, 0.4083)

    References:
      See ``ao.gramian.aligned_mtl``.
    """
    return bare(aligned_mtl_rule(scale_mode=scale_mode), base_weights, guards)
