"""SoftAdapt (Heydari, Thompson & Mehmood, 2019): original, loss-weighted and normalized."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp
import numpy as np

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import (
    bare,
    float_dtype,
    preset,
    safe_divide,
    scaled_softmax,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals

VARIANTS = ("original", "loss_weighted", "normalized")
MAX_ORDER = 10


class SoftAdaptState(NamedTuple):
    """State of :func:`softadapt_rule`.

    Attributes:
      history: ``(order + 1, n)`` the last ``order + 1`` finite losses of each term, oldest
        first (a term's column moves on only at its finite steps).
      count: int32 ``(n,)`` how many losses ``history`` holds, at most ``order + 1``.
      slopes: ``(n,)`` the last rates of change ``s_i`` (0 until known).
      averages: ``(n,)`` the mean of the losses the last slope was taken over.
    """

    history: chex.Array
    count: chex.Array
    slopes: chex.Array
    averages: chex.Array


def forward_difference(order: int) -> np.ndarray:
    """The ``order + 1`` coefficients of the forward difference of accuracy ``order``.

    ``f'(x_0) ~ sum_k c_k f(x_0 + k)``, exact for polynomials of degree ``order``: (-1, 1),
    (-3/2, 2, -1/2), (-11/6, 3, -3/2, 1/3), (-25/12, 4, -3, 4/3, -1/4), ... (the authors'
    constants for orders 1, 3 and 5, and ``findiff``'s for the even orders). ``c_k`` is the
    derivative at 0 of the Lagrange polynomial of node ``k`` on the nodes ``0, ..., order``,
    computed in exact rational arithmetic.
    """
    coefficients = [Fraction(0)] * (order + 1)
    for k in range(1, order + 1):
        c = Fraction(1, k)
        for j in range(1, order + 1):
            if j != k:
                c *= Fraction(-j, k - j)
        coefficients[k] = c
    coefficients[0] = -sum(coefficients[1:], Fraction(0))
    return np.array([float(c) for c in coefficients])


def softadapt_rule(
    variant: str = "original", *, beta: float = 0.1, order: int = 4, eps: float = 1e-8
) -> Rule:
    """Weights from a softmax of each loss's rate of change.

    With ``s_i`` the rate of change of term ``i`` over its last ``order + 1`` losses (below),
    the variants of section 3.1 are::

        original       alpha_i = exp(beta s_i) / sum_j exp(beta s_j)
        loss_weighted  alpha_i = f_i exp(beta s_i) / sum_j f_j exp(beta s_j)
        normalized     alpha_i = exp(beta ns_i) / sum_j exp(beta ns_j),  ns_i = s_i / sum_j |s_j|

    where ``f_i`` is the mean of the losses the slope is taken over. ``beta > 0`` favors the
    term that decreases slowest. The paper's ``alpha`` sum to 1; the proposed weight is
    ``n * alpha_i * base_i``, so that equal slopes give the base weights (a constant factor
    ``n`` on the total loss).

    The slope, as the authors' code computes it: the forward finite difference of accuracy
    ``order`` over the last ``order + 1`` losses ``L(t - order), ..., L(t)``, oldest first
    (``forward_difference``; ``order=1`` is the paper's ``L(t) - L(t - 1)``). Their code
    takes the order from the number of losses it is given, and their README gives it five:
    fourth order, the default here. A forward difference estimates the slope at the window's
    oldest loss, from all of them. Until ``order + 1`` losses are known, the order is the
    number of losses known minus 1, and the slope is 0 with one loss. The last ``order + 1``
    losses are kept in the rule's state (the shared history holds only the previous one).

    Where we depart from the authors' code: the normalized variant divides by the L1 norm
    ``sum_j |s_j|``, so the normalized slopes lie in ``[-1, 1]``; their code divides by the
    signed sum ``sum_j s_j``, which flips every slope when the sum is negative (when the
    losses fall overall, the usual case, it gives the fastest-falling term the largest weight,
    the opposite of the variant's intent: their README's own normalized examples show it) and
    divides by 0 when slopes cancel. Their softmax adds 1e-8 to its denominator; we normalize
    exactly. A term with a non-finite loss keeps its history, last slope and mean.

    Recommended guards (``ao.RECOMMENDED["softadapt"]``): bounds near the base weight, a
    change limit, a cooling period and the spike guard: with the raw slopes of the original
    variant a term whose loss falls fast is switched almost off.

    Args:
      variant: ``"original"``, ``"loss_weighted"`` or ``"normalized"``.
      beta: the focus ``beta`` (any real; 0 gives equal weights).
      order: accuracy order of the finite difference, 1 to 10 (the authors' default: 4,
        over five losses).
      eps: floor of ``sum_j |s_j|`` in the normalized variant (> 0).

    Returns:
      A :class:`adaptive_optax.Rule` with state :class:`SoftAdaptState`.

    Raises:
      ValueError: for an unknown variant.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.softadapt_rule("normalized", beta=0.1), {"a": 1.0, "b": 1.0})

    References:
      Heydari, Thompson & Mehmood, "SoftAdapt: Techniques for Adaptive Loss Weighting of Neural
      Networks with Multi-Part Loss Functions", 2019 (arXiv:1912.12355), section 3.1; code:
      github.com/dr-aheydari/SoftAdapt (``utilities/_finite_difference.py``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    beta = validation.check_number(
        "beta", beta, low=-jnp.inf, high=jnp.inf, low_open=True, high_open=True
    )
    order = validation.check_number(
        "order", order, low=1, high=MAX_ORDER, integer=True, static=True
    )
    eps = validation.check_number("eps", eps, low=0, low_open=True)
    order = int(order)
    size = order + 1
    # Row p: the slope (and the mean) over the last p + 1 losses of the history; row 0 unused.
    differences = np.zeros((size, size))
    means = np.zeros((size, size))
    for p in range(size):
        differences[p, size - p - 1 :] = forward_difference(p) if p else 0.0
        means[p, size - p - 1 :] = 1.0 / (p + 1)

    def init(base_weights: chex.Array) -> SoftAdaptState:
        dtype = float_dtype(base_weights)
        zeros = jnp.zeros(base_weights.shape, dtype)
        return SoftAdaptState(
            history=jnp.zeros((size, *base_weights.shape), dtype),
            count=jnp.zeros(base_weights.shape, jnp.int32),
            slopes=zeros,
            averages=zeros,
        )

    def propose(signals: Signals, weights, base_weights, state: SoftAdaptState):
        del weights
        dtype = state.slopes.dtype
        finite = signals.finite
        losses = signals.losses.astype(dtype)
        shifted = jnp.concatenate([state.history[1:], losses[None]])
        history = jnp.where(finite[None], shifted, state.history)
        count = jnp.where(finite, jnp.minimum(state.count + 1, size), state.count)
        # elementwise products, not a matmul: exact on every backend
        row = jnp.maximum(count - 1, 0)[None]
        slope = jnp.sum(jnp.asarray(differences, dtype)[:, :, None] * history[None], axis=1)
        average = jnp.sum(jnp.asarray(means, dtype)[:, :, None] * history[None], axis=1)
        slope = jnp.take_along_axis(slope, row, axis=0)[0]
        average = jnp.take_along_axis(average, row, axis=0)[0]
        slopes = jnp.where(finite & (count > 1) & jnp.isfinite(slope), slope, state.slopes)
        averages = jnp.where(finite & jnp.isfinite(average), average, state.averages)
        new_state = SoftAdaptState(history, count, slopes, averages)
        if variant == "normalized":
            total = jnp.sum(jnp.abs(slopes))
            slopes = safe_divide(slopes, jnp.maximum(total, eps))
        numerator = averages if variant == "loss_weighted" else None
        lambdas = scaled_softmax(beta * slopes, numerator)
        return base_weights.astype(lambdas.dtype) * lambdas, new_state

    return Rule(init=init, propose=propose)


@preset
def softadapt_weights(
    base_weights: PyTree,
    *,
    variant: str = "original",
    beta: float = 0.1,
    order: int = 4,
    eps: float = 1e-8,
    **guards: Any,
) -> LossWeighting:
    """SoftAdapt (Heydari et al. 2019) as a weighting, in any of its three variants.

    See :func:`adaptive_optax.softadapt_rule` for the formulas and where we depart from the
    authors' code; recommended guards: ``ao.RECOMMENDED["softadapt"]``.

    Args:
      variant: ``"original"``, ``"loss_weighted"`` or ``"normalized"``.
      beta: the focus ``beta``.
      order: accuracy order of the finite difference of the slopes, 1 to 10 (default 4, the
        authors': five losses).
      eps: floor of the slopes' L1 norm in the normalized variant.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.softadapt_weights({"a": 1.0, "b": 1.0}, beta=1.0)
      >>> state = weighting.init()
      >>> _, state = weighting.update({"a": 1.0, "b": 1.0}, state)
      >>> weights, state = weighting.update({"a": 2.0, "b": 1.0}, state)
      >>> round(float(weights["a"]), 4)  # two losses: first order, 2 e / (e + 1)
      1.4621
      >>> weights, state = weighting.update({"a": 2.0, "b": 1.5}, state)
      >>> # three: second order, s = -3/2 L(t-2) + 2 L(t-1) - 1/2 L(t) = (1.5, -0.25)
      >>> round(float(weights["a"]), 4)  # 2 e^1.5 / (e^1.5 + e^-0.25)
      1.7039
      >>> safe = ao.softadapt_weights({"a": 1.0, "b": 1.0}, **ao.RECOMMENDED["softadapt"])

    References:
      Heydari, Thompson & Mehmood, 2019 (arXiv:1912.12355), section 3.1.
    """
    return bare(softadapt_rule(variant, beta=beta, order=order, eps=eps), base_weights, guards)
