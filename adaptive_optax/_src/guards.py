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

from adaptive_optax._src import validation
from adaptive_optax._src.base import AdaptiveState, Counters, LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.gradients import GRAMIAN, check_statistics
from adaptive_optax._src.schedules import (
    ENTRY_SPIKE_WARMUP,
    Schedules,
    base_vector,
    entering,
    follow,
    scheduled_base,
)
from adaptive_optax._src.spikes import detect_spikes, init_spike_stats
from adaptive_optax._src.statistics import (
    at_least_float32,
    count_where,
    ema_update,
    init_stats,
    update_stats,
)
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
    moves: str
    ramp_steps: int
    spike_prior: Any
    normalize: str | None


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
    moves: str = "weights",
    ramp_steps: int = 0,
    spike_prior: float | None = None,
    normalize: str | None = None,
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
      base_weights: a pytree of positive floats, one per loss term; a leaf may be a schedule,
        a callable of the step such as an optax schedule, for a term that enters at a step
        (its base 0 before: the term is absent, its loss not read) or anneals. Weights, bounds,
        guards, the spike guard and :func:`adaptive_optax.disable` follow the scheduled base;
        a schedule is probed at step 0 (it must give a finite scalar >= 0), and a value that is
        not finite and >= 0 later keeps the previous base and is counted as ``healed``.
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
        the weights in between: for a rule whose solver is expensive. In-graph
        (``lax.cond``): the rule's computation is skipped, not masked; the statistics and the
        spike guard still see every step.
      moves: what the rule may move: ``"weights"`` (each weight, and so their total scale) or
        ``"ratios"``: each proposal is rescaled so that the adaptive terms whose gate is open
        keep their total, stepped toward the total of their base weights by at most
        ``max_change`` per adjustment. Under ``"ratios"`` only the spike guard's cut (fast)
        and this slow return toward the base total change the scale: the rule is a
        re-weighting, not a learning-rate schedule. ``max_change`` and the bounds still win
        where they bind, so the total is kept up to them; with one adaptive term the rule
        moves nothing and only the spike guard and its recovery act.
      ramp_steps: the slow start (0: off). Each adaptive weight starts at its lower bound,
        under a ceiling that rises linearly from the lower bound to the base weight over
        ``ramp_steps`` calm steps (finite, stable in the sense of ``variance_threshold``, no
        spike), as learning-rate warmup does for the step size; after the ramp the usual
        upper bound applies. The weight rises only through the rule's proposals and the slow
        gates: a rule that proposes its base (``base_rule``, or one that steps back toward
        it) follows the ramp up, the seed's rule, which lowers the weight of a falling loss,
        stays low. A spike during the ramp cuts the weight as usual and the ceiling restarts
        from the cut weight. With ``bounds=None`` the lower bound is 0, where a rule that
        multiplies the weight stays: give ``min_weight``. A Python int.
      spike_prior: the spike guard's prior standard deviation of a log loss or log gradient
        norm (> 0), or None. With a prior the guard judges from a term's second value on
        instead of after 10 values, the observed variance shrunk toward ``spike_prior ** 2``
        with the weight of 10 values (``adaptive_optax._src.spikes``); 0.25 lets a jump by a
        factor ``exp(0.75) = 2.1`` count as a spike at ``spike_threshold=3``.
      normalize: the scale normalisation: ``None``, ``"first_loss"`` or ``"running"``. The
        rule, the bounds, the ramp and ``moves="ratios"`` then work around normalised base
        weights ``b_i * c / L_i``, with ``L_i`` the term's first finite loss (GradNorm's
        ``L_i(0)``) or its running mean, and ``c`` keeping the adaptive terms' base total:
        terms whose losses differ by orders of magnitude start on a common scale, and the
        bounds are factors of the normalised base. ``"first_loss"`` is fixed after the first
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
        moves=moves,
        ramp_steps=ramp_steps,
        spike_prior=spike_prior,
        normalize=normalize,
    )
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
    bounds_of = _bounds(
        terms,
        jnp.where(schedules.scheduled, 1.0, initial_base).astype(dtype),
        adaptive & ~schedules.scheduled,
        bounds,
        min_weight,
        max_weight,
    )

    # a scheduled term's loss settles for a while after it enters (an adversarial loss while
    # the discriminator warms up): the spike guard waits longer before judging it
    spike_warmup = np.where(schedules.scheduled, ENTRY_SPIKE_WARMUP, SPIKE_WARMUP)

    ramping = adaptive & (settings.ramp_steps > 0)
    start = jnp.where(ramping, bounds_of(initial_base)[0], initial_base)

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
            counters=Counters(*[zeros] * len(Counters._fields)),
            stats=init_stats(terms.size, stats_dtype),
            spike_stats=init_spike_stats(terms.size, stats_dtype),
            start_ramp=jnp.where(ramping, 0.0, 1.0).astype(stats_dtype),
            weight_average=normalised(start.astype(stats_dtype)),
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
        base, weights, previous, corrupt = _heal(terms, state, initial_base, dtype, schedules)
        present, entered = True, False
        if schedules:
            # the losses of this step were weighted with the base before it: a term whose base
            # was 0 was absent, and its loss is not read (not folded, judged or counted)
            present = base > 0
            before, _ = scheduled_base(schedules, jnp.maximum(state.step - 1, 0), base, rest_scale)
            entered = entering(before, base)  # a term whose loss is read from this step on
            base, weights, previous, bad_schedule = _follow_schedules(
                schedules, step, base, weights, previous, rest_scale
            )
            corrupt |= bad_schedule
        missing = present & ~finite
        finite = finite & present
        stats, signals = update_stats(
            state.stats,
            loss,
            gradients,
            finite,
            step,
            ema_decay=settings.ema_decay,
            window=settings.window,
        )
        rule_base = base
        if settings.normalize is not None:
            rule_base = _normalized_base(settings.normalize, base, stats, adaptive)
        spiked, spike_stats = _spikes(
            settings, state, loss, gradients, finite, entered, spike_warmup, schedules.scheduled
        )
        active = state.enabled & adaptive
        stable, open_gate = _gate(settings, state, signals, active)
        low, high = bounds_of(rule_base)
        ramping = active & (state.start_ramp < 1)  # False for a corrupted (NaN) progress
        calm = (stable > 0) & ~spiked
        start_ramp, ramp_base = state.start_ramp, rule_base
        if settings.ramp_steps:
            # the slow start moves the base the weights follow, as a schedule does
            advanced = jnp.minimum(start_ramp + 1.0 / settings.ramp_steps, 1.0)
            start_ramp = jnp.where(ramping & calm, advanced, start_ramp)
            before = low + (rule_base - low) * state.start_ramp.astype(rule_base.dtype)
            ramp_base = low + (rule_base - low) * start_ramp.astype(rule_base.dtype)
            ramp_base = jnp.where(ramping, ramp_base, rule_base)
            weights = jnp.where(ramping, follow(weights, before, ramp_base), weights)
            previous = jnp.where(ramping, follow(previous, before, ramp_base), previous)
        proposal, rule_state = _propose(
            rule, settings.every, signals, weights, ramp_base, state.rule_state
        )
        proposal = proposal.astype(dtype)
        if settings.moves == "ratios":
            proposal = _keep_total(proposal, weights, ramp_base, open_gate, settings.max_change)
        proposal, valid = _limit(settings, proposal, weights, low, high, loss)
        wants = open_gate & (proposal != weights)
        applied = wants & valid

        # stages with many same-shaped inputs take them by name (a swap fails loudly)
        new_weights, previous, last_change, undone = _apply_or_roll_back(
            settings,
            step=step,
            active=active,
            finite=~missing,
            applied=applied,
            proposal=proposal,
            weights=weights,
            previous=previous,
            base=base,
            state=state,
        )
        if settings.ramp_steps:  # during the slow start no weight exceeds the ramped base
            new_weights = jnp.where(ramping, jnp.minimum(new_weights, ramp_base), new_weights)
        cut = spiked & active
        new_weights, previous, last_change = _cut_on_spikes(
            settings,
            step=step,
            cut=cut,
            weights=weights,
            low=low,
            new_weights=new_weights,
            previous=previous,
            last_change=last_change,
        )
        if schedules:  # a term absent at the next step weighs nothing, whatever its bounds
            new_weights = jnp.where(base > 0, new_weights, 0)
            previous = jnp.where(base > 0, previous, 0)
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
                nonfinite=count_where(counters.nonfinite, missing),
                rollbacks=count_where(counters.rollbacks, undone),
                healed=count_where(counters.healed, corrupt),
                spikes=count_where(counters.spikes, spiked),
                first_nonfinite_step=jnp.where(
                    missing & (counters.first_nonfinite_step == 0),
                    step,
                    counters.first_nonfinite_step,
                ),
                last_nonfinite_step=jnp.where(missing, step, counters.last_nonfinite_step),
            ),
            stats=stats,
            spike_stats=spike_stats,
            start_ramp=jnp.where(jnp.isfinite(start_ramp), start_ramp, 1.0).astype(stats_dtype),
            weight_average=_average(state, normalised(new_weights.astype(stats_dtype)), settings),
            rule_state=rule_state,
        )
        return new_state.weights, new_state

    return LossWeighting(init, update, needs)


