"""IMTL-L, the loss balance of impartial multi-task learning (Liu et al., 2021)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


class IMTLLState(NamedTuple):
    """State of :func:`imtl_l_rule`.

    Attributes:
      log_scales: ``(n,)`` the learned scales ``s_i``; the weight factor is ``exp(s_i)``.
    """

    log_scales: chex.Array


def imtl_l_rule(
    *, lr: float = 0.01, init_log_scale: float = 0.0, max_log_scale: float = 30.0
) -> Rule:
    """Weights ``exp(s_i)`` learned so that every scaled loss tends to 1.

    IMTL-L scales each raw loss by ``exp(s_i)`` and adds the regularizer ``-s_i``::

        L(s) = sum_i exp(s_i) * L_i - s_i,      dL / ds_i = exp(s_i) * L_i - 1

    so that at equilibrium ``exp(s_i) L_i = 1`` for every term, whatever its kind (the
    "impartial" balance of the paper). One plain gradient step of size ``lr`` on ``s`` is made
    per ``update`` from this analytic gradient (the authors train ``s`` with the network's
    optimizer), and the proposed weight is ``base_i * exp(s_i)``. ``s`` is clipped to
    ``[-max_log_scale, max_log_scale]`` so that ``exp(s)`` stays finite: a loss at or below 0
    (where the objective has no minimum) drives the weight to ``exp(max_log_scale)``; bounds of
    :func:`adaptive_optax.guarded` stop it sooner. A term whose loss is not finite keeps its
    ``s_i``. The regularizer ``-s_i`` is not part of :func:`adaptive_optax.weighted_sum`: it
    does not depend on the model's parameters.

    Relation to uncertainty weighting: IMTL-L at ``s`` is twice Kendall et al.'s regression
    objective ``L_i / (2 sigma_i^2) + log sigma_i`` at ``log sigma_i^2 = -s_i`` (TorchJD's
    ``IMTLL`` documents the same identity); both have the equilibrium weight ``1 / L_i`` on
    the loss up to that factor 2. :func:`adaptive_optax.uncertainty_rule` drops Kendall's
    factor 1/2, so in this library the two are one weighting with ``s -> -s``: the same
    ``lr``, initial value and clip give the same weights at every step, to float rounding
    (``init_log_scale = -init_log_variance``). Use whichever parametrisation your paper or
    checkpoint uses.

    Recommended guards (``ao.RECOMMENDED["imtl_l"]``): bounds, which stop the weight of a loss
    near 0 from growing to ``exp(max_log_scale)``; ``max_weight`` does too.

    Args:
      lr: step size of the scales (> 0).
      init_log_scale: initial ``s_i`` (finite); 0 starts at the base weights.
      max_log_scale: bound of ``|s_i|`` (> 0).

    Returns:
      A :class:`adaptive_optax.Rule` with state ``IMTLLState``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.imtl_l_rule(lr=0.1), {"seg": 1.0, "depth": 1.0})

    References:
      Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
      ICLR 2021 (IMTL-L); LibMTL ``weighting/IMTL.py`` (``loss_scale.exp() * losses -
      loss_scale``).
    """
    lr = validation.check_number("lr", lr, low=0, low_open=True)
    max_log_scale = validation.check_number(
        "max_log_scale", max_log_scale, low=0, low_open=True, static=True
    )
    init_log_scale = validation.check_number(
        "init_log_scale", init_log_scale, low=-max_log_scale, high=max_log_scale
    )

    def init(base_weights: chex.Array) -> IMTLLState:
        shape, dtype = base_weights.shape, float_dtype(base_weights)
        return IMTLLState(jnp.full(shape, init_log_scale, dtype))

    def propose(signals: Signals, weights, base_weights, state: IMTLLState):
        del weights
        s = state.log_scales
        losses = signals.losses.astype(s.dtype)
        gradient = jnp.exp(s) * losses - 1.0
        stepped = jnp.clip(s - lr * gradient, -max_log_scale, max_log_scale)
        s = jnp.where(signals.finite & jnp.isfinite(stepped), stepped, s)
        return base_weights.astype(s.dtype) * jnp.exp(s), IMTLLState(s)

    return Rule(init=init, propose=propose)


@preset
def imtl_l_weights(
    base_weights: PyTree,
    *,
    lr: float = 0.01,
    init_log_scale: float = 0.0,
    max_log_scale: float = 30.0,
    **guards: Any,
) -> LossWeighting:
    """IMTL-L (Liu et al. 2021) as a weighting: ``w_i = base_i exp(s_i)``.

    See :func:`adaptive_optax.imtl_l_rule` for the formula and its relation to uncertainty
    weighting; recommended guards: ``ao.RECOMMENDED["imtl_l"]``.

    Args:
      lr: step size of the scales.
      init_log_scale: initial scale ``s``.
      max_log_scale: bound of the scales' magnitude.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.imtl_l_weights({"a": 1.0}, lr=0.5)
      >>> weights, state = weighting.update({"a": 3.0}, weighting.init())
      >>> round(float(weights["a"]), 4)  # s = 0 - 0.5 * (3 - 1) = -1
      0.3679
      >>> safe = ao.imtl_l_weights({"a": 1.0}, **ao.RECOMMENDED["imtl_l"])

    References:
      Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """
    rule = imtl_l_rule(lr=lr, init_log_scale=init_log_scale, max_log_scale=max_log_scale)
    return bare(rule, base_weights, guards)
