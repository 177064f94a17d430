"""Ready-made weightings: the seed's rules under the guards, strict or relaxed."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import jax.numpy as jnp

from adaptive_optax._src import config
from adaptive_optax._src.base import LossWeighting, PyTree
from adaptive_optax._src.guards import guarded
from adaptive_optax._src.rules import loss_ratio_rule, tanh_rule


def stable_weights(
    base_weights: PyTree,
    *,
    adapt: PyTree | Sequence[str] | str | None = None,
    bounds: tuple[float, float] | None = (0.4, 2.0),
    min_weight: PyTree | float | None = None,
    max_weight: PyTree | float | None = None,
    max_change: float = 0.05,
    warmup_steps: int = 100,
    cooling_period: int = 50,
    min_stable_steps: int = 10,
    variance_threshold: float = 0.5,
    high_ratio: float = 1.1,
    low_ratio: float = 0.9,
    grad_growth: float = 1.5,
    ema_decay: float = 0.99,
    window: int = 10,
    auto_rollback: bool = True,
    axis_name: Hashable | None = None,
    dtype: Any = jnp.float32,
) -> LossWeighting:
    """The stable adaptive loss-weight controller: the loss-ratio rule under every guard.

    A weight moves by at most ``max_change`` per adjustment: up when its loss is more than
    ``high_ratio - 1`` above its running mean and gradients are not growing, down when the loss
    is more than ``1 - low_ratio`` below it or the gradient norm exceeds ``grad_growth`` times
    its recent mean, and only after warmup, outside the cooling period and after
    ``min_stable_steps`` stable steps. Weights stay within ``bounds`` (relative to each base
    weight: 2.5 -> [1.0, 5.0]); non-finite inputs are counted and skipped, and undo a recent
    adjustment. See :func:`adaptive_optax.guarded` for every guard and
    :func:`adaptive_optax.loss_ratio_rule` for the rule.

    Args:
      base_weights: a pytree of positive floats, one per loss term.
      adapt: the terms that adapt (names or a pytree of bools); default: all.
      bounds: ``(low, high)`` factors of each base weight; None for ``[0, inf)``.
      min_weight: absolute lower bound (scalar or per term); overrides ``bounds``.
      max_weight: absolute upper bound (scalar or per term); overrides ``bounds``.
      max_change: relative change of one adjustment, in ``(0, 1)``.
      warmup_steps: no adjustment while ``step <= warmup_steps``.
      cooling_period: at least this many steps between two adjustments of a term.
      min_stable_steps: consecutive stable steps required before an adjustment.
      variance_threshold: a step is stable when the loss window's relative variance is below.
      high_ratio: loss / running mean above which the loss is high.
      low_ratio: loss / running mean below which the loss is low.
      grad_growth: gradient norm / recent mean above which gradients are growing.
      ema_decay: decay of the bias-corrected loss EMA, in ``[0, 1)``.
      window: recent losses and gradient norms kept per term (static, >= 2).
      auto_rollback: undo an adjustment followed by a non-finite input within the cooling
        period.
      axis_name: mapped axis over which losses and gradient norms are averaged.
      dtype: floating dtype of the weights.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Raises:
      ValueError: for a setting out of range, naming it and its value.

    Examples:
      >>> import jax
      >>> import adaptive_optax as ao
      >>> weighting = ao.stable_weights({"mel": 2.5, "stop": 1.0}, adapt=("mel",))
      >>> state = weighting.init()
      >>> losses = {"mel": 0.8, "stop": 0.3}
      >>> weights, state = jax.jit(weighting.update)(losses, state, grad_norms=1.7)
      >>> round(float(ao.weighted_sum(losses, weights)), 4)
      2.3
    """
    _check_step("max_change", max_change)
    rule = loss_ratio_rule(
        step_size=max_change,
        high_ratio=high_ratio,
        low_ratio=low_ratio,
        grad_growth=grad_growth,
    )
    return guarded(
        rule,
        base_weights,
        adapt=adapt,
        bounds=bounds,
        min_weight=min_weight,
        max_weight=max_weight,
        max_change=max_change,
        warmup_steps=warmup_steps,
        cooling_period=cooling_period,
        min_stable_steps=min_stable_steps,
        variance_threshold=variance_threshold,
        ema_decay=ema_decay,
        window=window,
        auto_rollback=auto_rollback,
        axis_name=axis_name,
        dtype=dtype,
    )


def legacy_weights(base_weights: PyTree, **guards: Any) -> LossWeighting:
    """The seed's older tanh rule, step for step: the baseline of the benchmarks.

    By default only the bounds apply (``max_change=None``, no warmup, no cooling, no stability
    gate, no rollback), so its weights equal the original formula
    ``clip(base * clip(0.5 + 0.5 * tanh(ratio - 1), 0.8, 1.2), low, high)`` at every finite
    step; see :func:`adaptive_optax.tanh_rule`. Any guard of :func:`adaptive_optax.guarded`
    can be switched on through ``guards``.

    Args:
      base_weights: a pytree of positive floats, one per loss term.
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
    settings = dict(
        max_change=None,
        warmup_steps=0,
        cooling_period=0,
        min_stable_steps=0,
        auto_rollback=False,
    )
    return guarded(tanh_rule(), base_weights, **(settings | guards))


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
      base_weights: a pytree of positive floats, one per loss term.
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
    _check_step("max_change", max_change)
    rule = loss_ratio_rule(
        step_size=max_change,
        high_ratio=high_ratio,
        low_ratio=low_ratio,
        grad_growth=grad_growth,
    )
    settings = dict(
        bounds=(1e-3, 1e3),
        warmup_steps=0,
        cooling_period=0,
        min_stable_steps=0,
        auto_rollback=False,
    )
    return guarded(rule, base_weights, max_change=max_change, **(settings | guards))


def _check_step(name: str, value: Any) -> None:
    """The loss-ratio rule moves by ``value`` per adjustment: it cannot be None here."""
    if value is None:
        raise ValueError(f"{name} must be in (0, 1) for the loss-ratio rule, got None")
    config.check_number(name, value, low=0, high=1, low_open=True, high_open=True)