# Construction --------------------------------------------------------------------------------


def _check_settings(**values: Any) -> Settings:
    """Validates each setting once, naming it and its value."""
    if values["max_change"] is not None:
        validation.check_number(
            "max_change", values["max_change"], low=0, high=1, low_open=True, high_open=True
        )
    for name in ("warmup_steps", "cooling_period", "min_stable_steps"):
        validation.check_number(name, values[name], low=0, integer=True)
    validation.check_number(
        "variance_threshold", values["variance_threshold"], low=0, low_open=True
    )
    validation.check_number("ema_decay", values["ema_decay"], low=0, high=1, high_open=True)
    validation.check_number("window", values["window"], low=1)
    if values["spike_threshold"] is not None:
        validation.check_number("spike_threshold", values["spike_threshold"], low=0, low_open=True)
    validation.check_number(
        "spike_factor", values["spike_factor"], low=0, high=1, low_open=True, high_open=True
    )
    validation.check_number("spike_decay", values["spike_decay"], low=0, high=1, high_open=True)
    validation.check_number("every", values["every"], low=1, integer=True)
    _check_choice("moves", values["moves"], ("weights", "ratios"))
    _check_choice("normalize", values["normalize"], (None, "first_loss", "running"))
    ramp = values["ramp_steps"]
    # static: it sets the initial weights
    validation.check_number("ramp_steps", ramp, low=0, integer=True, static=True)
    values["ramp_steps"] = int(ramp)
    if values["spike_prior"] is not None:
        validation.check_number("spike_prior", values["spike_prior"], low=0, low_open=True)
    values["auto_rollback"] = validation.check_flag("auto_rollback", values["auto_rollback"])
    return Settings(**values)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _bounds(terms: Terms, base, adaptive, bounds, min_weight, max_weight):
    """``bounds_of(base) -> (low, high)``, validated against the base weights given here."""
    if bounds is not None:
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError(
                f"bounds must be a pair (low, high) of factors or None, got {bounds!r}"
            )
        validation.check_number("bounds[0]", bounds[0], low=0)
        validation.check_number("bounds[1]", bounds[1], low=0, low_open=True)
    detail = f"(bounds={bounds}, min_weight={min_weight}, max_weight={max_weight})"
    if min_weight is not None:
        validation.check_number("min_weight", min_weight, low=0, per_term=True)
        min_weight = terms.per_term(min_weight, "min_weight", base.dtype)
    if max_weight is not None:
        validation.check_number("max_weight", max_weight, low=0, low_open=True, per_term=True)
        max_weight = terms.per_term(max_weight, "max_weight", base.dtype)

    def bounds_of(base: jax.Array) -> tuple[jax.Array, jax.Array]:
        low, high = jnp.zeros_like(base), jnp.full_like(base, jnp.inf)
        if bounds is not None:
            low, high = base * bounds[0], base * bounds[1]
        low = low if min_weight is None else min_weight
        high = high if max_weight is None else max_weight
        return low, high

    values = validation.concrete((*bounds_of(base), base))
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


