"""The guard layer: puts any :class:`Rule` under the safety guards of the stable controller.

``update`` runs in named stages: read the inputs, heal a corrupted state, fold the step into
the shared statistics, let the rule propose, gate the proposal, limit it, and apply it (or roll
back the last adjustment). Each stage is a small function of this module.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adaptive_optax._src import config
from adaptive_optax._src.base import AdaptiveState, Counters, LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.gradients import GRAMIAN, check_statistics
from adaptive_optax._src.spikes import detect_spikes, init_spike_stats
from adaptive_optax._src.statistics import at_least_float32, count_where, init_stats, update_stats
from adaptive_optax._src.terms import Terms, select, terms_of

SPIKE_WARMUP = 10  # values a term's statistics need before the spike guard judges them

RELAXED = MappingProxyType(
    dict(
        max_change=None,
        warmup_steps=0,
        cooling_period=0,
        min_stable_steps=0,
        auto_rollback=False,
        spike_threshold=None,
    )
)
"""Settings of :func:`guarded` that let every finite proposal land at once, within the bounds.

Non-finite inputs are still skipped, proposals still validated and stored weights still
healed: those guards cannot be switched off. ``guarded(rule, base, **(RELAXED | settings))``.
"""


class Settings(NamedTuple):
    """The validated settings of :func:`guarded` (numbers may be traced; flags are static)."""

    max_change: Any
    warmup_steps: Any
    cooling_period: Any
    min_stable_steps: Any
    variance_threshold: Any
    ema_decay: Any
    window: Any
    auto_rollback: bool
    spike_threshold: Any
    spike_factor: Any
    spike_decay: Any
    every: Any


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
    window: float = 10,
    auto_rollback: bool = True,
    spike_threshold: float | None = None,
    spike_factor: float = 0.5,
    spike_decay: float = 0.97,
    every: int = 1,
    axis_name: Hashable | None = None,
    dtype: Any = jnp.float32,
) -> LossWeighting:
    """Puts a rule under the guards that keep adaptive loss weights from destabilising training.

    At every ``update``, per adaptive term: the step counter advances; a non-finite loss or
    gradient statistic is counted and changes nothing (with ``auto_rollback`` it also undoes an
    adjustment made less than ``cooling_period`` steps before); otherwise the shared statistics
    are updated, the rule proposes a weight, and the proposal lands only when the weighting is
    enabled, warmup is over, the cooling period since the last change has passed and the term
    has been stable (recent relative loss variance below ``variance_threshold``) for
    ``min_stable_steps`` steps. A landing proposal is limited to ``max_change`` relative to the
    current weight, clipped to the bounds, and rejected if it or the weighted loss would not be
    finite. Non-adaptive terms, and every term while disabled, keep their base weights.

    The spike guard (``spike_threshold``, off here, on in :func:`adaptive_optax.stable_weights`)
    is the fast half of the controller: when a term's loss or gradient norm spikes, judged by a
    z-score of its logarithm above ``spike_threshold`` against running statistics that a spike
    does not inflate (see ``adaptive_optax._src.spikes``), the weight is cut at once to
    ``spike_factor`` times its value, within the bounds; warmup, cooling, the stability gate and
    ``max_change`` do not hold the cut back, since by the time they would let it through the
    spike has done its harm. A cut starts a cooling period and is not rolled back; the weight
    recovers only through the rule's proposals and the usual gates (slow increase, fast
    decrease, as in TCP's AIMD). This is our extension of the seed's "gradients growing ->
    decrease", which waits for the cooling period and moves 5 % at a time.

    Every guard can be relaxed: ``max_change=None``, ``warmup_steps=0``, ``cooling_period=0``,
    ``min_stable_steps=0``, ``bounds=None``, ``auto_rollback=False``, ``spike_threshold=None``;
    ``RELAXED`` holds all but the bounds.

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
      variance_threshold: a step is stable when the recent relative variance of the loss
        (variance / mean**2) is below this.
      ema_decay: decay of the running mean of the losses (bias-corrected EMA), in ``[0, 1)``.
      window: span, in steps, of the recent statistics (the loss variance and the mean
        gradient norm): EMAs of decay ``1 - 2 / (window + 1)``, >= 1.
      auto_rollback: undo an adjustment when a non-finite input follows within the cooling
        period.
      spike_threshold: z-score of a log loss or log gradient norm above which it is a spike
        (> 0), or None for no spike guard.
      spike_factor: factor a spike cuts the weight by, in ``(0, 1)``.
      spike_decay: decay of the spike guard's log-scale statistics, in ``[0, 1)`` (0.97 as in
        ZClip: a span of about 65 steps).
      every: consult the rule only every ``every`` steps (steps 1, 1 + every, ...), holding
        the weights in between: for a rule whose solver is expensive. In-graph
        (``lax.cond``): the rule's computation is skipped, not masked; the statistics and the
        spike guard still see every step.
      axis_name: a mapped axis (``shard_map``, ``pmap``) over which losses and gradient
        statistics are averaged before deciding, so that every replica takes the same decisions.
      dtype: floating dtype of the weights; statistics use at least float32.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Raises:
      ValueError: for a setting of the wrong type or out of range, naming it and its value.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.tanh_rule(), {"mel": 2.5, "stop": 1.0}, warmup_steps=10)
      >>> state = weighting.init()
      >>> weights, state = weighting.update({"mel": 1.0, "stop": 0.5}, state)
      >>> float(weights["mel"])
      2.5
    """
    terms = terms_of(base_weights)
    adaptive = select(terms, adapt)  # NumPy: concrete even when built under a trace
    needs = check_statistics(rule.needs)
    settings = _check_settings(
        max_change=max_change,
        warmup_steps=warmup_steps,
        cooling_period=cooling_period,
        min_stable_steps=min_stable_steps,
        variance_threshold=variance_threshold,
        ema_decay=ema_decay,
        window=window,
        auto_rollback=auto_rollback,
        spike_threshold=spike_threshold,
        spike_factor=spike_factor,
        spike_decay=spike_decay,
        every=every,
    )
    try:
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError
    except TypeError:
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}") from None
    stats_dtype = at_least_float32(dtype)
    initial_base = _base_vector(terms, base_weights, dtype)
    if rule.per_term_base:  # at rest, the method's uniform weights (see Rule)
        initial_base = initial_base / terms.size
    bounds_of = _bounds(terms, initial_base, adaptive, bounds, min_weight, max_weight)

    def init() -> AdaptiveState:
        zeros = jnp.zeros((terms.size,), jnp.int32)
        weights = terms.tree(initial_base)
        return AdaptiveState(
            step=jnp.zeros([], jnp.int32),
            enabled=jnp.ones([], bool),
            weights=weights,
            previous_weights=weights,
            base_weights=weights,
            last_change=zeros,
            stable_steps=zeros,
            counters=Counters(*[zeros] * len(Counters._fields)),
            stats=init_stats(terms.size, stats_dtype),
            spike_stats=init_spike_stats(terms.size, stats_dtype),
            rule_state=rule.init(initial_base),
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
        _check_state(state, rule, initial_base)
        if jnp.ndim(state.step) != 0:
            raise ValueError(
                f"update got a state with batch axes (its step has shape {jnp.shape(state.step)}):"
                " map it over them with jax.vmap(weighting.update)"
            )
        step = optax.safe_increment(state.step)
        loss, gradients, finite = _read_inputs(
            terms, losses, grad_norms, grad_stats, axis_name, stats_dtype
        )
        base, weights, previous, corrupt = _heal(terms, state, initial_base, dtype)
        stats, signals = update_stats(
            state.stats,
            loss,
            gradients,
            finite,
            step,
            ema_decay=settings.ema_decay,
            window=settings.window,
        )
        spiked, spike_stats = _spikes(settings, state, loss, gradients, finite)
        proposal, rule_state = _propose(
            rule, settings.every, signals, weights, base, state.rule_state
        )

        active = state.enabled & adaptive
        stable, open_gate = _gate(settings, state, signals, active)
        low, high = bounds_of(base)
        proposal, valid = _limit(settings, proposal.astype(dtype), weights, low, high, loss)
        wants = open_gate & (proposal != weights)
        applied = wants & valid

        new_weights, previous, last_change, undone = _apply_or_roll_back(
            settings, step, active, finite, applied, proposal, weights, previous, base, state
        )
        cut = spiked & active
        new_weights, previous, last_change = _cut_on_spikes(
            settings, step, cut, weights, low, new_weights, previous, last_change
        )
        counters = state.counters
        new_state = state._replace(
            step=step,
            weights=terms.tree(new_weights),
            previous_weights=terms.tree(previous),
            base_weights=terms.tree(base),
            last_change=last_change,
            stable_steps=jnp.where(applied | cut, 0, stable),
            counters=Counters(
                adjustments=count_where(counters.adjustments, applied),
                rejected=count_where(counters.rejected, wants & ~valid),
                nonfinite=count_where(counters.nonfinite, ~finite),
                rollbacks=count_where(counters.rollbacks, undone),
                healed=count_where(counters.healed, corrupt),
                spikes=count_where(counters.spikes, spiked),
            ),
            stats=stats,
            spike_stats=spike_stats,
            rule_state=rule_state,
        )
        return new_state.weights, new_state

    return LossWeighting(init, update, needs)


# Construction --------------------------------------------------------------------------------


def _check_settings(**values: Any) -> Settings:
    """Validates each setting once, naming it and its value."""
    if values["max_change"] is not None:
        config.check_number(
            "max_change", values["max_change"], low=0, high=1, low_open=True, high_open=True
        )
    for name in ("warmup_steps", "cooling_period", "min_stable_steps"):
        config.check_number(name, values[name], low=0, integer=True)
    config.check_number("variance_threshold", values["variance_threshold"], low=0, low_open=True)
    config.check_number("ema_decay", values["ema_decay"], low=0, high=1, high_open=True)
    config.check_number("window", values["window"], low=1)
    if values["spike_threshold"] is not None:
        config.check_number("spike_threshold", values["spike_threshold"], low=0, low_open=True)
    config.check_number(
        "spike_factor", values["spike_factor"], low=0, high=1, low_open=True, high_open=True
    )
    config.check_number("spike_decay", values["spike_decay"], low=0, high=1, high_open=True)
    config.check_number("every", values["every"], low=1, integer=True)
    values["auto_rollback"] = config.check_flag("auto_rollback", values["auto_rollback"])
    return Settings(**values)


def _base_vector(terms: Terms, base_weights: PyTree, dtype) -> jax.Array:
    for name, value in zip(terms.names, jax.tree.leaves(base_weights), strict=True):
        config.check_number(f"base_weights[{name!r}]", value, low=0, low_open=True)
        concrete = config.concrete(value)
        if concrete is not None and not np.all(np.isfinite(concrete)):
            raise ValueError(f"base_weights[{name!r}] must be positive and finite, got {value}")
    return terms.vector(base_weights, "base_weights", dtype)


def _bounds(terms: Terms, base, adaptive, bounds, min_weight, max_weight):
    """``bounds_of(base) -> (low, high)``, validated against the base weights given here."""
    if bounds is not None:
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError(
                f"bounds must be a pair (low, high) of factors or None, got {bounds!r}"
            )
        config.check_number("bounds[0]", bounds[0], low=0)
        config.check_number("bounds[1]", bounds[1], low=0, low_open=True)
    detail = f"(bounds={bounds}, min_weight={min_weight}, max_weight={max_weight})"
    if min_weight is not None:
        config.check_number("min_weight", min_weight, low=0, per_term=True)
        min_weight = terms.per_term(min_weight, "min_weight", base.dtype)
    if max_weight is not None:
        config.check_number("max_weight", max_weight, low=0, low_open=True, per_term=True)
        max_weight = terms.per_term(max_weight, "max_weight", base.dtype)

    def bounds_of(base: jax.Array) -> tuple[jax.Array, jax.Array]:
        low, high = jnp.zeros_like(base), jnp.full_like(base, jnp.inf)
        if bounds is not None:
            low, high = base * bounds[0], base * bounds[1]
        low = low if min_weight is None else min_weight
        high = high if max_weight is None else max_weight
        return low, high

    values = config.concrete((*bounds_of(base), base))
    if values is not None:
        lows, highs, bases = np.split(values, 3)
        for name, lo, hi, b, adapts in zip(terms.names, lows, highs, bases, adaptive, strict=True):
            if not lo < hi:
                raise ValueError(
                    f"the bounds of {name!r} must satisfy low < high, got [{lo:.6g}, {hi:.6g}] "
                    + detail
                )
            if adapts and not lo <= b <= hi:
                raise ValueError(
                    f"base_weights[{name!r}]={b:.6g} lies outside its bounds [{lo:.6g}, {hi:.6g}]"
                )
    return bounds_of


# The stages of update ------------------------------------------------------------------------


def _read_inputs(terms: Terms, losses, grad_norms, grad_stats, axis_name, dtype):
    """This step's losses and gradient statistics as ``(n,)`` vectors, and which are finite.

    ``grad_norms`` joins ``grad_stats`` as ``"norm"``; each statistic is one global scalar or
    one per term. Under ``axis_name`` every input is averaged over the replicas.
    """
    loss = terms.vector(losses, "losses", dtype)
    if grad_stats is not None and not isinstance(grad_stats, Mapping):
        raise ValueError(f"grad_stats must be a dict of gradient statistics, got {grad_stats!r}")
    named = dict(grad_stats or {})
    if grad_norms is not None:
        if "norm" in named:
            raise ValueError("give the gradient norm once: grad_norms= or grad_stats['norm']")
        named["norm"] = grad_norms
    check_statistics(named)
    gradients = {
        name: _gramian_matrix(terms, value, dtype)
        if name == GRAMIAN
        else terms.per_term(
            value, "grad_norms" if name == "norm" else f"grad_stats[{name!r}]", dtype
        )
        for name, value in named.items()
    }
    if axis_name is not None:
        loss, gradients = jax.lax.pmean((loss, gradients), axis_name)
    finite = jnp.isfinite(loss)
    for name, value in gradients.items():
        if name == GRAMIAN:  # a NaN in g_i fills row and column i; the diagonal tells whose
            finite &= jnp.isfinite(jnp.diagonal(value))
        else:
            finite &= jnp.isfinite(value)
    return loss, gradients, finite


def _gramian_matrix(terms: Terms, value, dtype) -> jax.Array:
    """The ``(n, n)`` Gramian given as ``grad_stats["gramian"]``, in the terms' leaf order."""
    if np.shape(value) != (terms.size, terms.size):
        raise ValueError(
            f"grad_stats['gramian'] must be an ({terms.size}, {terms.size}) matrix of the inner "
            f"products of the per-term gradients, in the order of terms {list(terms.names)}; "
            f"got shape {np.shape(value)}"
        )
    return jnp.asarray(value).astype(dtype)


