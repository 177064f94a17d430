"""``guarded``: any rule under the guards, in one staged ``update`` that owns their order.

Each guard is a record in a module of its own (its settings, their checks, its slice of the
state, its docs); :data:`TABLE` routes the flat keywords of :func:`guarded` into them, and
``update`` calls them in the order that is the safety argument: the slow gates decide whether
a proposal may land, the limits how much of it lands, then the rollback, the start ramp and,
last, the spike guard's cut, which nothing after it can undo.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adaptive_optax._src import validation
from adaptive_optax._src.base import AdaptiveState, Counters, LossWeighting, PyTree, Rule
from adaptive_optax._src.combinators import consulted_every
from adaptive_optax._src.gradients import check_statistics
from adaptive_optax._src.guards import always
from adaptive_optax._src.guards.away import START_RAMP, why_away
from adaptive_optax._src.guards.base_weights import (
    Normalization,
    Normalize,
    absent_forget,
    absent_weigh_nothing,
    at_step,
)
from adaptive_optax._src.guards.bounds import Bounds
from adaptive_optax._src.guards.change import ChangeLimit
from adaptive_optax._src.guards.cooling import Cooling
from adaptive_optax._src.guards.decision import Decision
from adaptive_optax._src.guards.ramp import StartRamp
from adaptive_optax._src.guards.ratios import Moves, RatiosOnly
from adaptive_optax._src.guards.rollback import Rollback
from adaptive_optax._src.guards.spike import SPIKE_WARMUP, SpikeGuard
from adaptive_optax._src.guards.stability import Stability
from adaptive_optax._src.guards.warmup import Warmup
from adaptive_optax._src.schedules import ENTRY_SPIKE_WARMUP, base_vector
from adaptive_optax._src.spikes import init_spike_stats
from adaptive_optax._src.statistics import (
    Statistics,
    at_least_float32,
    average_weights,
    init_stats,
    normalized,
    update_stats,
)
from adaptive_optax._src.terms import select, terms_of

TABLE: Mapping[str, type] = MappingProxyType(
    {
        # setting of guarded -> the record that owns it, in the order update reads them
        "ema_decay": Statistics,
        "window": Statistics,
        "normalize": Normalization,
        "spike_threshold": SpikeGuard,
        "spike_factor": SpikeGuard,
        "spike_decay": SpikeGuard,
        "spike_prior": SpikeGuard,
        "warmup_steps": Warmup,
        "cooling_period": Cooling,
        "min_stable_steps": Stability,
        "variance_threshold": Stability,
        "moves": RatiosOnly,
        "max_change": ChangeLimit,
        "bounds": Bounds,
        "min_weight": Bounds,
        "max_weight": Bounds,
        "auto_rollback": Rollback,
        "ramp_steps": StartRamp,
    }
)
"""The one table from the keyword settings of :func:`guarded` to the records that own them.

Each record's fields are its settings, and its ``checked(**settings)`` validates them."""

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


def checked_guards(settings: Mapping[str, Any]) -> dict[type, Any]:
    """``{record: record.checked(**its settings)}``, the settings routed by :data:`TABLE`.

    Raises:
      ValueError: from the first record whose setting is of the wrong type or out of range,
        naming it and its value.
    """
    owned: dict[type, dict[str, Any]] = {}
    for name, record in TABLE.items():
        owned.setdefault(record, {})[name] = settings[name]
    return {record: record.checked(**values) for record, values in owned.items()}  # type: ignore[attr-defined]


