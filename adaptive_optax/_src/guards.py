"""The guard layer: puts any :class:`Rule` under the safety guards of the stable controller."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adaptive_optax._src import config
from adaptive_optax._src.base import (
    AdaptiveState,
    LossWeighting,
    PyTree,
    Rule,
    TermCounts,
    TermValues,
)
from adaptive_optax._src.gradients import check_statistics
from adaptive_optax._src.statistics import (
    at_least_float32,
    count_where,
    init_stats,
    update_stats,
)
from adaptive_optax._src.terms import Terms, select, terms_of


def guarded(
    rule: Rule,
    base_weights: PyTree,
    *,
    adapt: PyTree | Sequence[str] | str | None = None,
    bounds: tuple[float, float] | None = (0.4, 2.0),
    min_weight: PyTree | float | None = None,
    max_weight: PyTree | float | None = None,
    max_change: float | None = 0.05,
    warmup_steps: int = 100,
    cooling_period: int = 50,
    min_stable_steps: int = 10,
    variance_threshold: float = 0.5,
    ema_decay: float = 0.99,
    window: int = 10,
    auto_rollback: bool = True,
    axis_name: Hashable | None = None,
    dtype: Any = jnp.float32,
) -> LossWeighting:
    """Puts a rule under the guards that keep adaptive loss weights from destabilising training.

    At every ``update``, per adaptive term: the step counter advances; a non-finite loss or
    gradient norm is counted and changes nothing (with ``auto_rollback`` it also undoes an
    adjustment made less than ``cooling_period`` steps before); otherwise the shared statistics
    are updated, the rule proposes a weight, and the proposal lands only when the weighting is
    enabled, warmup is over, the cooling period since the last change has passed and the term
    has been stable (relative loss variance below ``variance_threshold``) for
    ``min_stable_steps`` steps. A landing proposal is limited to ``max_change`` relative to the
    current weight, clipped to the bounds, and rejected if it or the weighted loss would not be
    finite. Non-adaptive terms, and every term while disabled, keep their base weights.

    Every guard can be relaxed: ``max_change=None``, ``warmup_steps=0``, ``cooling_period=0``,
    ``min_stable_steps=0``, ``bounds=None``, ``auto_rollback=False``.

    Args:
      rule: the :class:`adaptive_optax.Rule` that proposes weights.
      base_weights: a pytree of positive floats, one per loss term.
      adapt: the terms that adapt, as names (``"mel"``, ``"heads/stop"``) or a pytree of bools
        shaped like ``base_weights``; default: all.
      bounds: ``(low, high)`` factors of each base weight bounding its weight; ``None`` for
        ``[0, inf)``. Overridden by ``min_weight`` / ``max_weight``.
      min_weight: absolute lower bound, a scalar or a pytree shaped like ``base_weights``.
      max_weight: absolute upper bound, a scalar or a pytree shaped like ``base_weights``.
      max_change: largest relative change of a weight per adjustment, in ``(0, 1)``, or None.
      warmup_steps: no adjustment while ``step <= warmup_steps``.
      cooling_period: at least this many steps between two adjustments of a term.
      min_stable_steps: consecutive stable steps required before an adjustment.
      variance_threshold: a step is stable when the relative variance of the loss window is
        below this.
      ema_decay: decay of the bias-corrected loss EMA, in ``[0, 1)``.
      window: number of recent losses and gradient norms kept per term (static, >= 2).
      auto_rollback: undo an adjustment when a non-finite input follows within the cooling
        period.
      axis_name: a mapped axis (``shard_map``, ``pmap``) over which losses and gradient norms are
        averaged before deciding, so that every replica takes the same decisions.
      dtype: floating dtype of the weights; statistics use at least float32.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Raises:
      ValueError: for a setting out of range, naming it and its value.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.tanh_rule(), {"mel": 2.5, "stop": 1.0}, warmup_steps=10)
      >>> state = weighting.init()
      >>> weights, state = weighting.update({"mel": 1.0, "stop": 0.5}, state)
      >>> float(weights["mel"])
      2.5
    """
    terms = terms_of(base_weights)
    adaptive = select(terms, adapt)
    needs = check_statistics(rule.needs)
    window = config.check_static_int("window", window, low=2)
    config.check_number("max_change", max_change, low=0, high=1, low_open=True, high_open=True)
    for name, value in (
        ("warmup_steps", warmup_steps),
        ("cooling_period", cooling_period),
        ("min_stable_steps", min_stable_steps),
    ):
        config.check_number(name, value, low=0, integer=True)
    config.check_number("variance_threshold", variance_threshold, low=0, low_open=True)
    config.check_number("ema_decay", ema_decay, low=0, high=1, high_open=True)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")

    base = _base_vector(terms, base_weights, dtype)
    low, high = _bounds(terms, base, adaptive, bounds, min_weight, max_weight, dtype)
    stats_dtype = at_least_float32(dtype)
    adaptive = jnp.asarray(adaptive)
    if max_change is not None:
        max_change = jnp.asarray(max_change, dtype)

    def init() -> AdaptiveState:
        stats = init_stats(terms.size, window, stats_dtype)
        zeros = jnp.zeros((terms.size,), jnp.int32)
        return AdaptiveState.pack(
            step=jnp.zeros([], jnp.int32),
            enabled=jnp.ones([], bool),
            weights=terms.tree(base),
            values=TermValues(base, base, stats.loss_mean),
            counts=TermCounts(*[zeros] * len(TermCounts._fields)),
            loss_window=stats.loss_window,
            grad_window=stats.grad_window,
            rule_state=rule.init(base),
        )

    def update(
        losses: PyTree,
        state: AdaptiveState,
        *,
        grad_norms: PyTree | None = None,
        grad_stats: Mapping[str, PyTree] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, AdaptiveState]:
        del extra_args
        loss = terms.vector(losses, "losses", stats_dtype)
        grad = (
            None if grad_norms is None else _per_term(terms, grad_norms, "grad_norms", stats_dtype)
        )
        extra = _grad_stats(terms, grad_stats, stats_dtype)
        if axis_name is not None:
            loss, grad, extra = jax.lax.pmean((loss, grad, extra), axis_name)
        step = optax.safe_increment(state.step)
        finite = jnp.isfinite(loss)
        for value in [grad, *extra.values()]:
            if value is not None:
                finite &= jnp.isfinite(value)

        weights = terms.vector(state.weights, "state.weights", dtype)
        corrupt = ~jnp.isfinite(weights)
        weights = jnp.where(corrupt, base, weights)
        previous = state.previous_weights.astype(dtype)
        previous = jnp.where(jnp.isfinite(previous), previous, base)

        stats, signals = update_stats(state.stats, loss, grad, extra, finite, step, ema_decay)
        stable = jnp.where(
            finite & (signals.rel_variance < variance_threshold),
            optax.safe_increment(state.stable_steps),
            0,
        )
        proposal, rule_state = rule.propose(signals, weights, base, state.rule_state)
        rule_state = jax.tree.map(_keep_finite, rule_state, state.rule_state)

        active = state.enabled & adaptive
        gate = (
            active
            & finite
            & (step > warmup_steps)
            & (step - state.last_change >= cooling_period)
            & (stable >= min_stable_steps)
        )
        proposal = jnp.asarray(proposal, dtype)
        if max_change is not None:
            proposal = jnp.clip(proposal, weights * (1 - max_change), weights * (1 + max_change))
        proposal = jnp.clip(proposal, low, high)
        valid = jnp.isfinite(proposal) & jnp.isfinite(proposal.astype(stats_dtype) * signals.losses)
        wants = gate & (proposal != weights)
        applied = wants & valid

        new_weights = jnp.where(applied, proposal, weights)
        previous = jnp.where(applied, weights, previous)
        last_change = jnp.where(applied, step, state.last_change)
        stable = jnp.where(applied, 0, stable)
        undone = jnp.zeros_like(applied)
        if auto_rollback:
            undone = (
                active & ~finite & (step - last_change < cooling_period) & (new_weights != previous)
            )
            new_weights = jnp.where(undone, previous, new_weights)
            last_change = jnp.where(undone, step, last_change)
        new_weights = jnp.where(active, new_weights, base)
        previous = jnp.where(undone | ~active, new_weights, previous)

        counters = state.counters
        new_state = AdaptiveState.pack(
            step=step,
            enabled=state.enabled,
            weights=terms.tree(new_weights),
            values=TermValues(previous, state.base_weights, stats.loss_mean),
            counts=TermCounts(
                last_change=last_change,
                stable_steps=stable,
                adjustments=count_where(counters.adjustments, applied),
                rejected=count_where(counters.rejected, wants & ~valid),
                nonfinite=count_where(counters.nonfinite, ~finite),
                rollbacks=count_where(counters.rollbacks, undone),
                healed=count_where(counters.healed, corrupt),
                loss_count=stats.loss_count,
                grad_count=stats.grad_count,
            ),
            loss_window=stats.loss_window,
            grad_window=stats.grad_window,
            rule_state=rule_state,
        )
        return new_state.weights, new_state

    return LossWeighting(init, update, needs)


def _keep_finite(new: jax.Array, old: jax.Array) -> jax.Array:
    """``new`` where finite, else ``old``: no rule can make its state non-finite."""
    if jnp.issubdtype(jnp.result_type(new), jnp.inexact):
        return jnp.where(jnp.isfinite(new), new, old)
    return new


def _base_vector(terms: Terms, base_weights: PyTree, dtype) -> jax.Array:
    values = config.concrete(jax.tree.leaves(base_weights))
    if values is not None:
        for name, value in zip(terms.names, values, strict=True):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"base_weights[{name!r}] must be positive and finite, got {value}")
    return terms.vector(base_weights, "base_weights", dtype)


def _bounds(terms, base, adaptive, bounds, min_weight, max_weight, dtype):
    """Per-term ``(low, high)`` weight bounds, validated where they are concrete."""
    if bounds is not None:
        if len(bounds) != 2:
            raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}")
        config.check_number("bounds[0]", bounds[0], low=0)
        config.check_number("bounds[1]", bounds[1], low=0, low_open=True)
        low, high = base * bounds[0], base * bounds[1]
    else:
        low, high = jnp.zeros_like(base), jnp.full_like(base, jnp.inf)
    if min_weight is not None:
        config.check_number("min_weight", min_weight, low=0)
        low = _per_term(terms, min_weight, "min_weight", dtype)
    if max_weight is not None:
        config.check_number("max_weight", max_weight, low=0, low_open=True)
        high = _per_term(terms, max_weight, "max_weight", dtype)
    values = config.concrete((low, high, base))
    if values is not None:
        for name, lo, hi, b, adapts in zip(terms.names, *values, adaptive, strict=True):
            if not lo < hi:
                raise ValueError(
                    f"the bounds of {name!r} must satisfy low < high, got [{lo:.6g}, {hi:.6g}] "
                    f"(bounds={bounds}, min_weight={min_weight}, max_weight={max_weight})"
                )
            if adapts and not lo <= b <= hi:
                raise ValueError(
                    f"base_weights[{name!r}]={b:.6g} lies outside its bounds [{lo:.6g}, {hi:.6g}] "
                    f"(bounds={bounds}, min_weight={min_weight}, max_weight={max_weight})"
                )
    return low, high


def _per_term(terms: Terms, value, what: str, dtype) -> jax.Array:
    """A scalar broadcast to every term, or a pytree shaped like the base weights."""
    if np.shape(value) == () and jax.tree.structure(value) != terms.treedef:
        return jnp.full((terms.size,), value, dtype)
    return terms.vector(value, what, dtype)


def _grad_stats(terms: Terms, grad_stats, dtype) -> dict[str, jax.Array]:
    """``grad_stats`` as ``{name: (n_terms,) vector}``; each value global or per term."""
    if grad_stats is None:
        return {}
    check_statistics(grad_stats)
    return {
        name: _per_term(terms, value, f"grad_stats[{name!r}]", dtype)
        for name, value in grad_stats.items()
    }