def _check_state(state: Any, rule: Rule, base: jax.Array) -> None:
    """Raises ``ValueError`` unless ``state`` is an :class:`AdaptiveState` whose rule state has
    the structure this weighting's rule keeps (not another weighting's state)."""
    if not isinstance(state, AdaptiveState):
        raise ValueError(
            "update expects the adaptive_optax.AdaptiveState made by this weighting's init, "
            f"got {type(state).__name__}"
        )
    expected = jax.tree.structure(
        jax.eval_shape(rule.init, jax.ShapeDtypeStruct(base.shape, base.dtype))
    )
    if jax.tree.structure(state.rule_state) != expected:
        raise ValueError(
            "update got the state of another weighting: its rule_state is "
            f"{type(state.rule_state).__name__} with structure "
            f"{jax.tree.structure(state.rule_state)}, this weighting's rule keeps {expected}; "
            "pass the state made by this weighting's init"
        )


def _heal(terms: Terms, state: AdaptiveState, initial_base, dtype):
    """The state's base, current and previous weights as vectors, a corrupted value replaced.

    A stored weight that is not finite (a corrupted checkpoint) is reset to its base weight; a
    base weight that is not finite and positive, to the one the weighting was built with.
    """
    base = terms.vector(state.base_weights, "state.base_weights", dtype)
    bad_base = ~(jnp.isfinite(base) & (base > 0))
    base = jnp.where(bad_base, initial_base, base)
    weights = terms.vector(state.weights, "state.weights", dtype)
    corrupt = bad_base | ~jnp.isfinite(weights)
    weights = jnp.where(corrupt, base, weights)
    previous = terms.vector(state.previous_weights, "state.previous_weights", dtype)
    previous = jnp.where(jnp.isfinite(previous), previous, base)
    return base, weights, previous, corrupt


