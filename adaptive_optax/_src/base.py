"""The types every weighting shares: its state, its (init, update) pair and the rule protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import chex
import jax
import jax.numpy as jnp

PyTree = Any


class Counters(NamedTuple):
    """Per-term event counts, each an int32 vector of shape ``(n_terms,)``.

    Attributes:
      adjustments: weight changes applied.
      rejected: proposed changes refused by validation (non-finite weight or weighted loss).
      nonfinite: steps whose loss or gradient statistic was NaN or +/-Inf.
      rollbacks: adjustments undone, automatically or by :func:`adaptive_optax.rollback`.
      healed: stored weights found non-finite (a corrupted state) and reset to the base.
    """

    adjustments: chex.Array
    rejected: chex.Array
    nonfinite: chex.Array
    rollbacks: chex.Array
    healed: chex.Array


class RunningStats(NamedTuple):
    """Running statistics of each term, shared by every rule.

    Attributes:
      loss_mean: ``(n_terms,)`` float, bias-corrected EMA of the finite losses (as in Adam).
      loss_count: ``(n_terms,)`` int32, finite losses seen so far.
      loss_window: ``(n_terms, window)`` float, ring buffer of the last finite losses.
      grad_window: ``(n_terms, window)`` float, ring buffer of the last finite gradient norms.
      grad_count: ``(n_terms,)`` int32, finite gradient norms seen so far.
    """

    loss_mean: chex.Array
    loss_count: chex.Array
    loss_window: chex.Array
    grad_window: chex.Array
    grad_count: chex.Array


class TermValues(NamedTuple):
    """The rows of :attr:`AdaptiveState.term_values`, one float per term each."""

    previous_weights: chex.Array
    base_weights: chex.Array
    loss_mean: chex.Array


class TermCounts(NamedTuple):
    """The rows of :attr:`AdaptiveState.term_counts`, one int32 per term each."""

    last_change: chex.Array
    stable_steps: chex.Array
    adjustments: chex.Array
    rejected: chex.Array
    nonfinite: chex.Array
    rollbacks: chex.Array
    healed: chex.Array
    loss_count: chex.Array
    grad_count: chex.Array


def _stack(rows, dtype) -> chex.Array:
    """``jnp.stack(rows)``, written as one select so that XLA computes it in one kernel.

    XLA:CPU lowers a concatenate of computed rows as one kernel per row; a select over the
    row index fuses into a single loop. Inside ``lax.scan`` this is most of an update's cost.
    """
    rows = [jnp.asarray(row).astype(dtype) for row in rows]
    shape = (len(rows), *jnp.shape(rows[0]))
    index = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    out = jnp.broadcast_to(rows[-1], shape)
    for i, row in enumerate(rows[:-1]):
        out = jnp.where(index == i, row, out)
    return out


class AdaptiveState(NamedTuple):
    """State of a loss weighting: arrays of fixed shape and dtype, safe to jit, scan and save.

    Per-term quantities are packed into three arrays, so that ``update`` writes a handful of
    buffers rather than one per quantity (inside ``lax.scan`` that is several times faster, and
    a jitted call from Python has fewer leaves to pass). Read them through the named views:
    :attr:`previous_weights`, :attr:`base_weights`, :attr:`last_change`, :attr:`stable_steps`,
    :attr:`counters` and :attr:`stats`. Per-term vectors follow the leaf order of ``weights``.

    Attributes:
      step: int32 scalar, number of ``update`` calls.
      enabled: bool scalar; when False the weights are the base weights.
      weights: the current weights, in the structure of the base weights.
      term_values: ``(3, n_terms)`` float, rows as in :class:`TermValues`.
      term_counts: ``(9, n_terms)`` int32, rows as in :class:`TermCounts`.
      windows: ``(2, n_terms, window)`` float, the ring buffers of the last finite losses and
        gradient norms.
      rule_state: whatever state the rule keeps (an empty tuple for stateless rules).
    """

    step: chex.Array
    enabled: chex.Array
    weights: PyTree
    term_values: chex.Array
    term_counts: chex.Array
    windows: chex.Array
    rule_state: PyTree

    @classmethod
    def pack(
        cls,
        *,
        step: chex.Array,
        enabled: chex.Array,
        weights: PyTree,
        values: TermValues,
        counts: TermCounts,
        loss_window: chex.Array,
        grad_window: chex.Array,
        rule_state: PyTree,
    ) -> AdaptiveState:
        """Builds a state from named per-term rows; values are stored in the windows' dtype."""
        return cls(
            step=step,
            enabled=enabled,
            weights=weights,
            term_values=_stack(values, loss_window.dtype),
            term_counts=_stack(counts, jnp.int32),
            windows=_stack([loss_window, grad_window], loss_window.dtype),
            rule_state=rule_state,
        )

    @property
    def values(self) -> TermValues:
        return TermValues(*self.term_values)

    @property
    def counts(self) -> TermCounts:
        return TermCounts(*self.term_counts)

    def replace_values(self, **rows: chex.Array) -> AdaptiveState:
        """A copy with the named rows of :attr:`term_values` replaced."""
        values = self.values._replace(**rows)
        return self._replace(term_values=_stack(values, self.term_values.dtype))

    def replace_counts(self, **rows: chex.Array) -> AdaptiveState:
        """A copy with the named rows of :attr:`term_counts` replaced."""
        counts = self.counts._replace(**rows)
        return self._replace(term_counts=_stack(counts, self.term_counts.dtype))

    @property
    def previous_weights(self) -> chex.Array:
        """``(n_terms,)`` the weights before the last adjustment (the rollback target)."""
        return self.values.previous_weights

    @property
    def base_weights(self) -> chex.Array:
        """``(n_terms,)`` the base weights the weighting was built with."""
        return self.values.base_weights

    @property
    def last_change(self) -> chex.Array:
        """``(n_terms,)`` step of the last adjustment or rollback (0: none yet)."""
        return self.counts.last_change

    @property
    def stable_steps(self) -> chex.Array:
        """``(n_terms,)`` consecutive stable steps."""
        return self.counts.stable_steps

    @property
    def counters(self) -> Counters:
        """Per-term event counts, see :class:`Counters`."""
        c = self.counts
        return Counters(c.adjustments, c.rejected, c.nonfinite, c.rollbacks, c.healed)

    @property
    def stats(self) -> RunningStats:
        """Running statistics, see :class:`RunningStats`."""
        c = self.counts
        return RunningStats(
            loss_mean=self.values.loss_mean,
            loss_count=c.loss_count,
            loss_window=self.windows[0],
            grad_window=self.windows[1],
            grad_count=c.grad_count,
        )


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
        step's losses. ``grad_norms`` is None, one global norm or one norm per term;
        ``grad_stats`` maps the names in ``needs`` (other than ``"norm"``) to one scalar per
        term. Other keyword arguments are ignored, as in optax.
      needs: gradient statistics the rule uses (keys of
        ``adaptive_optax.GRADIENT_STATISTICS``, ``"norm"`` being ``grad_norms``);
        :func:`adaptive_optax.weight_gradients` computes them from per-term gradients.
    """

    init: Callable[[], AdaptiveState]
    update: UpdateFn
    needs: tuple[str, ...] = ()


class Signals(NamedTuple):
    """What the shared statistics say about one step, per term: the input of every rule.

    Every array is finite: a term whose input was not finite carries placeholders and
    ``finite=False``, and its proposal is ignored by the guards.

    Attributes:
      losses: ``(n_terms,)`` this step's losses.
      finite: ``(n_terms,)`` bool, this step's loss (and gradient norm, if given) is finite.
      loss_mean: ``(n_terms,)`` bias-corrected EMA of the losses before this step.
      deviation: ``(n_terms,)`` ``(loss - loss_mean) / max(|loss_mean|, eps)``, 0 with no history.
      rel_variance: ``(n_terms,)`` variance / mean**2 of the loss window, this step included.
      grad_norms: ``(n_terms,)`` this step's gradient norms, or None when none were given.
      grad_mean: ``(n_terms,)`` mean of the gradient-norm window before this step (0 if empty).
      has_grad_history: ``(n_terms,)`` bool, the gradient-norm window held a value before this step.
      grad_stats: ``{name: (n_terms,)}`` the other gradient statistics given to ``update``
        (see :attr:`Rule.needs`), zero where not finite.
      step: int32 scalar, the step being taken (1 on the first update).
    """

    losses: chex.Array
    finite: chex.Array
    loss_mean: chex.Array
    deviation: chex.Array
    rel_variance: chex.Array
    grad_norms: chex.Array | None
    grad_mean: chex.Array
    has_grad_history: chex.Array
    grad_stats: Mapping[str, chex.Array]
    step: chex.Array


class Rule(NamedTuple):
    """A rule proposes weights; the guards of :func:`adaptive_optax.guarded` decide what lands.

    Attributes:
      init: ``init(base_weights) -> rule_state`` from the ``(n_terms,)`` base weights.
      propose: ``propose(signals, weights, base_weights, rule_state) -> (proposal, rule_state)``;
        ``weights``, ``base_weights`` and ``proposal`` are ``(n_terms,)`` vectors. The rule must
        leave the state of terms with ``signals.finite == False`` unchanged; non-finite leaves
        of a returned state are replaced by their previous values.
      needs: gradient statistics the rule reads: ``"norm"`` (``signals.grad_norms``) and any
        other key of ``adaptive_optax.GRADIENT_STATISTICS`` (``signals.grad_stats[name]``).
    """

    init: Callable[[chex.Array], PyTree]
    propose: Callable[[Signals, chex.Array, chex.Array, PyTree], tuple[chex.Array, PyTree]]
    needs: tuple[str, ...] = ()
