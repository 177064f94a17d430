"""Dynamic Weight Average (Liu, Johns & Davison, 2019)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import (
    bare,
    finite_or,
    float_dtype,
    preset,
    safe_divide,
    scaled_softmax,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


class DWAState(NamedTuple):
    """State of :func:`dwa_rule`.

    Attributes:
      ratios: ``(n,)`` the last loss ratios ``L_k(t) / L_k(t - 1)`` (1 until known).
    """

    ratios: chex.Array


def dwa_rule(*, temperature: float = 2.0) -> Rule:
    """Weights from the rate at which each loss falls, through a softmax of temperature ``T``.

    Eq. 7 of the paper, with ``K`` terms::

        r_k(t - 1) = L_k(t - 1) / L_k(t - 2)
        lambda_k(t) = K * exp(r_k(t - 1) / T) / sum_i exp(r_i(t - 1) / T)

    and ``r_k = 1`` until two losses are known. The update at step ``t`` sees ``L(t)`` and
    returns the weights of step ``t + 1``, so its ratio is ``L(t) / L(t - 1)``. The paper
    averages losses over an epoch; call ``update`` once per epoch with epoch-mean losses to
    reproduce it exactly, or once per step. The proposed weight is ``base_k * lambda_k``.
    Losses are assumed positive (the ratio's denominator is floored at the dtype's tiny); a
    term with a non-finite loss keeps its last ratio.

    Args:
      temperature: ``T`` (> 0); large values give equal weights.

    Returns:
      A :class:`adaptive_optax.Rule` with state :class:`DWAState`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.dwa_rule(temperature=2.0), {"seg": 1.0, "depth": 1.0})

    References:
      Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019
      (arXiv:1803.10704), eq. 7.
    """
    validation.check_number("temperature", temperature, low=0, low_open=True)

    def init(base_weights: chex.Array) -> DWAState:
        return DWAState(jnp.ones(base_weights.shape, float_dtype(base_weights)))

    def propose(signals: Signals, weights, base_weights, state: DWAState):
        del weights
        ratio = finite_or(safe_divide(signals.losses, signals.previous_loss), state.ratios)
        known = signals.finite & (signals.loss_count > 0)
        ratios = jnp.where(known, ratio.astype(state.ratios.dtype), state.ratios)
        lambdas = scaled_softmax(ratios / temperature)
        return base_weights.astype(lambdas.dtype) * lambdas, DWAState(ratios)

    return Rule(init=init, propose=propose)


@preset
def dwa_weights(base_weights: PyTree, *, temperature: float = 2.0, **guards: Any) -> LossWeighting:
    """Dynamic Weight Average (Liu et al. 2019) as a weighting.

    A preset: bare by default, any guard as a keyword (see *Presets* in the
    balancers guide). See :func:`adaptive_optax.dwa_rule` for the formula.

    Recommended guards: ``bounds=(0.2, 2.0), max_change=0.1, warmup_steps=100, cooling_period=10,
    spike_threshold=3.0``. Updated at every step, the ratios of minibatch losses are noisy; a low
    temperature turns that noise into weights that jump between 0 and ``n`` (the number of terms)
    times their base from one step to the next, and with SGD a term whose weight is ``n`` times its
    base takes ``n`` times its step. In the failure gym (``python -m benchmarks.failures``,
    ``results/failures.md``; ``temperature=0.05``, SGD) every bare run went non-finite and no
    guarded run did. The spike guard halves a weight whose loss or gradient norm jumps; it also
    fires on ordinary minibatch outliers, and in the gym's control (``temperature=2.0``, where the
    bare method works) these guards cost 12 % of held-out error, against 1 % with
    ``spike_threshold=None``: switch it off when training is stable and the losses are noisy.

    Args:
      base_weights: a pytree of positive floats, one per loss term (prior factors).
      temperature: ``T``.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.dwa_weights({"a": 1.0, "b": 1.0})
      >>> state = weighting.init()
      >>> _, state = weighting.update({"a": 1.0, "b": 1.0}, state)
      >>> weights, state = weighting.update({"a": 0.5, "b": 1.0}, state)
      >>> round(float(weights["a"]), 4)  # 2 e^0.25 / (e^0.25 + e^0.5)
      0.8756
      >>> safe = ao.dwa_weights({"a": 1.0, "b": 1.0}, bounds=(0.2, 2.0), max_change=0.1,
      ...                       warmup_steps=100, cooling_period=10, spike_threshold=3.0)

    References:
      Liu, Johns & Davison, CVPR 2019, eq. 7.
    """
    return bare(dwa_rule(temperature=temperature), base_weights, guards)