def _spikes(settings: Settings, state: AdaptiveState, loss, gradients, finite):
    """Which terms' loss or gradient norm spikes this step; the spike statistics after it."""
    if settings.spike_threshold is None:
        return jnp.zeros_like(finite), state.spike_stats
    return detect_spikes(
        state.spike_stats,
        loss,
        gradients.get("norm"),
        finite,
        threshold=settings.spike_threshold,
        decay=settings.spike_decay,
        warmup=SPIKE_WARMUP,
    )


def _propose(rule: Rule, every, signals: Signals, weights, base, rule_state):
    """The rule's proposal, on the steps it is consulted (the current weights on the others).

    A non-finite leaf of the rule's new state keeps its previous value.
    """

    def consult():
        proposal, new_rule_state = rule.propose(signals, weights, base, rule_state)
        new_rule_state = jax.tree.map(_keep_finite, new_rule_state, rule_state)
        return proposal.astype(weights.dtype), new_rule_state

    if isinstance(every, int) and every == 1:
        return consult()
    due = (signals.step - 1) % every == 0
    return jax.lax.cond(due, consult, lambda: (weights, rule_state))


def _keep_finite(new, old):
    """``new`` where finite, else ``old``, in ``old``'s dtype (a rule may compute wider)."""
    if jnp.issubdtype(jnp.result_type(new), jnp.inexact):
        return jnp.where(jnp.isfinite(new), new, old).astype(jnp.result_type(old))
    return jnp.asarray(new).astype(jnp.result_type(old))


