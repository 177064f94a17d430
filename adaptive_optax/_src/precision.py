"""Mixed precision: a weighting that leaves the loss scaler's overflows to the loss scaler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src.base import AdaptiveState, LossWeighting, PyTree


def loss_scaled(weighting: LossWeighting) -> LossWeighting:
    """A weighting for float16 training with dynamic loss scaling.

    With float16 activations the loss is multiplied by a loss scale before the backward pass
    (``flax.training.dynamic_scale.DynamicScale``, as Flax's ImageNet example does), and a
    scale that is too large makes the gradients overflow: the scaler then lowers its scale and
    the step is dropped. Such a step is the scaler's business, not a fault of a term. The
    returned ``update`` takes the scaler's verdict as ``grads_finite=`` and, on a step whose
    losses are all finite but whose gradients are not, returns the weights and the state
    unchanged: nothing is counted as non-finite, nothing is undone, no spike is seen, and
    ``step`` does not advance (as the optimizer's count under the scaler does not). A
    scheduled term that is absent (its base 0) is not read: a NaN fed for it is no loss fault.
    Every other step is the weighting's ``update``, with the unscaled losses: give it the
    per-term losses, not the scaled total. On a step where a loss is not finite (a term's fault) and
    the gradients are not either, the gradient statistics are not passed on (when the rule
    can do without them), so that only the term whose loss went bad is counted and named
    (``first_nonfinite_step/<term>``), not every term through a shared gradient norm.

    Args:
      weighting: any :class:`adaptive_optax.LossWeighting`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` whose ``update`` accepts ``grads_finite`` (a
      bool scalar, default True: then it is the weighting's ``update``). As the weighting of
      :func:`adaptive_optax.weight_gradients` it gets ``grads_finite`` from ``tx.update(...,
      losses=losses, grads_finite=finite)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import adaptive_optax as ao
      >>> weighting = ao.loss_scaled(ao.stable_weights({"mel": 2.5, "adv": 1.0}))
      >>> state = weighting.init()
      >>> losses = {"mel": jnp.float16(0.8), "adv": jnp.float16(0.3)}
      >>> _, state = weighting.update(losses, state, grad_norms=jnp.inf, grads_finite=False)
      >>> int(state.step), int(ao.metrics(state)["nonfinite/mel"])  # the scaler's overflow
      (0, 0)
      >>> _, state = weighting.update(losses, state, grad_norms=1.2, grads_finite=True)
      >>> int(state.step)
      1

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018 (arXiv:1710.03740).
    """

    def update(
        losses: PyTree,
        state: AdaptiveState,
        *,
        grads_finite: Any = True,
        grad_norms: PyTree | None = None,
        grad_stats: Mapping[str, PyTree] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, AdaptiveState]:
        del extra_args
        grads_finite = jnp.asarray(grads_finite, bool)
        losses_finite = _present_losses_finite(losses, state)
        stepped = weighting.update(losses, state, grad_norms=grad_norms, grad_stats=grad_stats)
        if grad_norms is not None or grad_stats:
            losses_only = _losses_only(weighting, losses, state)
            if losses_only is not None:
                stepped = optax.tree.where(grads_finite, stepped, losses_only)
        overflow = losses_finite & ~grads_finite
        return optax.tree.where(overflow, (state.weights, state), stepped)

    return LossWeighting(weighting.init, update, weighting.needs)


def _present_losses_finite(losses: PyTree, state: AdaptiveState) -> jax.Array:
    """Whether the loss of every present term is finite. A scheduled term whose base was 0
    at this step is absent: its loss is not read (a NaN fed for it is no term's fault)."""
    finite = jnp.array(True)
    leaves = jax.tree.leaves(losses)
    bases = jax.tree.leaves(state.base_weights)
    if len(bases) != len(leaves):  # the weighting's update names the mismatch
        bases = [None] * len(leaves)
    for leaf, base in zip(leaves, bases, strict=True):
        ok = jnp.all(jnp.isfinite(leaf))
        finite = finite & (ok if base is None else ok | (jnp.asarray(base) == 0))
    return finite


def _losses_only(weighting: LossWeighting, losses: PyTree, state: AdaptiveState):
    """The update without gradient statistics, or None for a rule that cannot do without."""
    try:
        return weighting.update(losses, state)
    except (KeyError, TypeError, ValueError):  # raised while tracing: the rule needs them
        return None
