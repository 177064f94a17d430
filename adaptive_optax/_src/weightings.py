"""Ready-made weightings: the seed's rules under the guards, strict or relaxed."""

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
    low_ratio: float | None = None,
    grad_growth: float = 1.5,
    toward_base: bool = True,
    **guards: Any,
) -> LossWeighting:
    """The stable adaptive loss-weight controller: the loss-ratio rule under every guard.

    A weight moves by ``max_change`` per adjustment: up when its loss is more than
    ``high_ratio - 1`` above its running mean and gradients are not growing, down when the loss
    is more than ``1 - low_ratio`` below it or the gradient norm exceeds ``grad_growth`` times
    its recent mean; and only after warmup (100 steps), outside the cooling period (50 steps)
    and after 10 stable steps. Weights stay within ``bounds`` (0.4 to 2 times each base weight:
    2.5 -> [1.0, 5.0]); non-finite inputs are counted and skipped, and undo a recent
    adjustment. These are the seed's defaults, the defaults of :func:`adaptive_optax.guarded`,
    where every guard is described; see :func:`adaptive_optax.loss_ratio_rule` for the rule.

    Two guards are ours, not the seed's, and on by default here. The spike guard
    (``spike_threshold=3.0``) halves a weight at once when its loss or the gradient norm jumps
    far above its running statistics, judging from the second value with a prior
    (``spike_prior=0.25``). The slow start (``ramp_steps=100``): each adaptive weight enters
    training at its floor and rises toward its base over 100 calm steps, as learning-rate
    warmup does for the step size (on the TTS model of ``MEASURED.md`` it finished 20 of 20
    runs at a learning rate where starting at the base finished 18). ``ramp_steps=0,
    spike_prior=None`` give the controller as the seed had it, starting at the base;
    ``spike_threshold=None`` switches the spike guard off.

    A steadily converging loss sits below its running mean, so the rule lowers its weight at
    every adjustment: on a converging physics-informed network every weight reaches its floor
    (``0.4 x base``) and the controller acts as a slow learning-rate decay (see the PINN of
    ``MEASURED.md``); with the slow start, a weight that the rule keeps lowering stays near
    its floor. Use it where losses spike or plateau;
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
    """
    rule = _seed_rule(max_change, high_ratio, low_ratio, grad_growth, toward_base)
    settings = dict(spike_threshold=SPIKE_THRESHOLD, **SLOW_START) | guards
    return guarded(rule, base_weights, max_change=max_change, **settings)


@preset
def legacy_weights(base_weights: PyTree, **guards: Any) -> LossWeighting:
    """The seed's older tanh rule, step for step: the baseline of the benchmarks.

    By default only the bounds apply (``max_change=None``, no warmup, no cooling, no stability
    gate, no rollback), so its weights equal the original formula
    ``clip(base * clip(0.5 + 0.5 * tanh(ratio - 1), 0.8, 1.2), low, high)`` at every finite
    step; see :func:`adaptive_optax.tanh_rule`. Any guard of :func:`adaptive_optax.guarded`
    can be switched on through ``guards``.

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
    return guarded(tanh_rule(), base_weights, **(RELAXED | guards))


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
    """The loss-ratio rule with its guards relaxed: the controller the seed blamed for NaNs.

    Moves a weight by ``max_change`` (30 %) at every step, with no warmup, no cooling period,
    no stability gate, no rollback and wide bounds (1e-3 to 1e3 times the base). Non-finite
    inputs are still skipped: no weighting of this library can itself become non-finite. It
    exists to measure what the guards buy; do not train with it.

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
    rule = _seed_rule(max_change, high_ratio, low_ratio, grad_growth)
    settings = RELAXED | dict(bounds=(1e-3, 1e3), max_change=max_change)
    return guarded(rule, base_weights, **(settings | guards))


def _seed_rule(max_change, high_ratio, low_ratio, grad_growth, toward_base=False):
    """The loss-ratio rule stepping by ``max_change``, which therefore cannot be None."""
    # checked under its own name here: the rule would name it step_size
    validation.check_number("max_change", max_change, low=0, high=1, low_open=True, high_open=True)
    return loss_ratio_rule(
        step_size=max_change,
        high_ratio=high_ratio,
        low_ratio=low_ratio,
        grad_growth=grad_growth,
        toward_base=toward_base,
    )
