"""The change limit: a weight moves by at most a fraction of itself per adjustment."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation


class ChangeLimit(NamedTuple):
    """A limit: a proposal is clipped to ``weights * (1 -/+ max_change)``.

    Keeps no state. With ``moves="ratios"`` (:class:`RatiosOnly`) the limit also bounds the
    step of the adaptive terms' total toward their base total, and shortens the move as a
    whole.

    Attributes:
      max_change: the largest relative change per adjustment, in ``(0, 1)`` (may be traced),
        or None for no limit.

    Examples:
      >>> import jax.numpy as jnp
      >>> from adaptive_optax._src.guards.change import ChangeLimit
      >>> limit = ChangeLimit.checked(max_change=0.1)
      >>> limit.limit(jnp.array([2.0, 0.5, 1.05]), jnp.ones(3)).tolist()
      [1.100000023841858, 0.8999999761581421, 1.0499999523162842]
    """

    max_change: Any

    @classmethod
    def checked(cls, max_change: Any) -> ChangeLimit:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``max_change`` and its value, unless None or in ``(0, 1)``.
        """
        if max_change is not None:
            max_change = validation.check_number(
                "max_change", max_change, low=0, high=1, low_open=True, high_open=True
            )
        return cls(max_change)

    def limit(self, proposal: jax.Array, weights: jax.Array) -> jax.Array:
        """The ``(n,)`` proposal within ``max_change`` of the current ``(n,)`` weights."""
        if self.max_change is None:
            return proposal
        change = jnp.asarray(self.max_change, proposal.dtype)
        return jnp.clip(proposal, weights * (1 - change), weights * (1 + change))