def _heal(terms: Terms, state: AdaptiveState, initial_base, dtype, schedules: Schedules):
    """The state's base, current and previous weights as vectors, a corrupted value replaced.

    A stored weight that is not finite (a corrupted checkpoint) is reset to its base weight; a
    base weight that is not finite and positive (or 0, for a schedule), to the one the
    weighting was built with.
    """
    base = terms.vector(state.base_weights, "state.base_weights", dtype)
    allowed = (base > 0) | (schedules.scheduled & (base == 0))
    bad_base = ~(jnp.isfinite(base) & allowed)
    base = jnp.where(bad_base, initial_base, base)
    weights = terms.vector(state.weights, "state.weights", dtype)
    corrupt = bad_base | ~jnp.isfinite(weights)
    weights = jnp.where(corrupt, base, weights)
    previous = terms.vector(state.previous_weights, "state.previous_weights", dtype)
    previous = jnp.where(jnp.isfinite(previous), previous, base)
    return base, weights, previous, corrupt


def _follow_schedules(schedules: Schedules, step, base, weights, previous, scale=1.0):
    """The scheduled base weights at ``step``, the weights carried along with their factor.

    Returns ``(base, weights, previous, bad)``: ``bad`` marks schedules whose value was not
    finite and ``>= 0`` (the previous base is kept).
    """
    new_base, bad = scheduled_base(schedules, step, base, scale)
    weights, previous = follow(weights, base, new_base), follow(previous, base, new_base)
    return new_base, weights, previous, bad


