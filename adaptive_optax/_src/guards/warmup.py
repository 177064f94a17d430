"""The warmup gate: no adjustment in the first steps of a run."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation


class Warmup(NamedTuple):
    """A slow gate: no proposal lands while ``step <= warmup_steps``.

    Reads the step being taken; keeps no state of its own.

    Attributes:
      warmup_steps: an integer >= 0 (may be traced); 0 relaxes the gate.

    Examples:
      >>> from adaptive_optax._src.guards.warmup import Warmup
      >>> Warmup.checked(warmup_steps=2).allows(3).item()
      True
    """

    warmup_steps: Any

    @classmethod
    def checked(cls, warmup_steps: Any) -> Warmup:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``warmup_steps`` and its value, unless an integer >= 0.
        """
        warmup_steps = validation.check_number("warmup_steps", warmup_steps, low=0, integer=True)
        return cls(warmup_steps)

    def allows(self, step: jax.Array) -> jax.Array:
        """Whether a proposal may land at ``step`` (a bool scalar)."""
        return jnp.asarray(step) > self.warmup_steps
