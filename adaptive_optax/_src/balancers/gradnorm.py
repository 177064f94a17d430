"""GradNorm (Chen et al., 2018): weights learned so that gradient norms follow training rates."""

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
    require,
    safe_divide,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


class GradNormState(NamedTuple):
    """State of :func:`gradnorm_rule`.

    Attributes:
      task_weights: ``(n,)`` the learned weights ``w_i``, summing to ``n``.
    """

    task_weights: chex.Array


def gradnorm_rule(*, alpha: float = 1.5, lr: float = 0.025) -> Rule:
    """Learned weights whose gradient norms track each term's relative training rate.

    With ``g_i`` the norm of the *unweighted* gradient of term ``i`` with respect to the
    shared weights ``W`` (the ``"norm"`` statistic; select ``W`` with the ``gradient_filter``
    of :func:`adaptive_optax.weight_gradients`), ``G_i = w_i g_i``, ``G_bar`` their mean,
    ``L~_i = L_i(t) / L_i(0)`` and ``r_i = L~_i / mean_j L~_j``, the paper minimizes::

        L_grad = sum_i | G_i - G_bar * r_i ** alpha |

    with the target ``G_bar r_i ** alpha`` held constant. Its gradient is taken analytically,
    ``dL_grad / dw_i = sign(G_i - G_bar r_i ** alpha) * g_i``, and one plain gradient step of
    size ``lr`` is made per ``update`` (the paper uses the network's optimizer); the weights
    are then clipped at 0 and renormalized to sum to the number of terms. The proposed weight
    is ``base_i * w_i``: with unit base weights, exactly the paper's; other base weights act as
    fixed prior factors (``G_i`` then uses ``base_i * w_i``).

    A term whose inputs are not finite keeps its ``w_i``; the others share the rest of the sum.

    Args:
      alpha: the asymmetry ``alpha`` (>= 0); 0 pulls all gradient norms to their mean.
      lr: step size of the weights' gradient descent (> 0).

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"norm"``, with state :class:`GradNormState`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.gradnorm_rule(alpha=1.0), {"seg": 1.0, "depth": 1.0})

    References:
      Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive
      Loss Balancing in Deep Multitask Networks", ICML 2018 (arXiv:1711.02257), section 3.
    """
    alpha = validation.check_number("alpha", alpha, low=0)
    lr = validation.check_number("lr", lr, low=0, low_open=True)

    def init(base_weights: chex.Array) -> GradNormState:
        return GradNormState(jnp.ones(base_weights.shape, float_dtype(base_weights)))

    def propose(signals: Signals, weights, base_weights, state: GradNormState):
        del weights
        finite = signals.finite
        w = state.task_weights
        dtype = w.dtype
        norms = require(signals, "norm", "gradnorm_rule").astype(dtype)
        losses = signals.losses.astype(dtype)
        base = base_weights.astype(dtype)
        initial = signals.first_loss.astype(dtype)  # L_i(0)
        n_finite = jnp.maximum(jnp.sum(finite), 1).astype(dtype)

        def finite_mean(x):
            return jnp.sum(jnp.where(finite, x, 0.0)) / n_finite

        grad_norms = base * w * norms  # G_i
        rate = finite_or(safe_divide(losses, initial), 1.0)  # L~_i
        inverse_rate = finite_or(safe_divide(rate, finite_mean(rate)), 1.0)  # r_i
        target = finite_mean(grad_norms) * jnp.maximum(inverse_rate, 0.0) ** alpha
        gradient = jnp.sign(grad_norms - target) * base * norms
        stepped = jnp.maximum(w - lr * gradient, 0.0)

        held = jnp.sum(jnp.where(finite, 0.0, w))
        total = jnp.sum(jnp.where(finite, stepped, 0.0))
        scale = (w.shape[0] - held) / jnp.where(total > 0, total, 1.0)
        renormalized = jnp.where(finite & (total > 0), stepped * scale, w)
        return base * renormalized, GradNormState(renormalized)

    return Rule(init=init, propose=propose, needs=("norm",))


@preset
def gradnorm_weights(
    base_weights: PyTree, *, alpha: float = 1.5, lr: float = 0.025, **guards: Any
) -> LossWeighting:
    """GradNorm (Chen et al. 2018) as a weighting: learned weights, renormalized to sum to n.

    See :func:`adaptive_optax.gradnorm_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["gradnorm"]``.

    Args:
      alpha: the asymmetry ``alpha``.
      lr: step size of the weights.

    Returns:
      A :class:`adaptive_optax.LossWeighting` whose ``update`` needs ``grad_norms`` per term.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.gradnorm_weights({"a": 1.0, "b": 1.0}, lr=0.1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_norms={"a": 3.0, "b": 1.0})
      >>> # G = (3, 1), target 2: w = (1 - 0.1 * 3, 1 + 0.1 * 1) = (0.7, 1.1), times 2 / 1.8
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.7778, 1.2222)
      >>> safe = ao.gradnorm_weights({"a": 1.0, "b": 1.0}, **ao.RECOMMENDED["gradnorm"])

    References:
      Chen et al., "GradNorm", ICML 2018, section 3.
    """
    return bare(gradnorm_rule(alpha=alpha, lr=lr), base_weights, guards)
