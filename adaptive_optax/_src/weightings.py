"""Ready-made weightings: the original controller's rules under the guards, strict or relaxed."""

from __future__ import annotations

from typing import Any

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import preset
from adaptive_optax._src.base import LossWeighting, PyTree
from adaptive_optax._src.guards import RELAXED, guarded
from adaptive_optax._src.rules import loss_ratio_rule, tanh_rule

SPIKE_THRESHOLD = 3.0  # the spike guard of stable_weights: a z-score of the log loss or norm
SLOW_START = dict(ramp_steps=100, spike_prior=0.25)  # chosen on the suite: MEASURED.md


@preset
def stable_weights(
    base_weights: PyTree,
    *,
    max_change: float = 0.05,
    high_ratio: float = 1.1,
    low_ratio: float = 0.9,
    grad_growth: float = 1.5,
    **guards: Any,
) -> LossWeighting:
    """The stable adaptive loss-weight controller: the loss-ratio rule under every guard.

    A weight moves by ``max_change`` per adjustment: up when its loss is more than
    ``high_ratio - 1`` above its running mean and gradients are not growing, down when the loss
    is more than ``1 - low_ratio`` below it or the gradient norm exceeds ``grad_growth`` times
    its recent mean; and only after warmup, outside the cooling period and after enough stable
    steps. Weights stay within ``bounds`` (0.4 to 2 times each base weight: 2.5 -> [1.0, 5.0]);
    non-finite inputs are counted and skipped, and undo a recent adjustment. Every guard is
    described in :func:`adaptive_optax.guarded`; see :func:`adaptive_optax.loss_ratio_rule` for
    the rule.

    Two guards beyond the original controller's are on by default: the spike guard
    (``spike_threshold=3.0``, judging from the second value with ``spike_prior=0.25``) halves a
    weight at once when its loss or the gradient norm jumps, and the slow start
    (``ramp_steps=100``) lets each adaptive weight enter training at its floor and rise toward
    its base over calm steps, as learning-rate warmup does for the step size (measured in
    ``MEASURED.md``). ``**ao.ORIGINAL`` gives the original controller: no spike guard, no slow
    start.

    A steadily converging loss sits below its running mean, so the rule lowers its weight at
    every adjustment, and the controller can act as a slow learning-rate decay (the PINN of
    ``MEASURED.md``). Use it where losses spike or plateau;
    :func:`adaptive_optax.relative_ratio_rule` moves toward the base weights instead.

    Args:
      base_weights: a pytree of positive floats, one per loss term, or schedules (callables
        of the step, see :func:`adaptive_optax.guarded`).
      max_change: relative change of one adjustment, in ``(0, 1)``: the rule's step and the
        guard's limit.
      high_ratio: loss / running mean above which the loss is high.
      low_ratio: loss / running mean below which the loss is low.
      grad_growth: gradient norm / recent mean above which gradients are growing.
      **guards: any other keyword setting of :func:`adaptive_optax.guarded` (``adapt``,
        ``bounds``, ``warmup_steps``, ``cooling_period``, ``axis_name``, ...).

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Raises:
      ValueError: for a setting of the wrong type or out of range, naming it and its value.

    Examples:
      >>> import jax
      >>> import adaptive_optax as ao
      >>> weighting = ao.stable_weights({"mel": 2.5, "stop": 1.0}, adapt=("mel",))
      >>> state = weighting.init()
      >>> losses = {"mel": 0.8, "stop": 0.3}
      >>> weights, state = jax.jit(weighting.update)(losses, state, grad_norms=1.7)
      >>> float(weights["mel"])  # the slow start: at its floor, 0.4 x 2.5
      1.0
      >>> round(float(ao.weighted_sum(losses, weights)), 4)
      1.1
      >>> original = ao.stable_weights({"mel": 2.5, "stop": 1.0}, **ao.ORIGINAL)
    """
    rule = _controller_rule(max_change, high_ratio, low_ratio, grad_growth)
    settings = dict(spike_threshold=SPIKE_THRESHOLD, **SLOW_START) | guards
    return guarded(rule, base_weights, max_change=max_change, **settings)


@preset
def legacy_weights(base_weights: PyTree, **guards: Any) -> LossWeighting:
    """The original controller's older tanh rule, step for step: the benchmarks' baseline.

    By default only the bounds apply (``max_change=None``, no warmup, no cooling, no stability
    gate, no rollback), so its weights equal the original formula
    ``clip(base * clip(0.5 + 0.5 * tanh(ratio - 1), 0.8, 1.2), low, high)`` at every finite
    step; see :func:`adaptive_optax.tanh_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term, or schedules (callables
        of the step, see :func:`adaptive_optax.guarded`).
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.legacy_weights({"mel": 2.5, "stop": 1.0}, adapt="mel")
      >>> weights, state = weighting.update({"mel": 1.0, "stop": 1.0}, weighting.init())
      >>> float(weights["mel"])  # 0.8 x base: 0.5 + 0.5 tanh(x) < 1
      2.0
    """
    settings: dict[str, Any] = {**RELAXED, **guards}
    return guarded(tanh_rule(), base_weights, **settings)


@preset
def unguarded_weights(
    base_weights: PyTree,
    *,
    max_change: float = 0.3,
    high_ratio: float = 1.1,
    low_ratio: float = 0.9,
    grad_growth: float = 1.5,
    **guards: Any,
) -> LossWeighting:
    """The loss-ratio rule with its guards relaxed: a control that measures what the guards buy.

    Moves a weight by ``max_change`` at every step, with no warmup, no cooling period, no
    stability gate, no rollback and wide bounds (1e-3 to 1e3 times the base). Non-finite inputs
    are still skipped: no weighting of this library can itself become non-finite. Do not train
    with it.

    Args:
      base_weights: a pytree of positive floats, one per loss term, or schedules (callables
        of the step, see :func:`adaptive_optax.guarded`).
      max_change: relative change per step, in ``(0, 1)``.
      high_ratio: loss / running mean above which the loss is high.
      low_ratio: loss / running mean below which the loss is low.
      grad_growth: gradient norm / recent mean above which gradients are growing.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.unguarded_weights({"mel": 2.5, "stop": 1.0}, adapt="mel")
    """
    rule = _controller_rule(max_change, high_ratio, low_ratio, grad_growth)
    settings: dict[str, Any] = {**RELAXED, "bounds": (1e-3, 1e3), "max_change": max_change}
    return guarded(rule, base_weights, **(settings | guards))


def _controller_rule(max_change, high_ratio, low_ratio, grad_growth):
    """The loss-ratio rule stepping by ``max_change``, which therefore cannot be None."""
    # checked under its own name here: the rule would name it step_size
    validation.check_number("max_change", max_change, low=0, high=1, low_open=True, high_open=True)
    return loss_ratio_rule(
        step_size=max_change, high_ratio=high_ratio, low_ratio=low_ratio, grad_growth=grad_growth
    )
