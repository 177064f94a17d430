"""The types every weighting shares: its state, its (init, update) pair and the rule protocol.

Shapes are written for one weighting; a state batched with ``jax.vmap`` has the same fields
with leading batch axes, and every function of this library that reads a state accepts it.
``n`` is the number of loss terms; per-term vectors follow the leaf order of the base weights
(``jax.tree.leaves``), and :func:`adaptive_optax.metrics` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import chex

PyTree = Any


class Counters(NamedTuple):
    """Per-term event counts, and when non-finite inputs came: int32 ``(n,)`` vectors.

    Counts saturate instead of wrapping.

    Attributes:
      adjustments: weight changes applied.
      rejected: proposed changes refused by validation (non-finite weight or weighted loss).
      nonfinite: steps whose loss or gradient statistic was NaN or +/-Inf, or whose gradient
        statistic was negative (a norm cannot be: a caller's bug): such an input is skipped.
      rollbacks: adjustments undone, automatically or by :func:`adaptive_optax.rollback`.
      healed: stored weights found non-finite (a corrupted state) and reset to the base.
      spikes: steps whose loss or gradient norm spiked (see the spike guard of
        :func:`adaptive_optax.guarded`).
      first_nonfinite_step: the ``step`` of the first update that saw this term's loss or
        gradient statistic NaN or +/-Inf (0: none yet): which term went bad first.
      last_nonfinite_step: the ``step`` of the last such update (0: none yet).
    """

    adjustments: chex.Array
    rejected: chex.Array
    nonfinite: chex.Array
    rollbacks: chex.Array
    healed: chex.Array
    spikes: chex.Array
    first_nonfinite_step: chex.Array
    last_nonfinite_step: chex.Array


class RunningStats(NamedTuple):
    """The running statistics of each term, shared by every rule: the loss history.

    Only finite steps are folded in. Every field is an ``(n,)`` vector of the statistics
    dtype (float32, or float64 for float64 weights) unless stated. "Recent" statistics are
    exponential moving averages of span ``window`` (decay ``1 - 2 / (window + 1)``, the
    centre of mass of a window of that many steps), bias-corrected as in Adam.

    Attributes:
      loss_count: int32, finite losses seen.
      first_loss: the first finite loss (0 until one is seen).
      previous_loss: the last finite loss (0 until one is seen).
      loss_mean: bias-corrected EMA of the losses with decay ``ema_decay`` (the running mean).
      recent_mean: bias-corrected EMA of the losses of span ``window``.
      rel_variance: bias-corrected EMA of span ``window`` of the squared relative deviation
        ``((loss - recent_mean) / |recent_mean|) ** 2``: the loss's recent variance / mean**2,
        scale-free and computed without squaring a loss, so it cannot overflow.
      grad_count: int32, finite gradient norms seen.
      grad_mean: bias-corrected EMA of span ``window`` of the gradient norms.
    """

    loss_count: chex.Array
    first_loss: chex.Array
    previous_loss: chex.Array
    loss_mean: chex.Array
    recent_mean: chex.Array
    rel_variance: chex.Array
    grad_count: chex.Array
    grad_mean: chex.Array


class LogStats(NamedTuple):
    """Running statistics of ``log x`` for one kind of value, per term: ``(n,)`` each.

    Attributes:
      count: int32, positive finite values seen.
      mean: bias-corrected EMA of ``log x`` (of the clipped value).
      variance: bias-corrected EMA of the squared deviation of ``log x`` from ``mean``.
    """

    count: chex.Array
    mean: chex.Array
    variance: chex.Array


class SpikeStats(NamedTuple):
    """What the spike guard keeps: :class:`LogStats` of the losses and of the gradient norms.

    Attributes:
      loss: statistics of the log losses (positive losses only).
      grad: statistics of the log gradient norms.
    """

    loss: LogStats
    grad: LogStats


class AdaptiveState(NamedTuple):
    """State of a loss weighting: arrays of fixed shape and dtype, safe to jit, scan and save.

    Attributes:
      step: int32 scalar, number of ``update`` calls.
      enabled: bool scalar; when False the weights are the base weights.
      weights: the current weights, in the structure of the base weights (dtype ``dtype``).
      previous_weights: the weights before the last adjustment, the target of a rollback;
        same structure.
      base_weights: the base weights at ``step``, same structure: the base the weights were
        adapted around. At each ``update`` the weighting's own base weights win (constant
        and scheduled alike) and the weights are carried to them with their factor
        ``weight / base``: a checkpoint resumed with edited base weights follows the edit. A
        scheduled base weight holds its value at ``step`` (0 while the term is absent).
      last_change: int32 ``(n,)``, step of the last adjustment or rollback (0: none yet).
      stable_steps: int32 ``(n,)``, consecutive stable steps (finite, and relative variance
        below the threshold).
      away: int32 ``(n,)``, why each weight is away from its base now: an index into
        :data:`adaptive_optax.AWAY_REASONS` (0: at its base).
      away_since: int32 ``(n,)``, the step it left its base for that reason (0 at its base).
      counters: per-term event counts, see :class:`Counters`.
      stats: the shared running statistics, see :class:`RunningStats`.
      spike_stats: the spike guard's log-scale statistics of the losses and gradient norms,
        which a spike does not inflate (see :class:`SpikeStats`; left empty when the guard
        is off).
      start_ramp: ``(n,)`` the start ramp's progress per term, from 0 (the weight at its
        lower bound) to 1 (the ramp is over; 1 from the start when ``ramp_steps=0``), see
        ``ramp_steps`` of :func:`adaptive_optax.guarded`.
      weight_average: ``(n,)`` the running mean (bias-corrected EMA of decay ``ema_decay``)
        of the normalized weights ``w / sum(w)``: what :func:`adaptive_optax.distill`
        freezes.
      rule_state: whatever state the rule keeps (an empty tuple for stateless rules).
    """

    step: chex.Array
    enabled: chex.Array
    weights: PyTree
    previous_weights: PyTree
    base_weights: PyTree
    last_change: chex.Array
    stable_steps: chex.Array
    away: chex.Array
    away_since: chex.Array
    counters: Counters
    stats: RunningStats
    spike_stats: SpikeStats
    start_ramp: chex.Array
    weight_average: chex.Array
    rule_state: PyTree


class UpdateFn(Protocol):
    def __call__(
        self,
        losses: PyTree,
        state: AdaptiveState,
        *,
        grad_norms: PyTree | None = None,
        grad_stats: Mapping[str, PyTree] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, AdaptiveState]: ...


class LossWeighting(NamedTuple):
    """A pair of pure functions, as an ``optax.GradientTransformation`` is.

    Attributes:
      init: ``init() -> AdaptiveState``.
      update: ``update(losses, state, *, grad_norms=None, grad_stats=None) -> (weights,
        new_state)``; the returned weights equal ``new_state.weights`` and weight the next
        step's losses. ``grad_stats`` maps names of gradient statistics (see ``needs``) to one
        global scalar or one scalar per term; ``grad_norms=x`` is short for
        ``grad_stats={"norm": x}``. Other keyword arguments are ignored, as in optax.
      needs: the gradient statistics the rule reads (keys of
        ``adaptive_optax.GRADIENT_STATISTICS``: ``"norm"``, ``"max_abs"``, ...);
        :func:`adaptive_optax.weight_gradients` computes them from per-term gradients.
    """

    init: Callable[[], AdaptiveState]
    update: UpdateFn
    needs: tuple[str, ...] = ()


class Signals(NamedTuple):
    """What the shared statistics say about one step, per term: the input of every rule.

    Every array is finite and ``(n,)``: a term whose input was not finite carries
    placeholders (a loss of 0) and ``finite=False``, and its proposal is ignored by the guards.

    Attributes:
      step: int32 scalar, the step being taken (1 on the first update).
      losses: this step's losses.
      finite: bool, this step's loss and gradient statistics are finite.
      loss_count: int32, finite losses seen before this step: ``first_loss`` and
        ``previous_loss`` hold a loss where it is positive.
      first_loss: the first finite loss (this step's if none came before).
      previous_loss: the last finite loss before this step (this step's if none came before).
      loss_mean: the running mean (bias-corrected EMA) of the losses before this step.
      deviation: ``(loss - loss_mean) / max(|loss_mean|, eps)``, 0 with no history.
      rel_variance: the recent relative variance of the loss, this step included.
      grad_mean: recent mean of the gradient norms before this step (0 with no history).
      has_grad_history: bool, a finite gradient norm was seen before this step.
      grad_stats: ``{name: (n,)}`` this step's gradient statistics (``"norm"`` and any other
        given to ``update``), 0 where not finite.
    """

    step: chex.Array
    losses: chex.Array
    finite: chex.Array
    loss_count: chex.Array
    first_loss: chex.Array
    previous_loss: chex.Array
    loss_mean: chex.Array
    deviation: chex.Array
    rel_variance: chex.Array
    grad_mean: chex.Array
    has_grad_history: chex.Array
    grad_stats: Mapping[str, chex.Array]

    @property
    def grad_norms(self) -> chex.Array | None:
        """This step's gradient norms, ``grad_stats["norm"]``, or None when none were given."""
        return self.grad_stats.get("norm")


class Rule(NamedTuple):
    """A rule proposes weights; the guards of :func:`adaptive_optax.guarded` decide what lands.

    Attributes:
      init: ``init(base_weights) -> rule_state`` from the ``(n,)`` base weights.
      propose: ``propose(signals, weights, base_weights, rule_state) -> (proposal, rule_state)``;
        ``weights``, ``base_weights`` and ``proposal`` are ``(n,)`` vectors. The rule must
        leave the state of terms with ``signals.finite == False`` unchanged; non-finite leaves
        of a returned state are replaced by their previous values.
      needs: gradient statistics the rule reads, keys of
        ``adaptive_optax.GRADIENT_STATISTICS`` (``signals.grad_stats[name]``).
      per_term_base: whether the rule's scale is that of a mean (the Gramian methods, whose
        uniform weights are ``1/n``): then :func:`adaptive_optax.guarded` stores the base
        weights divided by the number of terms ``n``, so that the weights at rest (initial,
        disabled, not adaptive, left out of a step) are the method's uniform weights, not
        ``n`` times them; the rule receives those stored base weights.
    """

    init: Callable[[chex.Array], PyTree]
    propose: Callable[[Signals, chex.Array, chex.Array, PyTree], tuple[chex.Array, PyTree]]
    needs: tuple[str, ...] = ()
    per_term_base: bool = False
