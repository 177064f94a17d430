"""Ready-made weightings: the original controller's rules under the guards, strict or relaxed."""

from __future__ import annotations

from typing import Any

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import preset
from adaptive_optax._src.base import LossWeighting, PyTree
from adaptive_optax._src.guards import RELAXED, guarded
from adaptive_optax._src.rules import loss_ratio_rule, tanh_rule

SPIKE_THRESHOLD = 5.0  # the spike guard of stable_weights: results/default_choice.md
SLOW_START = dict(ramp_steps=100, spike_prior=0.25)  # the start ramp and the spike prior


@preset
def stable_weights(
    base_weights: PyTree,
    *,
    max_change: float = 0.05,
    high_ratio: float = 1.1,
    low_ratio: float | None = None,
    grad_growth: float = 1.5,
    toward_base: bool = True,
    **guards: Any,
) -> LossWeighting:
    """The stable adaptive loss-weight controller: the base weights you wrote, unless evidence.

    Calm: each adaptive weight enters training at its floor (the lower bound, 0.4 x base) and
    follows a start ramp to its base over ``ramp_steps=100`` calm steps, as learning-rate
    warmup does for the step size; then it stays at its base for as long as there is no
    evidence. A steadily converging loss is no evidence (``low_ratio=None``).

    Evidence moves a weight, within ``bounds`` (0.4 to 2 times its base): a spike of its loss
    or gradient norm (a z-score of the logarithm above ``spike_threshold=5``, judged from the
    second value with ``spike_prior=0.25``) halves it at once; growing gradients (a norm above
    ``grad_growth`` times the recent mean) lower it by ``max_change`` per adjustment; a loss
    that rises more than ``high_ratio - 1`` above its running mean raises it by ``max_change``
    per adjustment. When the evidence is gone the weight steps back toward its base by
    ``max_change`` per adjustment, one adjustment per cooling period: with the defaults a
    halved weight is back after 15 adjustments, 750 steps. ``ao.metrics(state)["away/<term>"]``
    says why a weight is away from its base now (an index into
    :data:`adaptive_optax.AWAY_REASONS`) and ``"away_since/<term>"`` since which step.
    Adjustments wait for warmup, the cooling period and the stability gate; non-finite inputs
    are counted and skipped, and undo a recent adjustment (see :func:`adaptive_optax.guarded`
    for every guard, :func:`adaptive_optax.loss_ratio_rule` for the rule).

    What it does not do: make base weights stable past the learning rate where they diverge.
    ``spike_threshold=3.0`` also cuts on ordinary minibatch outliers and so keeps a noisy
    term near its floor, which is stabler and no longer the weight you wrote; the trade-off
    is measured in ``results/default_choice.md``. The original controller, whose rule lowers
    the weight of every converging loss and which starts at the base, is
    ``ao.stable_weights(base, low_ratio=0.9, toward_base=False, **ao.ORIGINAL)``.

    Args:
      base_weights: a pytree of positive floats, one per loss term, or schedules (callables
        of the step, see :func:`adaptive_optax.guarded`).
      max_change: relative change of one adjustment, in ``(0, 1)``: the rule's step and the
        guard's limit.
      high_ratio: loss / running mean above which the loss is high.
      low_ratio: loss / running mean below which the loss is low (lowering the weight), or
        None: a falling loss is no reason to move.
      grad_growth: gradient norm / recent mean above which gradients are growing.
      toward_base: when there is no evidence, step back toward the base weight.
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
      >>> round(float(weights["mel"]), 4)  # the start ramp: 0.4 x 2.5, one calm step up
      1.015
      >>> round(float(ao.weighted_sum(losses, weights)), 3)
      1.112
      >>> original = ao.stable_weights(
      ...     {"mel": 2.5, "stop": 1.0}, low_ratio=0.9, toward_base=False, **ao.ORIGINAL
      ... )
    """
    rule = _controller_rule(max_change, high_ratio, low_ratio, grad_growth, toward_base)
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


def _controller_rule(max_change, high_ratio, low_ratio, grad_growth, toward_base=False):
    """The loss-ratio rule stepping by ``max_change``, which therefore cannot be None."""
    # checked under its own name here: the rule would name it step_size
    max_change = validation.check_number(
        "max_change", max_change, low=0, high=1, low_open=True, high_open=True
    )
    return loss_ratio_rule(
        step_size=max_change,
        high_ratio=high_ratio,
        low_ratio=low_ratio,
        grad_growth=grad_growth,
        toward_base=toward_base,
    )
