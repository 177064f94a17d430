"""SoftAdapt (Heydari, Thompson & Mehmood, 2019): original, loss-weighted and normalised."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from adaptive_optax._src import config
from adaptive_optax._src.balancers._common import bare, float_dtype, safe_divide, scaled_softmax
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals

VARIANTS = ("original", "loss_weighted", "normalized")


class SoftAdaptState(NamedTuple):
    """State of :func:`softadapt_rule`.

    Attributes:
      slopes: ``(n,)`` the last rates of change ``s_i`` (0 until known).
      averages: ``(n,)`` the mean of the losses the last slope was taken over.
    """

    slopes: chex.Array
    averages: chex.Array


def softadapt_rule(variant: str = "original", *, beta: float = 0.1, eps: float = 1e-8) -> Rule:
    """Weights from a softmax of each loss's rate of change.

    With ``s_i = L_i(t) - L_i(t - 1)`` the rate of change of term ``i`` (section 3.1, a first
    order finite difference; 0 until two losses are known), the variants of section 3.1 are::

        original       alpha_i = exp(beta s_i) / sum_j exp(beta s_j)
        loss_weighted  alpha_i = f_i exp(beta s_i) / sum_j f_j exp(beta s_j)
        normalized     alpha_i = exp(beta ns_i) / sum_j exp(beta ns_j),  ns_i = s_i / sum_j |s_j|

    where ``f_i`` is the mean of the losses the slope is taken over (``(L_i(t) + L_i(t-1))/2``).
    ``beta > 0`` favours the term that decreases slowest. The paper's ``alpha`` sum to 1; the
    proposed weight is ``n * alpha_i * base_i``, so that equal slopes give the base weights
    (a constant factor ``n`` on the total loss). The normalised variant divides by the L1 norm
    ``sum_j |s_j|``, so the normalised slopes lie in ``[-1, 1]``; the authors' code divides by the
    signed sum ``sum_j s_j``, which flips every slope when the sum is negative and divides by 0
    when slopes cancel, so we do not follow it there. The code's slopes also use higher-order
    finite differences over several past losses; we take the paper's first difference. A term
    with a non-finite loss keeps its last slope and mean.

    Args:
      variant: ``"original"``, ``"loss_weighted"`` or ``"normalized"``.
      beta: the focus ``beta`` (any real; 0 gives equal weights).
      eps: floor of ``sum_j |s_j|`` in the normalised variant (> 0).

    Returns:
      A :class:`adaptive_optax.Rule` with state :class:`SoftAdaptState`.

    Raises:
      ValueError: for an unknown variant.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.softadapt_rule("normalized", beta=0.1), {"a": 1.0, "b": 1.0})

    References:
      Heydari, Thompson & Mehmood, "SoftAdapt: Techniques for Adaptive Loss Weighting of Neural
      Networks with Multi-Part Loss Functions", 2019 (arXiv:1912.12355), section 3.1.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    config.check_number("beta", beta, low=-jnp.inf, high=jnp.inf, low_open=True, high_open=True)
    config.check_number("eps", eps, low=0, low_open=True)

    def init(base_weights: chex.Array) -> SoftAdaptState:
        zeros = jnp.zeros(base_weights.shape, float_dtype(base_weights))
        return SoftAdaptState(zeros, zeros)

    def propose(signals: Signals, weights, base_weights, state: SoftAdaptState):
        del weights
        dtype = state.slopes.dtype
        losses = signals.losses.astype(dtype)
        previous = signals.previous_loss.astype(dtype)
        known = signals.finite & (signals.loss_count > 0)
        slope = losses - previous
        average = 0.5 * losses + 0.5 * previous
        slopes = jnp.where(known & jnp.isfinite(slope), slope, state.slopes)
        averages = jnp.where(signals.finite & ~known, losses, state.averages)
        averages = jnp.where(known & jnp.isfinite(average), average, averages)
        new_state = SoftAdaptState(slopes=slopes, averages=averages)
        if variant == "normalized":
            total = jnp.sum(jnp.abs(slopes))
            slopes = safe_divide(slopes, jnp.maximum(total, eps))
        numerator = averages if variant == "loss_weighted" else None
        lambdas = scaled_softmax(beta * slopes, numerator)
        return base_weights.astype(lambdas.dtype) * lambdas, new_state

    return Rule(init=init, propose=propose)


def softadapt_weights(
    base_weights: PyTree,
    *,
    variant: str = "original",
    beta: float = 0.1,
    eps: float = 1e-8,
    **guards: Any,
) -> LossWeighting:
    """SoftAdapt (Heydari et al. 2019) as a weighting, in any of its three variants.

    Runs bare by default (no warmup, cooling, stability gate, rollback, change limit or bounds;
    non-finite inputs are still skipped); any setting of :func:`adaptive_optax.guarded` can be
    passed through ``guards``. See :func:`adaptive_optax.softadapt_rule` for the formulas.

    Recommended guards: ``bounds=(0.2, 2.0), max_change=0.1, warmup_steps=100, cooling_period=10,
    spike_threshold=3.0``. Slopes of minibatch losses are noisy; a large ``beta`` turns that noise
    into weights that jump between 0 and ``n`` (the number of terms) times their base from one step
    to the next, and with SGD a term whose weight is ``n`` times its base takes ``n`` times its
    step. In the failure gym (``python -m benchmarks.failures``, ``results/failures.md``;
    ``beta=100``, SGD) every bare run went non-finite and no guarded run did. These guards do not
    rescue a learning rate past the stable edge (the gym's ``learning rate past the edge``: 8 of 10
    guarded runs went non-finite); a sensitive spike guard with deep cuts does, at twice the error
    where nothing fails: lower the learning rate instead. The spike guard halves a weight whose loss
    or gradient norm jumps; it also fires on ordinary minibatch outliers, and in the gym's control
    (DWA at its paper's temperature, where the bare method works) these guards cost 12 % of held-out
    error, against 1 % with ``spike_threshold=None``: switch it off when training is stable and the
    losses are noisy.

    Args:
      base_weights: a pytree of positive floats, one per loss term (prior factors).
      variant: ``"original"``, ``"loss_weighted"`` or ``"normalized"``.
      beta: the focus ``beta``.
      eps: floor of the slopes' L1 norm in the normalised variant.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.softadapt_weights({"a": 1.0, "b": 1.0}, beta=1.0)
      >>> state = weighting.init()
      >>> _, state = weighting.update({"a": 1.0, "b": 1.0}, state)
      >>> weights, state = weighting.update({"a": 2.0, "b": 1.0}, state)
      >>> round(float(weights["a"]), 4)  # 2 e / (e + 1)
      1.4621
      >>> safe = ao.softadapt_weights({"a": 1.0, "b": 1.0}, bounds=(0.2, 2.0), max_change=0.1,
      ...                             warmup_steps=100, cooling_period=10, spike_threshold=3.0)

    References:
      Heydari, Thompson & Mehmood, 2019 (arXiv:1912.12355), section 3.1.
    """
    return bare(softadapt_rule(variant, beta=beta, eps=eps), base_weights, guards)
