"""GLS, the geometric loss strategy (Chennupati, Sistu, Yogamani & Rawashdeh, 2019)."""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


def gls_rule(*, min_loss: float = 1e-8) -> Rule:
    """Weights that make the weighted sum follow the geometric mean of the losses.

    GLS trains on the geometric mean of the ``K`` losses, ``G = (prod_i L_i) ** (1 / K)``,
    whose gradient is ``sum_i G / (K L_i) * grad L_i``: as weights on the terms, with the
    factor ``K`` taken out (so that equal losses give the base weights; a constant factor
    ``K`` on the total loss)::

        w_i = base_i * G / L_i = base_i * exp(mean_j log L_j - log L_i)

    computed in log space from this step's losses, and used at the next step (the authors
    differentiate ``G`` of the same step: the weights here lag one step, as every weighting of
    this library does). ``sum_i w_i L_i = K G`` with unit base weights. The authors' code
    (LibMTL ``GLS.py``) returns ``losses / (K prod(losses))`` as the weights it logs, which is
    not the gradient above; the loss it trains on is ``G`` itself, which this rule follows.

    The floor: a loss at or below ``min_loss`` (zero, negative) counts as ``min_loss``, where
    ``log 0`` would make ``G`` zero and the gradient NaN (LibMTL) or the input is refused
    (TorchJD). Such a term gets the largest weight, ``G / min_loss``: the geometric mean is
    most sensitive to its smallest loss. Choose ``min_loss`` near the smallest loss that
    still matters. A term whose loss is not finite enters ``G`` through its last finite loss.

    Recommended guards (``ao.RECOMMENDED["gls"]``): bounds, which cap the weight of a loss
    that approaches its floor; ``max_weight`` does too.

    Args:
      min_loss: the floor of the losses (> 0).

    Returns:
      A :class:`adaptive_optax.Rule` without state.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.gls_rule(min_loss=1e-6), {"seg": 1.0, "depth": 1.0})

    References:
      Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation
      and Geometric Loss Strategy for Multi-Task Learning", CVPR 2019 workshops
      (arXiv:1904.08492); LibMTL ``weighting/GLS.py``; TorchJD ``GeometricMean``.
    """
    min_loss = validation.check_number(
        "min_loss", min_loss, low=0, low_open=True, high=jnp.inf, high_open=True
    )

    def init(base_weights: chex.Array) -> tuple[()]:
        del base_weights
        return ()

    def propose(signals: Signals, weights, base_weights, state):
        dtype = float_dtype(base_weights)
        has_loss = signals.finite | (signals.loss_count > 0)
        losses = jnp.where(signals.finite, signals.losses, signals.previous_loss).astype(dtype)
        big = jnp.finfo(dtype).max
        log_losses = jnp.log(jnp.clip(losses, min_loss, big))
        count = jnp.maximum(jnp.sum(has_loss), 1).astype(dtype)
        log_mean = jnp.sum(jnp.where(has_loss, log_losses, 0.0)) / count
        # exp stays finite: the exponent is clipped below the log of the dtype's maximum
        exponent = jnp.minimum(log_mean - log_losses, jnp.log(big) - 1.0)
        proposal = base_weights.astype(dtype) * jnp.exp(exponent)
        return jnp.where(has_loss, proposal, weights.astype(dtype)), state

    return Rule(init=init, propose=propose)


@preset
def gls_weights(base_weights: PyTree, *, min_loss: float = 1e-8, **guards: Any) -> LossWeighting:
    """GLS (Chennupati et al. 2019) as a weighting: ``w_i = base_i * G / L_i``.

    See :func:`adaptive_optax.gls_rule` for the formula and the floor; recommended guards:
    ``ao.RECOMMENDED["gls"]``.

    Args:
      min_loss: the floor of the losses.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.gls_weights({"a": 1.0, "b": 1.0})
      >>> weights, state = weighting.update({"a": 1.0, "b": 4.0}, weighting.init())
      >>> float(weights["a"]), float(weights["b"])  # G = 2: (2 / 1, 2 / 4)
      (2.0, 0.5)
      >>> safe = ao.gls_weights({"a": 1.0, "b": 1.0}, **ao.RECOMMENDED["gls"])

    References:
      Chennupati et al., CVPR 2019 workshops (arXiv:1904.08492).
    """
    return bare(gls_rule(min_loss=min_loss), base_weights, guards)
