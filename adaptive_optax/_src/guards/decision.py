"""What becomes of each term's weight at one step, passed from stage to stage of ``update``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src.base import Counters
from adaptive_optax._src.statistics import count_where


class Decision(NamedTuple):
    """What the rule proposed, what the guards allowed, and what lands: ``(n,)`` vectors.

    The skeleton of :func:`adaptive_optax.guarded` makes one after the gates and the limits
    (:meth:`of`) and each later stage returns it with its own fields replaced
    (``decision._replace(...)``): the landing and the return to the base at rest (here), the
    rollback, the start ramp's ceiling, the spike guard's cut.

    Attributes:
      weights: the weights before this step (healed, carried along their schedules).
      proposal: the rule's proposal as the limits left it (ratios, change limit, bounds).
      allowed: bool, the gates let a proposal land (enabled, adaptive, finite, warmup over,
        cooling over, stable).
      valid: bool, the proposal and its weighted loss are finite.
      landed: bool, the proposal changed the weight: allowed, valid and different.
      new_weights: the weights after this step.
      previous: the weights a rollback returns to, after this step.
      last_change: int32, the step of the last change of each weight, after this step.
      rolled_back: bool, an adjustment was undone this step.
      cut: bool, the spike guard cut the weight this step.
    """

    weights: jax.Array
    proposal: jax.Array
    allowed: jax.Array
    valid: jax.Array
    landed: jax.Array
    new_weights: jax.Array
    previous: jax.Array
    last_change: jax.Array
    rolled_back: jax.Array
    cut: jax.Array

    @classmethod
    def of(cls, *, weights, proposal, allowed, valid, previous, last_change) -> Decision:
        """A decision before anything has landed: the new weights are the current ones."""
        none = jnp.zeros_like(allowed)
        return cls(
            weights=weights,
            proposal=proposal,
            allowed=allowed,
            valid=valid,
            landed=allowed & (proposal != weights) & valid,
            new_weights=weights,
            previous=previous,
            last_change=last_change,
            rolled_back=none,
            cut=none,
        )

    @property
    def refused(self) -> jax.Array:
        """Where an allowed proposal that would change the weight was not valid."""
        return self.allowed & (self.proposal != self.weights) & ~self.valid

    def land(self, step: jax.Array) -> Decision:
        """The landed proposals applied: each is the new weight, the old one its rollback target."""
        return self._replace(
            new_weights=jnp.where(self.landed, self.proposal, self.weights),
            previous=jnp.where(self.landed, self.weights, self.previous),
            last_change=jnp.where(self.landed, step, self.last_change),
        )

    def at_rest(self, active: jax.Array, base: jax.Array) -> Decision:
        """Disabled or not adaptive (not ``active``): the base weight, nothing to roll back to.

        A weight just rolled back has nothing to roll back to either.
        """
        new_weights = jnp.where(active, self.new_weights, base)
        previous = jnp.where(self.rolled_back | ~active, new_weights, self.previous)
        return self._replace(new_weights=new_weights, previous=previous)

    def counted(
        self, counters: Counters, *, step: jax.Array, missing, healed, spiked, refused=None
    ) -> Counters:
        """The event counters after this step.

        Args:
          counters: the counters before it.
          step: the step being taken.
          missing: ``(n,)`` bool, a present term's input was not finite.
          healed: ``(n,)`` bool, a stored weight, base or schedule value was healed.
          spiked: ``(n,)`` bool, the spike guard judged a spike (cut or not).
          refused: ``(n,)`` bool or None, the step's adjustment was refused outright (a traced
            setting out of range), counted as ``rejected`` too.
        """
        rejected = self.refused if refused is None else self.refused | refused
        return Counters(
            adjustments=count_where(counters.adjustments, self.landed),
            rejected=count_where(counters.rejected, rejected),
            nonfinite=count_where(counters.nonfinite, missing),
            rollbacks=count_where(counters.rollbacks, self.rolled_back),
            healed=count_where(counters.healed, healed),
            spikes=count_where(counters.spikes, spiked),
            first_nonfinite_step=jnp.where(
                missing & (counters.first_nonfinite_step == 0),
                step,
                counters.first_nonfinite_step,
            ),
            last_nonfinite_step=jnp.where(missing, step, counters.last_nonfinite_step),
        )
