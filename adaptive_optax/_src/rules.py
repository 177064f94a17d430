"""The stable controller's rules: the loss-ratio decision tree, its relative form, a tanh rule."""

from __future__ import annotations

import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.base import Rule, Signals
from adaptive_optax._src.statistics import at_least_float32


def loss_ratio_rule(
    *,
    step_size: float = 0.05,
    high_ratio: float = 1.1,
    low_ratio: float | None = 0.9,
    grad_growth: float = 1.5,
    toward_base: bool = False,
) -> Rule:
    """The stable controller's decision tree: move a weight one step up, down, or hold.

    With ``d`` the relative deviation of the loss from its running mean and gradients "growing"
    when the gradient norm exceeds ``grad_growth`` times the mean of the recent norms:

    - ``d > high_ratio - 1`` and gradients not growing: ``w * (1 + step_size)``;
    - else ``d < low_ratio - 1`` or gradients growing: ``w * (1 - step_size)``;
    - else hold, or with ``toward_base`` one step back toward the base weight.

    With ``low_ratio=None`` a falling loss is no reason to move: a converging loss sits below
    its running mean, and the original decision lowers its weight at every adjustment.

    Args:
      step_size: relative size of one move, in ``(0, 1)``.
      high_ratio: loss / mean above which the loss is "high" (> ``low_ratio``).
      low_ratio: loss / mean below which the loss is "low", or None: never low.
      grad_growth: factor over the recent mean gradient norm that counts as growing (> 0).
      toward_base: when holding, move one step (``step_size``) back toward the base weight,
        so that a weight moved for a reason that has passed returns to it.

    Returns:
      A stateless :class:`adaptive_optax.Rule`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.loss_ratio_rule(step_size=0.1), {"a": 1.0, "b": 1.0})
    """
    decide = _check_decision(step_size, high_ratio, low_ratio, grad_growth)
    toward_base = validation.check_flag("toward_base", toward_base)

    def propose(signals: Signals, weights, base_weights, rule_state):
        factor = decide(signals, signals.deviation)
        proposal = weights * factor.astype(weights.dtype)
        if toward_base:
            proposal = jnp.where(factor == 1, _toward(weights, base_weights, step_size), proposal)
        return proposal, rule_state

    return Rule(init=lambda base_weights: (), propose=propose, needs=("norm",))


def relative_ratio_rule(
    *,
    step_size: float = 0.05,
    high_ratio: float = 1.1,
    low_ratio: float = 0.9,
    grad_growth: float = 1.5,
    toward_base: bool = True,
) -> Rule:
    """The loss-ratio decision on a term's deviation relative to the other terms': no drift.

    The loss-ratio rule (:func:`adaptive_optax.loss_ratio_rule`) lowers the weight of every term
    whose loss is below its running mean, that is, of every term that is improving, so its
    weights drift down in any training run that works. This rule takes the same decision on
    ``r = d - mean(d)``, a term's relative deviation ``d`` from its running mean minus the mean
    deviation of all terms with a finite loss this step: a term is "high" when it falls slower
    than the others (or rises), "low" when it falls faster. When all terms improve at the same
    rate, nothing moves. Gradients growing still lower the weight, as there. When the
    decision is to hold and ``toward_base``, the weight moves one step back toward its base
    weight, so a weight cut by the spike guard, or moved for a reason that has passed, recovers
    slowly (through the guards' cooling period and stability gate).

    Args:
      step_size: relative size of one move, in ``(0, 1)``.
      high_ratio: ``1 + r`` above which the term is "high" (> ``low_ratio``).
      low_ratio: ``1 + r`` below which the term is "low".
      grad_growth: factor over the recent mean gradient norm that counts as growing (> 0).
      toward_base: step back toward the base weight when holding.

    Returns:
      A stateless :class:`adaptive_optax.Rule` that reads ``"norm"`` when it is given.

    Examples:
      >>> import adaptive_optax as ao
      >>> rule = ao.relative_ratio_rule()
      >>> weighting = ao.guarded(rule, {"mel": 2.5, "stop": 1.0}, spike_threshold=3.0)
    """
    decide = _check_decision(step_size, high_ratio, low_ratio, grad_growth)
    toward_base = validation.check_flag("toward_base", toward_base)

    def propose(signals: Signals, weights, base_weights, rule_state):
        n_finite = jnp.maximum(jnp.sum(signals.finite), 1).astype(signals.deviation.dtype)
        mean = jnp.sum(jnp.where(signals.finite, signals.deviation, 0.0)) / n_finite
        factor = decide(signals, signals.deviation - mean)
        proposal = weights * factor.astype(weights.dtype)
        if toward_base:
            proposal = jnp.where(factor == 1, _toward(weights, base_weights, step_size), proposal)
        return proposal, rule_state

    return Rule(init=lambda base_weights: (), propose=propose, needs=("norm",))


