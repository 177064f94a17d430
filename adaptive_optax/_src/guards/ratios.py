"""Ratios only: the rule moves the ratios of the adaptive weights, not their total."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src.guards.checks import check_choice

Moves = Literal["weights", "ratios"]
"""What a rule may move: each weight (and so the total scale), or only the ratios."""


class RatiosOnly(NamedTuple):
    """A limit on what lands: with ``moves="ratios"`` a proposal keeps the adaptive total.

    It acts on how much of a proposal lands, and depends on which gates are open and on the
    change limit, so it is a guard, not a rule combinator. Each proposal of the adaptive terms
    whose gate is open is rescaled so that they keep their total, stepped toward the total of
    their base weights by at most ``max_change`` per adjustment. Only the spike guard's cut
    (fast) and this slow return then change the scale: the rule is a re-weighting, not a
    learning-rate schedule. The change limit and the bounds still win where they bind; with
    one adaptive term the rule moves nothing. Keeps no state.

    Attributes:
      moves: ``"weights"`` (off) or ``"ratios"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from adaptive_optax._src.guards.ratios import RatiosOnly
      >>> ratios = RatiosOnly.checked(moves="ratios")
      >>> w = jnp.array([1.0, 1.0])
      >>> ratios.keep_total(jnp.array([3.0, 1.0]), w, w, jnp.array([True, True]), None).tolist()
      [1.5, 0.5]
    """

    moves: Moves

    @classmethod
    def checked(cls, moves: Any) -> RatiosOnly:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``moves`` and its value, unless ``"weights"`` or ``"ratios"``.
        """
        check_choice("moves", moves, ("weights", "ratios"))
        return cls(moves)

    def keep_total(self, proposal, weights, base, moving, max_change) -> jax.Array:
        """The proposal of the ``moving`` terms rescaled so that only their ratios move.

        Their total is the current one, stepped toward their base total by at most
        ``max_change`` (all the way without it). With ``max_change`` the move toward the
        rescaled proposal is shortened as a whole until no term changes by more than
        ``max_change``, rather than clipped term by term (which would change the total). Terms
        whose proposal is not a finite number >= 0 are left to validation.

        Args:
          proposal, weights, base: ``(n,)`` the rule's proposal, the current and base weights.
          moving: ``(n,)`` bool, the terms whose gate is open.
          max_change: see :class:`ChangeLimit`.
        """
        if self.moves == "weights":
            return proposal
        moving = moving & jnp.isfinite(proposal) & (proposal >= 0)
        held = jnp.where(moving, proposal, 0.0)
        top = jnp.max(held)
        ratios = held / jnp.where(top > 0, top, 1.0)  # in [0, 1]
        current = jnp.sum(jnp.where(moving, weights, 0.0))
        goal = jnp.sum(jnp.where(moving, base, 0.0))
        if max_change is not None:
            change = jnp.asarray(max_change, weights.dtype)
            goal = jnp.clip(goal, current * (1 - change), current * (1 + change))
        total = jnp.sum(ratios)
        rescaled = ratios * (goal / jnp.where(total > 0, total, 1.0))
        if max_change is not None:
            # one step of length theta toward the rescaled proposal, theta as large as
            # max_change allows every term: the ratios move the rule's way, the total to goal
            step = jnp.where(moving, rescaled - weights, 0.0)
            room = change * weights / jnp.where(step != 0, jnp.abs(step), 1.0)
            theta = jnp.clip(jnp.min(jnp.where(step != 0, room, 1.0)), 0.0, 1.0)
            rescaled = weights + theta * step
        return jnp.where(moving & (top > 0), rescaled.astype(proposal.dtype), proposal)
