"""Why each weight is away from its base now, and since when: what ``ao.metrics`` reports.

Not a guard: a record of what the guards and the rule did. Reads and writes
``AdaptiveState.away`` (an index into :data:`AWAY_REASONS` per term) and
``AdaptiveState.away_since`` (the step the weight left its base for that reason; 0 at base).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive_optax._src.guards.decision import Decision

AWAY_REASONS = ("base", "start ramp", "spike cut", "rule", "rollback")
"""What ``metrics(state)["away/<term>"]`` indexes: why the weight is away from its base.

``"base"``: at its base (within a relative 1e-3); ``"start ramp"``: below it on the ramp;
``"spike cut"``: cut by the spike guard and not yet back; ``"rule"``: moved away by the
rule's proposal (a loss rising against its trend, growing gradients, or the method's own
weights); ``"rollback"``: an adjustment undone after a non-finite step.
"""

AT_BASE, START_RAMP, SPIKE_CUT, RULE, ROLLBACK = range(len(AWAY_REASONS))
TOLERANCE = 1e-3  # relative distance to the base below which a weight is at its base


def why_away(
    decision: Decision, *, reason: jax.Array, since: jax.Array, step, base, ramping
) -> tuple[jax.Array, jax.Array]:
    """``(reason, since)`` after this step: the latest event that moved a weight from its base.

    Args:
      decision: the decision after every stage.
      reason: ``(n,)`` int32, the reasons before this step.
      since: ``(n,)`` int32, their steps.
      step: this step.
      base: ``(n,)`` the base the weights return to (normalized, scheduled; not ramped).
      ramping: ``(n,)`` bool, the start ramp is not over.

    Returns:
      ``(reason, since)``, int32 ``(n,)`` each.
    """
    distance = jnp.abs(decision.new_weights - base)
    at_base = distance <= TOLERANCE * jnp.abs(base)
    away_by_rule = decision.landed & (
        jnp.abs(decision.proposal - base) > jnp.abs(decision.weights - base)
    )
    kept = jnp.where(reason == AT_BASE, RULE, reason)  # away with no event: the rule's base moved
    new = jnp.select(
        [at_base, decision.cut, decision.rolled_back, away_by_rule, ramping],
        [AT_BASE, SPIKE_CUT, ROLLBACK, RULE, jnp.where(reason == AT_BASE, START_RAMP, reason)],
        kept,
    ).astype(jnp.int32)
    changed = new != reason
    since = jnp.where(at_base, 0, jnp.where(changed, step, since)).astype(jnp.int32)
    return new, since