def _toward(weights, base_weights, step_size):
    """One step of relative size ``step_size`` from ``weights`` toward ``base_weights``."""
    step = step_size * weights
    return weights + jnp.clip(base_weights - weights, -step, step)


def _check_decision(step_size, high_ratio, low_ratio, grad_growth):
    """Checks the loss-ratio decision's settings; returns ``decide(signals, deviation) -> factor``.

    The factor is ``1 + step_size`` (up: high and gradients not growing), ``1 - step_size``
    (down: low or gradients growing) or 1 (hold).
    """
    step_size = validation.check_number(
        "step_size", step_size, low=0, high=1, low_open=True, high_open=True
    )
    for name, value in (("high_ratio", high_ratio), ("low_ratio", low_ratio)):
        if value is not None or name == "high_ratio":
            validation.check_number(
                name, value, low=-jnp.inf, high=jnp.inf, low_open=True, high_open=True
            )
    grad_growth = validation.check_number("grad_growth", grad_growth, low=0, low_open=True)
    ratios = None if low_ratio is None else validation.concrete((low_ratio, high_ratio))
    if ratios is not None and not ratios[0] < ratios[1]:
        raise ValueError(
            f"low_ratio must be below high_ratio, got low_ratio={low_ratio}, "
            f"high_ratio={high_ratio}"
        )

    def decide(signals: Signals, deviation):
        growing = jnp.zeros_like(signals.finite)
        if signals.grad_norms is not None:
            growing = signals.has_grad_history & (
                signals.grad_norms > grad_growth * signals.grad_mean
            )
        up = (deviation > high_ratio - 1) & ~growing
        low = False if low_ratio is None else deviation < low_ratio - 1
        down = ~up & (low | growing)
        return jnp.where(up, 1 + step_size, jnp.where(down, 1 - step_size, 1.0))

    return decide


def tanh_rule() -> Rule:
    """An older tanh rule, kept as a faithful baseline.

    Stateless apart from a running loss whose decay ramps up with the step
    (``decay = min(step / 1000, 0.99)``, running loss starting at 0)::

        running = decay * running + (1 - decay) * loss
        ratio = loss / (running + 1e-8)
        weight = base * clip(0.5 + 0.5 * tanh(ratio - 1), 0.8, 1.2)

    Since ``0.5 + 0.5 * tanh(x)`` is below 1 for every ``x``, the weight mostly sits at
    ``0.8 * base``. Non-finite losses are skipped, not fed in as 0.

    Returns:
      A :class:`adaptive_optax.Rule` whose state is the running loss per term.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.tanh_rule(), {"mel": 2.5}, max_change=None)
    """

    def init(base_weights):
        return jnp.zeros(base_weights.shape, at_least_float32(base_weights.dtype))

    def propose(signals: Signals, weights, base_weights, running):
        del weights
        decay = jnp.minimum(signals.step.astype(running.dtype) / 1000.0, 0.99)
        updated = decay * running + (1 - decay) * signals.losses
        running = jnp.where(signals.finite, updated, running)
        ratio = signals.losses / (running + 1e-8)
        factor = jnp.clip(0.5 + 0.5 * jnp.tanh(ratio - 1.0), 0.8, 1.2)
        return base_weights * factor.astype(base_weights.dtype), running

    return Rule(init=init, propose=propose)
