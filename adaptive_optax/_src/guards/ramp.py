"""The start ramp: each adaptive weight starts at its lower bound under a rising ceiling."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_optax._src import validation
from adaptive_optax._src.guards.decision import Decision
from adaptive_optax._src.schedules import follow


class StartRamp(NamedTuple):
    """The start of a run: a base that rises from the lower bound to the base weight.

    Each adaptive weight starts at its lower bound, on a ramped base that rises linearly to the
    base weight over ``ramp_steps`` calm steps (finite, stable, no spike), as learning-rate
    warmup does for the step size. The weight follows the ramped base as it follows a
    schedule (its factor to the base is kept), the rule works around the ramped base, and no
    weight exceeds it until the ramp is over; so a run without evidence reaches its base
    weights after ``ramp_steps`` calm steps, and a spike cut during the ramp keeps its factor
    while the ramp goes on. Reads and writes ``AdaptiveState.start_ramp``, each term's
    progress from 0 (at the lower bound) to 1 (the ramp is over; 1 from the start when
    ``ramp_steps=0``).

    Attributes:
      ramp_steps: a Python int >= 0 (static: it sets the initial weights); 0 is off.

    Examples:
      >>> import jax.numpy as jnp
      >>> from adaptive_optax._src.guards.ramp import StartRamp
      >>> ramp = StartRamp.checked(ramp_steps=4)
      >>> weights, progress = ramp.start(
      ...     np.array([True]), jnp.array([1.0]), jnp.array([3.0]), jnp.float32)
      >>> weights.tolist(), progress.tolist()
      ([1.0], [0.0])
      >>> ramp.ramped_base(jnp.array([0.5]), ramping=jnp.array([True]), low=jnp.array([1.0]),
      ...                  base=jnp.array([3.0])).tolist()
      [2.0]
    """

    ramp_steps: int

    @classmethod
    def checked(cls, ramp_steps: Any) -> StartRamp:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``ramp_steps`` and its value, unless a concrete integer >= 0.
        """
        ramp_steps = validation.check_number(
            "ramp_steps", ramp_steps, low=0, integer=True, static=True
        )
        return cls(int(ramp_steps))

    def ramping(self, adaptive: np.ndarray) -> np.ndarray:
        """The terms that start on the ramp (NumPy bools)."""
        return adaptive & (self.ramp_steps > 0)

    def start(self, adaptive: np.ndarray, low: jax.Array, base: jax.Array, dtype) -> tuple:
        """``(weights, progress)`` at ``init``: the lower bound and 0 on the ramp."""
        ramping = self.ramping(adaptive)
        return jnp.where(ramping, low, base), jnp.where(ramping, 0.0, 1.0).astype(dtype)

    def advance(self, progress: jax.Array, *, ramping, calm) -> jax.Array:
        """The progress after this step: one ``ramp_steps``-th further on a calm step."""
        if self.ramp_steps == 0:
            return progress
        advanced = jnp.minimum(progress + 1.0 / self.ramp_steps, 1.0)
        return jnp.where(ramping & calm, advanced, progress)

    def ramped_base(self, progress: jax.Array, *, ramping, low, base) -> jax.Array:
        """``low + (base - low) * progress`` on the ramp, else ``base``."""
        if self.ramp_steps == 0:
            return base
        return jnp.where(ramping, low + (base - low) * progress.astype(base.dtype), base)

    def carry(self, weights, previous, before, target) -> tuple[jax.Array, jax.Array]:
        """The weights and rollback targets carried from the ramped base ``before`` to
        ``target`` with their factor, as along a schedule."""
        if self.ramp_steps == 0:
            return weights, previous
        return follow(weights, before, target), follow(previous, before, target)

    def under_ceiling(self, decision: Decision, *, ramping, ceiling) -> Decision:
        """The decision with its new weights at most the ramped base while the ramp lasts."""
        if self.ramp_steps == 0:
            return decision
        new_weights = jnp.where(
            ramping, jnp.minimum(decision.new_weights, ceiling), decision.new_weights
        )
        return decision._replace(new_weights=new_weights)

    @staticmethod
    def stored(progress: jax.Array, dtype) -> jax.Array:
        """The progress to store: a corrupted (non-finite) one ends the ramp."""
        return jnp.where(jnp.isfinite(progress), progress, 1.0).astype(dtype)
