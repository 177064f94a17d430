"""ConFIG: the direction equally aligned with every unit gradient; solver, rule and preset."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    Array,
    divide_or_zero,
    finish,
    gramian_rule,
    normalize,
    pinv_solve,
    preference,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule


def config_from_gramian(gramian, *, pref_vector=None, mask=None) -> Array:
    """ConFIG: the direction with equal-weighted alignment to every unit gradient.

    With ``U = D^(-1/2) J`` the unit gradients (``D = diag(G)``; zero gradients give zero rows)
    and ``u = pref_vector`` (default ones), ConFIG takes ``d = pinv(U) u`` and returns
    ``(sum_i g_i . d_hat) d_hat``. Since ``pinv(U) = U^T pinv(U U^T)``, ``d = J^T v`` with::

        v = D^(-1/2) pinv(D^(-1/2) G D^(-1/2)) u,    w = v (1^T G v) / (v^T G v)

    so the weights need only the Gramian. Departure: the pseudo-inverse of the unit Gramian
    drops its eigenvalues below ``K * eps * lambda_max``, i.e. singular values of ``U`` below
    about ``sqrt(K * eps)`` of the largest, where the authors (``lstsq``) and TorchJD
    (``pinv``) act on ``U`` itself; they agree unless ``U`` is that ill-conditioned. When
    ``pinv(U) u`` vanishes (``u`` has no component above ``eps`` in the range of the unit
    Gramian, e.g. two opposite gradients) or ``v^T G v = 0``, the weights are zero, as
    TorchJD's normalization of a (numerically) zero direction gives.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` target alignments; default ones (their scale does not matter).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` ConFIG weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.config(J @ J.T)
      >>> np.asarray(w @ J, np.float64).round(4).tolist()
      [0.1588, 2.0706, 2.0706]

    References:
      Liu et al., *ConFIG: Towards Conflict-free Training of Physics Informed Neural
      Networks*, ICLR 2025 (https://arxiv.org/abs/2408.11104); TorchJD ``ConFIG``.
    """
    n = normalize(gramian, mask)
    g = n.gramian
    pref = preference(pref_vector, n, mean=False)
    diag = jnp.diag(g)
    inverse_norm = jnp.where(diag > 0, 1.0 / jnp.sqrt(jnp.where(diag > 0, diag, 1.0)), 0.0)
    units = g * inverse_norm[:, None] * inverse_norm[None, :]
    coefficients, resolved = pinv_solve(units, pref)
    v = inverse_norm * coefficients
    gv = g @ v
    weights = jnp.where(resolved, divide_or_zero(jnp.sum(gv), v @ gv) * v, 0.0)
    return finish(weights, n)


def config_rule() -> Rule:
    """ConFIG: the direction equally aligned with every unit gradient.

    ``ao.gramian.config`` on ``G_b = D_b G D_b`` of the ``k`` finite terms; the loss weight is
    ``b_i w_i``. The direction does not depend on the gradients' scales, so the base weights set
    only its length: the base-weighted sum of the projections. A negative weight (possible for
    three terms or more) is clipped to 0 by the guards, a departure from the method.

    Recommended guards (``ao.RECOMMENDED["config"]``): none; options as for
    :func:`adaptive_optax.imtl_g_rule`.

    Returns:
      A stateless :class:`adaptive_optax.Rule` proposing ConFIG's weights, needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.config_rule(), {"pde": 1.0, "bc": 1.0})

    References:
      See ``ao.gramian.config``.
    """
    return gramian_rule("config_rule", config_from_gramian)


@preset
def config_weights(base_weights: PyTree, **guards: Any) -> LossWeighting:
    """ConFIG (Liu et al. 2025) as a weighting: conflict-free, equally aligned updates.

    See :func:`adaptive_optax.config_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["config"]`` (none: run it bare).

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.config_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> # the aggregate (-4 w_a + 6 w_b, w_a + w_b, w_a + w_b): TorchJD's (0.1588, 2.0706, ...)
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (1.2265, 0.8441)

    References:
      See ``ao.gramian.config``.
    """
    return bare(config_rule(), base_weights, guards)
