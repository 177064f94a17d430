"""The spike guard: the fast half of the controller, an immediate cut on a spike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.base import SpikeStats
from adaptive_optax._src.guards.decision import Decision
from adaptive_optax._src.spikes import detect_spikes

SPIKE_WARMUP = 10  # values a term's statistics need before the spike guard judges them


class SpikeGuard(NamedTuple):
    """A fast guard: a spike of a term's loss or gradient norm cuts its weight at once.

    A spike is a z-score of the log value above ``spike_threshold`` against running log-scale
    statistics that a spike does not inflate (see ``adaptive_optax._src.spikes``). The cut
    takes the weight to ``spike_factor`` times its value, within the lower bound, past the
    slow gates and the change limit; it starts a cooling period, is its own rollback target,
    and resets the stable-step count. The weight recovers only through the rule's proposals
    and the slow gates (slow increase, fast decrease, as in TCP's AIMD). Reads and writes
    ``AdaptiveState.spike_stats`` (left empty when off); writes ``previous_weights`` and
    ``last_change`` where it cuts.

    Attributes:
      spike_threshold: the z-score above which a value is a spike, > 0 (may be traced), or
        None: the guard is off.
      spike_factor: the factor of a cut, in ``(0, 1)`` (may be traced).
      spike_decay: decay of the log-scale statistics, in ``[0, 1)`` (may be traced).
      spike_prior: a prior standard deviation of the log value, > 0 (may be traced), or None:
        with it a term is judged from its second value, without it after
        ``SPIKE_WARMUP`` values.

    Examples:
      >>> from adaptive_optax._src.guards.spike import SpikeGuard
      >>> guard = SpikeGuard.checked(
      ...     spike_threshold=3.0, spike_factor=0.5, spike_decay=0.97, spike_prior=None
      ... )
      >>> guard.spike_factor
      0.5
    """

    spike_threshold: Any
    spike_factor: Any
    spike_decay: Any
    spike_prior: Any

    @classmethod
    def checked(
        cls, spike_threshold: Any, spike_factor: Any, spike_decay: Any, spike_prior: Any
    ) -> SpikeGuard:
        """The record, its settings validated.

        Raises:
          ValueError: naming the setting and its value: ``spike_threshold`` must be None or
            > 0, ``spike_factor`` in ``(0, 1)``, ``spike_decay`` in ``[0, 1)``,
            ``spike_prior`` None or > 0.
        """
        if spike_threshold is not None:
            spike_threshold = validation.check_number(
                "spike_threshold", spike_threshold, low=0, low_open=True
            )
        spike_factor = validation.check_number(
            "spike_factor", spike_factor, low=0, high=1, low_open=True, high_open=True
        )
        spike_decay = validation.check_number(
            "spike_decay", spike_decay, low=0, high=1, high_open=True
        )
        if spike_prior is not None:
            spike_prior = validation.check_number("spike_prior", spike_prior, low=0, low_open=True)
        return cls(spike_threshold, spike_factor, spike_decay, spike_prior)

    def detect(
        self,
        spike_stats: SpikeStats,
        loss: jax.Array,
        gradients: Mapping[str, jax.Array],
        finite: jax.Array,
        *,
        entered: Any = False,
        warmup: Any = SPIKE_WARMUP,
        scheduled: Any = False,
    ) -> tuple[jax.Array, SpikeStats]:
        """Which terms' loss or gradient norm spikes this step; the statistics after it.

        Args:
          spike_stats: the statistics before this step.
          loss: ``(n,)`` this step's losses.
          gradients: ``{name: (n,)}`` this step's gradient statistics (``"norm"`` is judged).
          finite: ``(n,)`` bool; other terms are neither judged nor observed.
          entered: a bool scalar, a scheduled term's loss is read from this step on: the
            gradient norms' statistics restart (a global norm jumps with the new term, which
            is no spike of the others).
          warmup: values each term's statistics need before it is judged (scalar or per term).
          scheduled: ``(n,)`` bools; ``spike_prior`` applies to the terms not scheduled, a
            scheduled term waits for ``warmup`` values of its own.

        Returns:
          ``(spiked, spike_stats)``: nothing spikes and nothing changes when the guard is off.
        """
        if self.spike_threshold is None:
            return jnp.zeros_like(finite), spike_stats
        if entered is not False:
            grad = spike_stats.grad
            grad = grad._replace(count=jnp.where(entered, jnp.zeros_like(grad.count), grad.count))
            spike_stats = spike_stats._replace(grad=grad)
        return detect_spikes(
            spike_stats,
            loss,
            gradients.get("norm"),
            finite,
            threshold=self.spike_threshold,
            decay=self.spike_decay,
            warmup=warmup,
            prior_std=None
            if self.spike_prior is None
            else jnp.where(scheduled, jnp.nan, self.spike_prior),
        )

    def cut(
        self, decision: Decision, *, step: jax.Array, spiked: jax.Array, low: jax.Array
    ) -> Decision:
        """The decision with each ``spiked`` term's weight cut to ``spike_factor`` times its
        value before this step, within ``low`` (never above the weight the other stages left).

        Returns:
          The decision, ``cut`` set; a cut is the new rollback target and starts a cooling
          period.
        """
        factor = jnp.asarray(self.spike_factor, decision.weights.dtype)
        lowered = jnp.minimum(jnp.maximum(decision.weights * factor, low), decision.new_weights)
        new_weights = jnp.where(spiked, lowered, decision.new_weights)
        return decision._replace(
            new_weights=new_weights,
            previous=jnp.where(spiked, new_weights, decision.previous),
            last_change=jnp.where(spiked, step, decision.last_change),
            cut=spiked,
        )
