"""Gradient-share balancing, as the loss balancer of EnCodec (Defossez et al., 2022)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset, require
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.statistics import count_where, ema_update


class EncodecState(NamedTuple):
    """State of :func:`encodec_rule`.

    Attributes:
      norm_mean: ``(n_terms,)`` bias-corrected EMA of each term's gradient norm.
      count: ``(n_terms,)`` int32, finite gradient norms folded in.
    """

    norm_mean: chex.Array
    count: chex.Array


def encodec_rule(*, total_norm: float = 1.0, ema_decay: float = 0.999, eps: float = 1e-12) -> Rule:
    """Weights that give each term a fixed share of the gradient norm.

    With ``lambda_i`` the base weights, ``g_i`` the gradient of term ``i`` and
    ``<|g_i|>_beta`` the bias-corrected EMA of its norm (decay ``beta``), the paper (eq. 4)
    rescales each term's gradient to ``R * lambda_i / sum_j lambda_j * g_i / <|g_i|>_beta``,
    so term ``i`` carries the share ``lambda_i / sum_j lambda_j`` of a total norm ``R``. As a
    loss weight::

        w_i = R * (lambda_i / sum_j lambda_j) / (eps + <|g_i|>_beta)

    The norms are what ``update`` receives as ``grad_norms`` (one per term); the paper takes
    them with respect to the model output (the authors' code averages them per batch item):
    choose that tensor with the ``gradient_filter`` of :func:`adaptive_optax.weight_gradients`
    or pass your own norms. The EMA includes this step's norm, as in the authors' code; the
    weights weight the next step's losses.

    Args:
      total_norm: the reference norm ``R`` (> 0).
      ema_decay: ``beta``, in ``[0, 1)``.
      eps: added to the averaged norm (>= 0), as in the authors' code.

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"norm"``, with state :class:`EncodecState`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.encodec_rule(), {"mel": 2.0, "adv": 1.0}, bounds=None)

    References:
      Defossez, Copet, Synnaeve & Adi, "High Fidelity Neural Audio Compression", 2022
      (arXiv:2210.13438), section 3.4; ``encodec/balancer.py`` in facebookresearch/encodec.
    """
    total_norm = validation.check_number("total_norm", total_norm, low=0, low_open=True)
    ema_decay = validation.check_number("ema_decay", ema_decay, low=0, high=1, high_open=True)
    eps = validation.check_number("eps", eps, low=0)

    def init(base_weights: chex.Array) -> EncodecState:
        dtype = float_dtype(base_weights)
        n = base_weights.shape[0]
        return EncodecState(jnp.zeros((n,), dtype), jnp.zeros((n,), jnp.int32))

    def propose(signals: Signals, weights, base_weights, state: EncodecState):
        del weights
        norms = require(signals, "norm", "encodec_rule").astype(state.norm_mean.dtype)
        mean = ema_update(state.norm_mean, state.count, norms, ema_decay)
        mean = jnp.where(signals.finite, mean, state.norm_mean)
        count = count_where(state.count, signals.finite)
        base = base_weights.astype(mean.dtype)
        share = base / jnp.sum(base)
        proposal = total_norm * share / (eps + mean)
        return proposal, EncodecState(mean, count)

    return Rule(init=init, propose=propose, needs=("norm",))


@preset
def encodec_weights(
    base_weights: PyTree,
    *,
    total_norm: float = 1.0,
    ema_decay: float = 0.999,
    eps: float = 1e-12,
    **guards: Any,
) -> LossWeighting:
    """EnCodec's loss balancer as a weighting: each term gets its share of the gradient norm.

    See :func:`adaptive_optax.encodec_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["encodec"]``.

    Args:
      base_weights: the target shares ``lambda_i`` (a pytree of positive floats).
      total_norm: the reference norm ``R``.
      ema_decay: decay of the gradient-norm EMA.
      eps: added to the averaged norm.

    Returns:
      A :class:`adaptive_optax.LossWeighting` whose ``update`` needs ``grad_norms`` per term.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.encodec_weights({"l1": 1.0, "adv": 3.0})
      >>> weights, state = weighting.update(
      ...     {"l1": 0.5, "adv": 2.0}, weighting.init(), grad_norms={"l1": 2.0, "adv": 0.5})
      >>> round(float(weights["l1"]), 3), round(float(weights["adv"]), 3)
      (0.125, 1.5)
      >>> safe = ao.encodec_weights({"l1": 1.0, "adv": 3.0}, **ao.RECOMMENDED["encodec"])

    References:
      Defossez et al., "High Fidelity Neural Audio Compression", 2022, section 3.4.
    """
    rule = encodec_rule(total_norm=total_norm, ema_decay=ema_decay, eps=eps)
    return bare(rule, base_weights, guards)
