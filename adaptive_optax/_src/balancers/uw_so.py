"""UW-SO, soft optimal uncertainty weighting (Kirchdorfer et al., 2024)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset, scaled_softmax
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


def uw_so_rule(*, temperature: float = 1.0, eps: float = 1e-8) -> Rule:
    """Weights from a softmax over inverse losses: uncertainty weighting's optimum, softened.

    Uncertainty weighting (Kendall et al. 2018) learns weights that tend to ``1 / L_i``; UW-SO
    takes that optimum analytically at every step and softens it with a temperature::

        lambda_i = exp((1 / (L_i + eps)) / T) / sum_j exp((1 / (L_j + eps)) / T)

    as the authors' ``UW_SO.backward`` does (weights from the detached losses of the batch,
    summing to 1). The proposed weight is ``base_i * lambda_i``: with unit base weights, the
    authors' weights, whose total is 1 whatever the number of terms. Terms with a non-finite
    loss are left out of the softmax (their weight holds); infinite logits (a loss of
    ``-eps``) are clipped to the dtype's range.

    Args:
      temperature: ``T`` (> 0); small values give all the weight to the smallest loss,
        large values equal weights ``1 / n``.
      eps: added to each loss before inverting it (>= 0).

    Returns:
      A stateless :class:`adaptive_optax.Rule`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.uw_so_rule(temperature=2.0), {"seg": 1.0, "depth": 1.0})

    References:
      Kirchdorfer, Elich, Kutsche, Stuckenschmidt, Schott & Köhler, "Analytical
      Uncertainty-Based Loss Weighting in Multi-Task Learning", GCPR 2024 (arXiv:2408.07985),
      and the authors' ``UW_SO`` weighting (``src/weighting/UW_SO.py``).
    """
    temperature = validation.check_number("temperature", temperature, low=0, low_open=True)
    eps = validation.check_number("eps", eps, low=0)

    def propose(signals: Signals, weights, base_weights, rule_state):
        del weights
        dtype = float_dtype(signals.losses)
        inverse = 1.0 / (signals.losses.astype(dtype) + eps)
        logits = jnp.where(signals.finite, inverse / temperature, -jnp.inf)
        n = logits.shape[0]
        lambdas = scaled_softmax(logits) / n
        return base_weights.astype(dtype) * lambdas, rule_state

    return Rule(init=lambda base_weights: (), propose=propose)


@preset
def uw_so_weights(
    base_weights: PyTree, *, temperature: float = 1.0, eps: float = 1e-8, **guards: Any
) -> LossWeighting:
    """UW-SO (Kirchdorfer et al. 2024) as a weighting: a softmax over inverse losses.

    See :func:`adaptive_optax.uw_so_rule` for the formula and the weights' scale (they sum to one
    term's base weight); recommended guards: ``ao.RECOMMENDED["uw_so"]`` (none: run it bare).

    Args:
      temperature: ``T``.
      eps: added to each loss before inverting it.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.uw_so_weights({"a": 1.0, "b": 1.0}, temperature=1.0)
      >>> weights, state = weighting.update({"a": 0.5, "b": 1.0}, weighting.init())
      >>> round(float(weights["a"]), 4)  # e^2 / (e^2 + e^1)
      0.7311

    References:
      Kirchdorfer et al., GCPR 2024 (arXiv:2408.07985).
    """
    return bare(uw_so_rule(temperature=temperature, eps=eps), base_weights, guards)
