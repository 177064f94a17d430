"""MetaBalance (He et al., 2022): auxiliary gradients pulled toward the main task's magnitude."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, main_index, preset, require
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.statistics import count_where, ema_update


class MetaBalanceState(NamedTuple):
    """State of :func:`metabalance_rule`.

    Attributes:
      count: int32 ``(n,)``, finite gradient norms seen.
      norms: ``(n,)`` the moving averages ``m_i`` of the gradient norms (bias-corrected).
    """

    count: chex.Array
    norms: chex.Array


def metabalance_rule(main: int = 0, *, relax_factor: float = 0.7, beta: float = 0.9) -> Rule:
    """Weights that bring each auxiliary gradient's magnitude toward the main task's.

    The authors' update, with ``m_i`` a moving average of the norm of term ``i``'s gradient
    (``m_i <- beta m_i + (1 - beta) |g_i|``) and ``r`` the relax factor::

        g_i <- r * (m_main / m_i) * g_i + (1 - r) * g_i

    is a weight ``lambda_i = r * m_main / m_i + 1 - r`` on each auxiliary term's gradient (1 on
    the main term's). The authors apply it to each parameter tensor of the shared layers; here
    it uses the ``"norm"`` statistic, one norm per term over the parameters that
    :func:`adaptive_optax.weight_gradients` reads (its ``gradient_filter`` selects the shared
    layers). The moving averages are bias-corrected, which changes no ratio while every term
    has the same count (the authors' zero-started averages have the same ratios). The proposed
    weight is ``base_i * lambda_i``. A term whose norm is 0 keeps ``lambda_i = 1`` (the
    authors' code divides by zero there); a term with a non-finite input keeps its average,
    and while the main term's is not finite the weights hold.

    Args:
      main: index of the main task in the order of the weights' leaves.
      relax_factor: ``r``, in ``[0, 1)``: 0 is the plain sum, values near 1 bring every
        auxiliary gradient to the main one's magnitude (the authors' default 0.7).
      beta: decay of the moving averages, in ``[0, 1)`` (the authors' 0.9).

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"norm"``, with state :class:`MetaBalanceState`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.metabalance_rule(main=0), {"buy": 1.0, "click": 1.0})

    References:
      He, Feng, Cheng, Lin, Xie & Zhou, "MetaBalance: Improving Multi-Task Recommendations via
      Adapting Gradient Magnitudes of Auxiliary Tasks", WWW 2022 (arXiv:2203.06801), code
      ``facebookresearch/MetaBalance`` (``metabalance.py``).
    """
    main = validation.check_number("main", main, low=0, integer=True)
    relax_factor = validation.check_number(
        "relax_factor", relax_factor, low=0, high=1, high_open=True
    )
    beta = validation.check_number("beta", beta, low=0, high=1, high_open=True)
    main = int(main)

    def init(base_weights: chex.Array) -> MetaBalanceState:
        shape = base_weights.shape
        return MetaBalanceState(
            jnp.zeros(shape, jnp.int32), jnp.zeros(shape, float_dtype(base_weights))
        )

    def propose(signals: Signals, weights, base_weights, state: MetaBalanceState):
        if main >= weights.shape[0]:
            raise ValueError(f"main must index a term (< {weights.shape[0]}), got {main}")
        norm = require(signals, "norm", "metabalance_rule").astype(state.norms.dtype)
        finite = signals.finite
        averaged = ema_update(state.norms, state.count, norm, beta)
        norms = jnp.where(finite, averaged, state.norms)
        count = count_where(state.count, finite)
        tiny = jnp.finfo(norms.dtype).tiny
        ratio = norms[main] / jnp.where(norms > tiny, norms, 1.0)
        lambdas = jnp.where(norms > tiny, relax_factor * ratio + (1 - relax_factor), 1.0)
        lambdas = jnp.where(jnp.arange(norms.shape[0]) == main, 1.0, lambdas)
        proposal = base_weights.astype(norms.dtype) * lambdas
        proposal = jnp.where(
            finite[main] & (count[main] > 0), proposal, weights.astype(norms.dtype)
        )
        return proposal, MetaBalanceState(count, norms)

    return Rule(init=init, propose=propose, needs=("norm",))


@preset
def metabalance_weights(
    base_weights: PyTree,
    *,
    main: str | int,
    relax_factor: float = 0.7,
    beta: float = 0.9,
    **guards: Any,
) -> LossWeighting:
    """MetaBalance (He et al. 2022) as a weighting: auxiliary terms scaled toward the main one.

    See :func:`adaptive_optax.metabalance_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["metabalance"]`` (none: run it bare).

    Args:
      main: the main task, by name (``"buy"``) or leaf index.
      relax_factor: ``r``.
      beta: decay of the moving averages of the norms.

    Returns:
      A :class:`adaptive_optax.LossWeighting` whose ``update`` needs ``grad_norms`` per term.

    Raises:
      ValueError: if ``main`` names no term.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.metabalance_weights({"buy": 1.0, "click": 1.0}, main="buy")
      >>> weights, state = weighting.update(
      ...     {"buy": 0.7, "click": 0.3}, weighting.init(), grad_norms={"buy": 2.0, "click": 8.0})
      >>> round(float(weights["click"]), 4)  # 0.7 * 2 / 8 + 0.3
      0.475

    References:
      He et al., WWW 2022 (arXiv:2203.06801), code ``facebookresearch/MetaBalance``.
    """
    rule = metabalance_rule(main_index(base_weights, main), relax_factor=relax_factor, beta=beta)
    return bare(rule, base_weights, guards)