def _all_of(flags: list) -> jax.Array | None:
    """Whether every flag holds (a bool scalar), or None for no flag."""
    if not flags:
        return None
    return jnp.all(jnp.stack([jnp.asarray(f, bool) for f in flags]))


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
    moves: Moves = "weights",
    ramp_steps: int = 0,
    spike_prior: float | None = None,
    normalize: Normalize = None,
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
    decrease, as in TCP's AIMD).

    Each guard is a record in a module of ``adaptive_optax._src.guards`` that owns its
    settings, their checks and its slice of the state (see the guide, "Rules under guards").
    Every guard can be relaxed: ``max_change=None``, ``warmup_steps=0``, ``cooling_period=0``,
    ``min_stable_steps=0``, ``bounds=None``, ``auto_rollback=False``, ``spike_threshold=None``;
    ``RELAXED`` holds all but the bounds.

    Args:
      rule: the :class:`adaptive_optax.Rule` that proposes weights.
      base_weights: a pytree of positive floats, one per loss term; a leaf may be a schedule,
        a callable of the step such as an optax schedule, for a term that enters at a step
        (its base 0 before: the term is absent, its loss not read) or anneals. Weights, bounds,
        guards, the spike guard and :func:`adaptive_optax.disable` follow the scheduled base;
        a schedule is probed at step 0 (it must give a finite scalar >= 0), and a value that is
        not finite and >= 0 later keeps the previous base and is counted as ``healed``.
        These base weights win over a state's (one restored from a checkpoint written with
        other base weights, or made by another weighting): its weights are carried to them
        with their factor ``weight / base``. A scheduled term that returns after a pause (its
        base 0, then positive again) enters as at its first entry: empty statistics, the
        spike guard's entry warmup and the start ramp restart.
      adapt: the terms that adapt, as names (``"mel"``, ``"heads/stop"``) or a pytree of bools
        shaped like ``base_weights``; default: all.
      bounds: ``(low, high)`` factors of each base weight bounding its weight; ``None`` for
        ``[0, inf)``. Overridden by ``min_weight`` / ``max_weight``.
      min_weight: absolute lower bound, a scalar or a pytree shaped like ``base_weights``.
      max_weight: absolute upper bound, a scalar or a pytree shaped like ``base_weights``.
      max_change: largest relative change of a weight per adjustment, in ``(0, 1)``, or None.
      warmup_steps: no adjustment while ``step <= warmup_steps``.
      cooling_period: at least this many steps between two adjustments of a term (or a spike
        cut or rollback and the next adjustment); the first adjustment waits for warmup only.
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
        the weights in between: an alias of :func:`adaptive_optax.every_k`, the rule
        combinator (``guarded(every_k(rule, every), ...)``).
      moves: what the rule may move: ``"weights"`` (each weight, and so their total scale) or
        ``"ratios"``: each proposal is rescaled so that the adaptive terms whose gate is open
        keep their total, stepped toward the total of their base weights by at most
        ``max_change`` per adjustment. Under ``"ratios"`` only the spike guard's cut (fast)
        and this slow return toward the base total change the scale: the rule is a
        re-weighting, not a learning-rate schedule. ``max_change`` and the bounds still win
        where they bind, so the total is kept up to them; with one adaptive term the rule
        moves nothing and only the spike guard and its recovery act.
      ramp_steps: the length of the start ramp (0: off). Each adaptive weight starts at its
        lower bound, under a ceiling that rises linearly from the lower bound to the base
        weight over ``ramp_steps`` calm steps (finite, stable in the sense of
        ``variance_threshold``, no spike), as learning-rate warmup does for the step size;
        after the ramp the usual upper bound applies. The weight rises only through the
        rule's proposals and the slow gates: a rule that proposes its base (``base_rule``, or
        one that steps back toward it) follows the ramp up;
        :func:`adaptive_optax.loss_ratio_rule`, which lowers the weight of a falling loss,
        stays low. A spike during the ramp cuts the weight as usual and the ceiling restarts
        from the cut weight. With ``bounds=None`` the lower bound is 0, where a rule that
        multiplies the weight stays: give ``min_weight``. A Python int.
      spike_prior: the spike guard's prior standard deviation of a log loss or log gradient
        norm (> 0), or None. With a prior the guard judges from a term's second value on
        instead of after 10 values, the observed variance shrunk toward ``spike_prior ** 2``
        with the weight of 10 values (``adaptive_optax._src.spikes``); 0.25 lets a jump by a
        factor ``exp(0.75) = 2.1`` count as a spike at ``spike_threshold=3``.
      normalize: the scale normalization: ``None``, ``"first_loss"`` or ``"running"``. The
        rule, the bounds, the ramp and ``moves="ratios"`` then work around normalized base
        weights ``b_i * c / L_i``, with ``L_i`` the term's first finite loss (GradNorm's
        ``L_i(0)``) or its running mean, and ``c`` keeping the adaptive terms' base total:
        terms whose losses differ by orders of magnitude start on a common scale, and the
        bounds are factors of the normalized base. ``"first_loss"`` is fixed after the first
        step, so a noisy term, whose loss stays high, keeps its share; ``"running"`` follows
        the losses and hands that share away as ``1 / loss`` methods do. Non-adaptive terms,
        and every term while disabled, keep the base weights given here.
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
    arguments = dict(locals())  # the keyword settings, routed by TABLE
    terms = terms_of(base_weights)
    adaptive = select(terms, adapt)  # NumPy: concrete even when built under a trace
    needs = check_statistics(rule.needs)
    rule_in_range = validation.enclosing_verdicts()  # a preset's rule settings, if traced
    with validation.traced_settings() as in_range:
        guard = checked_guards(arguments)  # {record: the record, its settings checked}
        rule = consulted_every(rule, every, "every")  # every= is every_k(rule, every)
    try:
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError
    except TypeError:
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}") from None
    stats_dtype = at_least_float32(dtype)
    initial_base, schedules = base_vector(terms, base_weights, dtype)
    rest_scale = 1.0 / terms.size if rule.per_term_base else 1.0
    # at rest, the method's uniform weights (see Rule); a schedule's values scaled alike
    initial_base = initial_base * rest_scale
    # a schedule's base moves: its bounds are checked on a unit base, its base not against them
    with validation.traced_settings() as bounds_in_range:
        bounds_of = guard[Bounds].of(
            terms,
            jnp.where(schedules.scheduled, 1.0, initial_base).astype(dtype),
            adaptive & ~schedules.scheduled,
        )
    # A traced setting (jit, optax.inject_hyperparams) cannot be checked at construction: it
    # was clipped into its range, and a step with one out of range adjusts nothing (no
    # proposal lands, no spike cut) and counts it as rejected: None when none is traced.
    settings_ok = _all_of(rule_in_range + in_range + bounds_in_range)
    # a scheduled term's loss settles for a while after it enters (an adversarial loss while
    # the discriminator warms up): the spike guard waits longer before judging it
    spike_warmup = np.where(schedules.scheduled, ENTRY_SPIKE_WARMUP, SPIKE_WARMUP)
    start, start_ramp = guard[StartRamp].start(
        adaptive, bounds_of(initial_base)[0], initial_base, stats_dtype
    )

    empty_stats = init_stats(terms.size, stats_dtype)
    empty_spike_stats = init_spike_stats(terms.size, stats_dtype)

    def init() -> AdaptiveState:
        zeros = jnp.zeros((terms.size,), jnp.int32)
        weights = terms.tree(start)
        state = AdaptiveState(
            step=jnp.zeros([], jnp.int32),
            enabled=jnp.ones([], bool),
            weights=weights,
            previous_weights=weights,
            base_weights=terms.tree(initial_base),
            last_change=zeros,
            stable_steps=zeros,
            away=jnp.where(start_ramp < 1, START_RAMP, 0).astype(jnp.int32),
            away_since=zeros,
            counters=Counters(*[zeros] * len(Counters._fields)),
            stats=init_stats(terms.size, stats_dtype),
            spike_stats=init_spike_stats(terms.size, stats_dtype),
            start_ramp=start_ramp,
            weight_average=normalized(start.astype(stats_dtype)),
            rule_state=rule.init(initial_base),
        )
        # Every leaf its own buffer, so that a jitted step can donate the state (leaves above
        # share buffers, and a rule's state may hold this closure's base weights).
        return jax.tree.map(jnp.copy, state)

    def update(
        losses: PyTree,
        state: AdaptiveState,
        *,
        grad_norms: PyTree | None = None,
        grad_stats: Mapping[str, PyTree] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, AdaptiveState]:
        del extra_args
        always.check_state(state, rule, initial_base)
        step = optax.safe_increment(state.step)

        # 1. What came in, the base at this step, the shared statistics, the rule's proposal.
        loss, gradients, finite = always.read_inputs(
            terms, losses, grad_norms, grad_stats, axis_name, stats_dtype
        )
        healed = always.heal(terms, state, initial_base, dtype, schedules)
        now = at_step(healed, state, step, schedules, rest_scale, initial_base)
        missing = now.present & ~finite
        finite = finite & now.present
        # an absent term keeps nothing from before its pause: when it returns, it enters as at
        # its first entry (empty statistics, the start ramp from its beginning)
        stats_before, spike_before, ramp_before = absent_forget(
            now.present, state, empty=(empty_stats, empty_spike_stats, start_ramp)
        )
        stats, signals = update_stats(
            stats_before, loss, gradients, finite, step, **guard[Statistics]._asdict()
        )
        rule_base = guard[Normalization].base(now.base, stats, adaptive)
        spiked, spike_stats = guard[SpikeGuard].detect(
            spike_before,
            loss,
            gradients,
            finite,
            entered=now.entered,
            warmup=spike_warmup,
            scheduled=schedules.scheduled,
        )
        active = state.enabled & adaptive
        stable = guard[Stability].stable_count(state.stable_steps, signals)
        low, high = bounds_of(rule_base)
        # The start ramp moves the base the weights follow, as a schedule does.
        ramping = active & (ramp_before < 1)  # False for a corrupted (NaN) progress
        progress = guard[StartRamp].advance(
            ramp_before, ramping=ramping, calm=(stable > 0) & ~spiked
        )
        ramped = dict(ramping=ramping, low=low, base=rule_base)
        before = guard[StartRamp].ramped_base(ramp_before, **ramped)
        target = guard[StartRamp].ramped_base(progress, **ramped)
        weights, previous = guard[StartRamp].carry(now.weights, now.previous, before, target)
        proposal, rule_state = always.propose(rule, signals, weights, target, state.rule_state)

        # 2. The slow gates: whether a proposal may land.
        allowed = (
            active
            & signals.finite
            & guard[Warmup].allows(step)
            & guard[Cooling].allows(step, state.last_change)
            & guard[Stability].allows(stable)
        )
        if settings_ok is not None:
            allowed &= settings_ok
            spiked &= settings_ok

        # 3. The limits: how much of it lands.
        proposal = guard[RatiosOnly].keep_total(
            proposal.astype(dtype), weights, target, allowed, guard[ChangeLimit].max_change
        )
        proposal = guard[Bounds].clip(guard[ChangeLimit].limit(proposal, weights), low, high)
        decision = Decision.of(
            weights=weights,
            proposal=proposal,
            allowed=allowed,
            valid=always.valid(proposal, loss),
            previous=previous,
            last_change=state.last_change,
        )

        # 4. What lands, then the guards on what landed: rollback, rest, ramp, spike cut.
        decision = decision.land(step)
        decision = guard[Rollback].roll_back(
            decision,
            step=step,
            fault=active & missing,
            cooling_period=guard[Cooling].cooling_period,
        )
        decision = decision.at_rest(active, now.base)
        decision = guard[StartRamp].under_ceiling(decision, ramping=ramping, ceiling=target)
        decision = guard[SpikeGuard].cut(decision, step=step, spiked=spiked & active, low=low)
        away, away_since = why_away(
            decision,
            reason=state.away,
            since=state.away_since,
            step=step,
            base=jnp.where(active, rule_base, now.base),
            ramping=ramping,
        )
        new_weights, previous = absent_weigh_nothing(
            schedules, now.base, decision.new_weights, decision.previous
        )

        # 5. The new state.
        new_state = state._replace(
            step=step,
            weights=terms.tree(new_weights),
            previous_weights=terms.tree(previous),
            base_weights=terms.tree(now.base),
            last_change=decision.last_change,
            stable_steps=jnp.where(decision.landed | decision.cut, 0, stable),
            away=away,
            away_since=away_since,
            counters=decision.counted(
                state.counters,
                step=step,
                missing=missing,
                healed=now.corrupt,
                spiked=spiked,
                refused=None if settings_ok is None else active & ~settings_ok,
            ),
            stats=stats,
            spike_stats=spike_stats,
            start_ramp=StartRamp.stored(progress, stats_dtype),
            weight_average=average_weights(
                state.weight_average,
                state.step,
                normalized(new_weights.astype(stats_dtype)),
                guard[Statistics].ema_decay,
            ),
            rule_state=rule_state,
        )
        return new_state.weights, new_state

    return LossWeighting(init, update, needs)
