"""The cooling gate: a pause after each change of a weight."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from adaptive_optax._src import validation


class Cooling(NamedTuple):
    """A slow gate: at least ``cooling_period`` steps between two changes of a term's weight.

    A change is an adjustment, a rollback or a spike cut; the first adjustment of a term waits
    for the warmup only. Reads ``AdaptiveState.last_change`` (the step of the last change, 0
    for none), which the rollback and the spike guard write. The automatic rollback reads
    ``cooling_period`` too: an adjustment is undone when a non-finite input follows within it.

    Attributes:
      cooling_period: an integer >= 0 (may be traced); 0 relaxes the gate.

    Examples:
      >>> import jax.numpy as jnp
      >>> from adaptive_optax._src.guards.cooling import Cooling
      >>> Cooling.checked(cooling_period=5).allows(8, jnp.array([0, 4, 3])).tolist()
      [True, False, True]
    """

    cooling_period: Any

    @classmethod
    def checked(cls, cooling_period: Any) -> Cooling:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``cooling_period`` and its value, unless an integer >= 0.
        """
        cooling_period = validation.check_number(
            "cooling_period", cooling_period, low=0, integer=True
        )
        return cls(cooling_period)

    def allows(self, step: jax.Array, last_change: jax.Array) -> jax.Array:
        """Where a proposal may land at ``step``, given ``(n,)`` steps of the last change."""
        return (last_change == 0) | (step - last_change >= self.cooling_period)
