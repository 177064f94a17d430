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
    temperature = validation.check_number("temperature", temperature, low=0, low_open=True)

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

    See :func:`adaptive_optax.dwa_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["dwa"]``.

    Args:
      temperature: ``T``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.dwa_weights({"a": 1.0, "b": 1.0})
      >>> state = weighting.init()
      >>> _, state = weighting.update({"a": 1.0, "b": 1.0}, state)
      >>> weights, state = weighting.update({"a": 0.5, "b": 1.0}, state)
      >>> round(float(weights["a"]), 4)  # 2 e^0.25 / (e^0.25 + e^0.5)
      0.8756
      >>> safe = ao.dwa_weights({"a": 1.0, "b": 1.0}, **ao.RECOMMENDED["dwa"])

    References:
      Liu, Johns & Davison, CVPR 2019, eq. 7.
    """
    return bare(dwa_rule(temperature=temperature), base_weights, guards)
