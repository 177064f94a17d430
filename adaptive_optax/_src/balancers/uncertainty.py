"""Uncertainty weighting (Kendall, Gal & Cipolla, 2018), in the log-variance parametrisation."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


class UncertaintyState(NamedTuple):
    """State of :func:`uncertainty_rule`.

    Attributes:
      log_variances: ``(n_terms,)`` the learned ``s_i = log sigma_i ** 2``.
    """

    log_variances: chex.Array


def uncertainty_rule(
    *, lr: float = 0.01, init_log_variance: float = 0.0, max_log_variance: float = 30.0
) -> Rule:
    """Weights ``exp(-s_i)`` learned with each term's homoscedastic uncertainty ``s_i``.

    The paper's regression objective (eq. 7) is ``sum_i L_i / (2 sigma_i ** 2) + log sigma_i``.
    With ``s_i = log sigma_i ** 2`` (the parametrisation the paper recommends for stability)
    and the common factor 1/2 dropped (it scales the total loss, not the balance)::

        L(s) = sum_i exp(-s_i) * L_i + s_i,     dL / ds_i = 1 - exp(-s_i) * L_i

    One plain gradient step of size ``lr`` on ``s`` is made per ``update`` from this analytic
    gradient (the paper trains ``s`` with the network's optimizer), and the proposed weight is
    ``base_i * exp(-s_i)``. At equilibrium ``exp(-s_i) = 1 / L_i``. ``s`` is clipped to
    ``[-max_log_variance, max_log_variance]`` so that ``exp(-s)`` stays finite: a loss at or
    below 0 (where the objective has no minimum and the weight would grow without end) then
    stops at ``exp(max_log_variance)``; bounds of :func:`adaptive_optax.guarded` stop it
    sooner. The regularizer ``s_i`` is not part of :func:`adaptive_optax.weighted_sum`: it
    does not depend on the model's parameters.

    Args:
      lr: step size of the log-variances (> 0).
      init_log_variance: initial ``s_i`` (finite); 0 starts at the base weights.
      max_log_variance: bound of ``|s_i|`` (> 0).

    Returns:
      A :class:`adaptive_optax.Rule` with state :class:`UncertaintyState`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.uncertainty_rule(lr=0.1), {"depth": 1.0, "seg": 1.0})

    References:
      Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
      Geometry and Semantics", CVPR 2018 (arXiv:1705.07115), section 3.2.
    """
    lr = validation.check_number("lr", lr, low=0, low_open=True)
    max_log_variance = validation.check_number(
        "max_log_variance", max_log_variance, low=0, low_open=True, static=True
    )
    init_log_variance = validation.check_number(
        "init_log_variance", init_log_variance, low=-max_log_variance, high=max_log_variance
    )

    def init(base_weights: chex.Array) -> UncertaintyState:
        shape, dtype = base_weights.shape, float_dtype(base_weights)
        return UncertaintyState(jnp.full(shape, init_log_variance, dtype))

    def propose(signals: Signals, weights, base_weights, state: UncertaintyState):
        del weights
        s = state.log_variances
        losses = signals.losses.astype(s.dtype)
        gradient = 1.0 - jnp.exp(-s) * losses
        stepped = jnp.clip(s - lr * gradient, -max_log_variance, max_log_variance)
        s = jnp.where(signals.finite & jnp.isfinite(stepped), stepped, s)
        return base_weights.astype(s.dtype) * jnp.exp(-s), UncertaintyState(s)

    return Rule(init=init, propose=propose)


@preset
def uncertainty_weights(
    base_weights: PyTree,
    *,
    lr: float = 0.01,
    init_log_variance: float = 0.0,
    max_log_variance: float = 30.0,
    **guards: Any,
) -> LossWeighting:
    """Uncertainty weighting (Kendall et al. 2018) as a weighting: ``w_i = base_i exp(-s_i)``.

    See :func:`adaptive_optax.uncertainty_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["uncertainty"]``.

    Args:
      lr: step size of the log-variances.
      init_log_variance: initial log-variance.
      max_log_variance: bound of the log-variances' magnitude.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.uncertainty_weights({"a": 1.0}, lr=0.5)
      >>> weights, state = weighting.update({"a": 3.0}, weighting.init())
      >>> round(float(weights["a"]), 4)  # s = 0 - 0.5 * (1 - 3) = 1
      0.3679
      >>> safe = ao.uncertainty_weights({"a": 1.0}, **ao.RECOMMENDED["uncertainty"])

    References:
      Kendall, Gal & Cipolla, CVPR 2018, section 3.2.
    """
    rule = uncertainty_rule(
        lr=lr, init_log_variance=init_log_variance, max_log_variance=max_log_variance
    )
    return bare(rule, base_weights, guards)
