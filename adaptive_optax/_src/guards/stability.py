"""The stability gate: adjust a weight only after its loss has been calm for a while."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src import validation
from adaptive_optax._src.base import Signals


class Stability(NamedTuple):
    """A slow gate: a proposal lands only after ``min_stable_steps`` stable steps in a row.

    A step is stable for a term when its inputs are finite and the recent relative variance of
    its loss (variance / mean**2, see :class:`adaptive_optax.RunningStats`) is below
    ``variance_threshold``. Reads and writes ``AdaptiveState.stable_steps`` (the count of
    consecutive stable steps, reset by an adjustment or a spike cut). The start ramp counts
    its progress on the same stable steps.

    Attributes:
      min_stable_steps: an integer >= 0 (may be traced); 0 relaxes the gate.
      variance_threshold: a number > 0 (may be traced).

    Examples:
      >>> import jax.numpy as jnp
      >>> from adaptive_optax._src.guards.stability import Stability
      >>> gate = Stability.checked(min_stable_steps=2, variance_threshold=0.5)
      >>> gate.allows(jnp.array([1, 2])).tolist()
      [False, True]
    """

    min_stable_steps: Any
    variance_threshold: Any

    @classmethod
    def checked(cls, min_stable_steps: Any, variance_threshold: Any) -> Stability:
        """The record, its settings validated.

        Raises:
          ValueError: naming the setting and its value: ``min_stable_steps`` must be an
            integer >= 0, ``variance_threshold`` a number > 0.
        """
        min_stable_steps = validation.check_number(
            "min_stable_steps", min_stable_steps, low=0, integer=True
        )
        variance_threshold = validation.check_number(
            "variance_threshold", variance_threshold, low=0, low_open=True
        )
        return cls(min_stable_steps, variance_threshold)

    def stable_count(self, stable_steps: jax.Array, signals: Signals) -> jax.Array:
        """The ``(n,)`` consecutive stable steps, this step included."""
        calm = signals.finite & (signals.rel_variance < self.variance_threshold)
        return jnp.where(calm, optax.safe_increment(stable_steps), 0)

    def allows(self, stable: jax.Array) -> jax.Array:
        """Where a proposal may land, given the ``(n,)`` counts of :meth:`count`."""
        return stable >= self.min_stable_steps