def _spikes(
    settings: Settings,
    state: AdaptiveState,
    loss,
    gradients,
    finite,
    entered=False,
    warmup=SPIKE_WARMUP,
    scheduled=False,
):
    """Which terms' loss or gradient norm spikes this step; the spike statistics after it.

    When a scheduled term enters (``entered``: its loss is read from this step on), the
    gradient norms' statistics restart: a global gradient norm jumps with the new term, which
    is no spike of the others. ``warmup``: values each term's statistics need before it is
    judged (a scalar or per term). ``spike_prior`` applies to the terms not ``scheduled``; a
    scheduled term waits for ``warmup`` values of its own, with or without a prior.
    """
    if settings.spike_threshold is None:
        return jnp.zeros_like(finite), state.spike_stats
    spike_stats = state.spike_stats
    if entered is not False:
        grad = spike_stats.grad
        grad = grad._replace(count=jnp.where(entered, jnp.zeros_like(grad.count), grad.count))
        spike_stats = spike_stats._replace(grad=grad)
    return detect_spikes(
        spike_stats,
        loss,
        gradients.get("norm"),
        finite,
        threshold=settings.spike_threshold,
        decay=settings.spike_decay,
        warmup=warmup,
        prior_std=None
        if settings.spike_prior is None
        else jnp.where(scheduled, jnp.nan, settings.spike_prior),
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
        # the cooling period follows a change: the first adjustment waits only for warmup
        & ((state.last_change == 0) | (signals.step - state.last_change >= settings.cooling_period))
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
    settings: Settings, *, step, active, finite, applied, proposal, weights, previous, base, state
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


def _cut_on_spikes(
    settings: Settings, *, step, cut, weights, low, new_weights, previous, last_change
):
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


# The controller's options: scale normalisation, ratios only, slow start, the weight average ----


def normalised(weights: jax.Array) -> jax.Array:
    """``w / sum(w)`` for finite weights >= 0, without overflow; uniform when all are 0."""
    top = jnp.max(weights)
    scaled = weights / jnp.where(top > 0, top, 1.0)
    total = jnp.sum(scaled)
    uniform = jnp.full_like(weights, 1.0 / weights.shape[0])
    return jnp.where(total > 0, scaled / jnp.where(total > 0, total, 1.0), uniform)


def _normalized_base(how: str, base, stats, adaptive) -> jax.Array:
    """Base weights ``b_i * c / L_i`` over the adaptive terms with a loss seen, their total kept.

    ``L_i`` is ``|first_loss|`` or ``|loss_mean|``, floored at ``1e-8`` times the largest (so
    every ratio is at most 1e8 and finite); other terms keep their base weight.
    """
    scale = jnp.abs(stats.first_loss if how == "first_loss" else stats.loss_mean)
    known = adaptive & (stats.loss_count > 0)
    top = jnp.max(jnp.where(known, scale, 0.0))
    known &= top > 0
    relative = jnp.maximum(scale / jnp.where(top > 0, top, 1.0), 1e-8)  # in [1e-8, 1]
    b = base.astype(scale.dtype)
    inverse = jnp.where(known, b / relative, 0.0)
    peak = jnp.max(inverse)
    inverse = inverse / jnp.where(peak > 0, peak, 1.0)  # in [0, 1]: the sum cannot overflow
    total_base = jnp.sum(jnp.where(known, b, 0.0))
    total_inverse = jnp.sum(inverse)
    normalized = inverse * (total_base / jnp.where(total_inverse > 0, total_inverse, 1.0))
    good = known & jnp.isfinite(normalized) & (normalized > 0)
    return jnp.where(good, normalized, b).astype(base.dtype)


def _keep_total(proposal, weights, base, moving, max_change) -> jax.Array:
    """The proposal of the ``moving`` terms rescaled: only their ratios move.

    Their total is the current one, stepped toward their base total by at most
    ``max_change`` (all the way without it). With ``max_change`` the move toward the
    rescaled proposal is shortened as a whole until no term changes by more than
    ``max_change``, rather than clipped term by term (which would change the total). Terms
    whose proposal is not a finite number >= 0 are left to validation.
    """
    moving = moving & jnp.isfinite(proposal) & (proposal >= 0)
    held = jnp.where(moving, proposal, 0.0)
    top = jnp.max(held)
    ratios = held / jnp.where(top > 0, top, 1.0)  # in [0, 1]
    current = jnp.sum(jnp.where(moving, weights, 0.0))
    goal = jnp.sum(jnp.where(moving, base, 0.0))
    if max_change is not None:
        change = jnp.asarray(max_change, weights.dtype)
        goal = jnp.clip(goal, current * (1 - change), current * (1 + change))
    total = jnp.sum(ratios)
    rescaled = ratios * (goal / jnp.where(total > 0, total, 1.0))
    if max_change is not None:
        # one step of length theta toward the rescaled proposal, theta as large as max_change
        # allows every term: the ratios move the rule's way and the total moves toward goal
        step = jnp.where(moving, rescaled - weights, 0.0)
        room = change * weights / jnp.where(step != 0, jnp.abs(step), 1.0)
        theta = jnp.clip(jnp.min(jnp.where(step != 0, room, 1.0)), 0.0, 1.0)
        rescaled = weights + theta * step
    return jnp.where(moving & (top > 0), rescaled.astype(proposal.dtype), proposal)


def _ramp_position(weights, low, base) -> jax.Array:
    """Where ``weights`` stand on the ramp from ``low`` to ``base``, in ``[0, 1]``."""
    span = base - low
    position = (weights - low) / jnp.where(span > 0, span, 1.0)
    return jnp.where(span > 0, jnp.clip(position, 0.0, 1.0), 1.0)


def _ramp(settings: Settings, *, progress, ramping, calm, new_weights, low, base):
    """The slow start: a ceiling from ``low`` to ``base`` that rises on calm steps."""
    if settings.ramp_steps == 0:
        return new_weights, progress
    advanced = jnp.minimum(progress + 1.0 / settings.ramp_steps, 1.0)
    progress = jnp.where(ramping & calm, advanced, progress)
    ceiling = low + (base - low) * progress.astype(base.dtype)
    return jnp.where(ramping, jnp.minimum(new_weights, ceiling), new_weights), progress


def _average(state: AdaptiveState, ratios, settings: Settings) -> jax.Array:
    """The running mean of the normalised weights after this step (restarted if corrupted)."""
    average = ema_update(state.weight_average, state.step, ratios, settings.ema_decay)
    return jnp.where(jnp.isfinite(average), average, ratios)
