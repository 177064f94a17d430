"""The start ramp: each adaptive weight starts at its lower bound under a rising ceiling."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_optax._src import validation
from adaptive_optax._src.guards.decision import Decision


class StartRamp(NamedTuple):
    """A limit for the start of a run: a ceiling that rises from the lower bound to the base.

    Each adaptive weight starts at its lower bound, under a ceiling that rises linearly to the
    base weight over ``ramp_steps`` calm steps (finite, stable, no spike), as learning-rate
    warmup does for the step size; after the ramp the upper bound applies. The weight rises
    only through the rule's proposals and the slow gates. A spike cut during the ramp restarts
    the ceiling from the cut weight. Reads and writes ``AdaptiveState.start_ramp``, each
    term's progress from 0 (at the lower bound) to 1 (the ramp is over; 1 from the start when
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
    """

    ramp_steps: int

    @classmethod
    def checked(cls, ramp_steps: Any) -> StartRamp:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``ramp_steps`` and its value, unless a concrete integer >= 0.
        """
        validation.check_number("ramp_steps", ramp_steps, low=0, integer=True, static=True)
        return cls(int(ramp_steps))

    def ramping(self, adaptive: np.ndarray) -> np.ndarray:
        """The terms that start on the ramp (NumPy bools)."""
        return adaptive & (self.ramp_steps > 0)

    def start(self, adaptive: np.ndarray, low: jax.Array, base: jax.Array, dtype) -> tuple:
        """``(weights, progress)`` at ``init``: the lower bound and 0 on the ramp."""
        ramping = self.ramping(adaptive)
        return jnp.where(ramping, low, base), jnp.where(ramping, 0.0, 1.0).astype(dtype)

    def under_ceiling(
        self, decision: Decision, *, progress, ramping, calm, low, base
    ) -> tuple[Decision, jax.Array]:
        """The decision with its new weights under the ceiling, and the progress after this step.

        Args:
          decision: the decision the earlier stages left.
          progress: ``(n,)`` ``AdaptiveState.start_ramp``.
          ramping: ``(n,)`` bool, active terms whose ramp is not over.
          calm: ``(n,)`` bool, a stable step without a spike: the ramp advances.
          low: ``(n,)`` the lower bounds.
          base: ``(n,)`` the base weights the ramp rises to.
        """
        if self.ramp_steps == 0:
            return decision, progress
        advanced = jnp.minimum(progress + 1.0 / self.ramp_steps, 1.0)
        progress = jnp.where(ramping & calm, advanced, progress)
        ceiling = low + (base - low) * progress.astype(base.dtype)
        new_weights = decision.new_weights
        new_weights = jnp.where(ramping, jnp.minimum(new_weights, ceiling), new_weights)
        return decision._replace(new_weights=new_weights), progress

    @staticmethod
    def resume_after_cut(progress, *, cut, weights, low, base) -> jax.Array:
        """The progress of a ``cut`` term set to where its cut weight stands on the ramp."""
        span = base - low
        position = (weights - low) / jnp.where(span > 0, span, 1.0)
        position = jnp.where(span > 0, jnp.clip(position, 0.0, 1.0), 1.0)
        return jnp.where(cut, position.astype(progress.dtype), progress)

    @staticmethod
    def stored(progress: jax.Array, dtype) -> jax.Array:
        """The progress to store: a corrupted (non-finite) one ends the ramp."""
        return jnp.where(jnp.isfinite(progress), progress, 1.0).astype(dtype)