def _gate(settings: Settings, state: AdaptiveState, signals: Signals, active):
    """Consecutive stable steps, and where a proposal may land this step."""
    calm = signals.finite & (signals.rel_variance < settings.variance_threshold)
    stable = jnp.where(calm, optax.safe_increment(state.stable_steps), 0)
    open_gate = (
        active
        & signals.finite
        & (signals.step > settings.warmup_steps)
        & (signals.step - state.last_change >= settings.cooling_period)
        & (stable >= settings.min_stable_steps)
    )
    return stable, open_gate


def _limit(settings: Settings, proposal, weights, low, high, losses):
    """The proposal within ``max_change`` of the current weight and within the bounds.

    Valid when the proposal and its weighted loss are finite. The product is never formed:
    ``|w| * |loss| <= max`` is tested as ``|w| <= max / max(|loss|, 1)``, which holds on every
    backend (a fused ``isfinite(w * loss)`` can be simplified away by a compiler).
    """
    if settings.max_change is not None:
        change = jnp.asarray(settings.max_change, proposal.dtype)
        proposal = jnp.clip(proposal, weights * (1 - change), weights * (1 + change))
    proposal = jnp.clip(proposal, low, high)
    largest = jnp.finfo(losses.dtype).max
    valid = jnp.abs(proposal).astype(losses.dtype) <= largest / jnp.maximum(jnp.abs(losses), 1.0)
    return proposal, valid


