"""The automatic rollback: undo an adjustment that a non-finite input follows closely."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.guards.decision import Decision


class Rollback(NamedTuple):
    """A guard on what has landed: a non-finite input soon after an adjustment undoes it.

    A non-finite loss or gradient statistic within ``cooling_period`` steps of a term's last
    change is taken for the failure it may be: a weight change that destabilised training.
    The weight returns to ``AdaptiveState.previous_weights`` and a new cooling period starts
    (``last_change``), so the next adjustment waits until training has been finite for a full
    period. A spike cut is never undone (the cut is its own rollback target).
    :func:`adaptive_optax.rollback` does the same by hand.

    Attributes:
      auto_rollback: a Python bool (static).

    Examples:
      >>> from adaptive_optax._src.guards.rollback import Rollback
      >>> Rollback.checked(auto_rollback=True)
      Rollback(auto_rollback=True)
    """

    auto_rollback: bool

    @classmethod
    def checked(cls, auto_rollback: Any) -> Rollback:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``auto_rollback`` and its value, unless a bool.
        """
        return cls(validation.check_flag("auto_rollback", auto_rollback))

    def roll_back(
        self, decision: Decision, *, step: jax.Array, fault: jax.Array, cooling_period: Any
    ) -> Decision:
        """The decision with the adjustments that ``fault`` (a non-finite input) follows undone.

        Args:
          decision: after :meth:`Decision.land`.
          step: the step being taken.
          fault: ``(n,)`` bool, an active term whose input is not finite this step.
          cooling_period: see :class:`Cooling`.

        Returns:
          The decision, ``rolled_back`` set where an adjustment was undone.
        """
        if not self.auto_rollback:
            return decision
        undone = (
            fault
            & (step - decision.last_change < cooling_period)
            & (decision.new_weights != decision.previous)
        )
        return decision._replace(
            new_weights=jnp.where(undone, decision.previous, decision.new_weights),
            last_change=jnp.where(undone, step, decision.last_change),
            rolled_back=undone,
        )