def _apply_or_roll_back(
    settings: Settings, step, active, finite, applied, proposal, weights, previous, base, state
):
    """The new weights, previous weights and last-change steps, and which terms rolled back."""
    new_weights = jnp.where(applied, proposal, weights)
    previous = jnp.where(applied, weights, previous)
    last_change = jnp.where(applied, step, state.last_change)
    undone = jnp.zeros_like(applied)
    if settings.auto_rollback:
        # A non-finite input soon after an adjustment is the failure the seed feared: a weight
        # change that destabilised training. Undo it and restart the cooling period, so that the
        # next adjustment waits until training has been finite for a full period.
        undone = (
            active
            & ~finite
            & (step - last_change < settings.cooling_period)
            & (new_weights != previous)
        )
        new_weights = jnp.where(undone, previous, new_weights)
        last_change = jnp.where(undone, step, last_change)
    # Disabled or not adaptive: the base weight, with nothing to roll back to.
    new_weights = jnp.where(active, new_weights, base)
    previous = jnp.where(undone | ~active, new_weights, previous)
    return new_weights, previous, last_change, undone


def _cut_on_spikes(settings: Settings, step, cut, weights, low, new_weights, previous, last_change):
    """A spiking term's weight cut at once to ``spike_factor`` times its value, within bounds.

    The cut is the new rollback target (a rollback must never undo a safety cut) and starts a
    cooling period, so the weight comes back only through the usual gates.
    """
    factor = jnp.asarray(settings.spike_factor, weights.dtype)
    lowered = jnp.minimum(jnp.maximum(weights * factor, low), new_weights)
    new_weights = jnp.where(cut, lowered, new_weights)
    previous = jnp.where(cut, new_weights, previous)
    last_change = jnp.where(cut, step, last_change)
    return new_weights, previous, last_change
