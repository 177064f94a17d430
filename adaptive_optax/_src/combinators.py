"""Rule combinators: a rule built from a rule, changing when or what it proposes.

A change to when or what a rule proposes is a combinator here, not a guard (see the guide,
"Where new features go"): it returns an :class:`adaptive_optax.Rule`, so it composes with
every rule and runs under :func:`adaptive_optax.guarded` like any other.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.base import Rule, Signals


def every_k(rule: Rule, k: int) -> Rule:
    """Consults ``rule`` only every ``k`` steps (steps 1, 1 + k, ...), holding the weights between.

    For a rule whose solver is expensive. In-graph (``jax.lax.cond``): on the other steps the
    rule's computation is skipped, not masked, and its state is kept; the shared statistics
    and the spike guard still see every step. ``guarded(rule, base, every=k)`` is the same as
    ``guarded(every_k(rule, k), base)``.

    Args:
      rule: the :class:`adaptive_optax.Rule` to consult.
      k: an integer >= 1 (may be traced); 1 returns ``rule`` itself.

    Returns:
      A :class:`adaptive_optax.Rule` with the same ``init``, ``needs`` and ``per_term_base``.
      On the steps it consults ``rule``, it returns the proposal in the weights' dtype and the
      new rule state in the dtypes of the old one.

    Raises:
      ValueError: naming ``k`` and its value, unless an integer >= 1.

    Examples:
      >>> import adaptive_optax as ao
      >>> rule = ao.every_k(ao.relative_ratio_rule(), 10)
      >>> weighting = ao.guarded(rule, {"mel": 2.5, "stop": 1.0})
    """
    return consulted_every(rule, k, "k")


def consulted_every(rule: Rule, k: Any, setting: str) -> Rule:
    """:func:`every_k`, its error naming ``setting`` (``every`` of :func:`guarded`)."""
    k = validation.check_number(setting, k, low=1, integer=True)  # traced: clipped to >= 1
    if isinstance(k, int) and k == 1:
        return rule

    def propose(signals: Signals, weights, base_weights, rule_state):
        def consult():
            proposal, new_state = rule.propose(signals, weights, base_weights, rule_state)
            new_state = jax.tree.map(_like, new_state, rule_state)
            return proposal.astype(weights.dtype), new_state

        due = (signals.step - 1) % k == 0
        return jax.lax.cond(due, consult, lambda: (weights, rule_state))

    return rule._replace(propose=propose)


def _like(new, old):
    """``new`` in ``old``'s dtype, so that both branches of the ``cond`` agree."""
    return jnp.asarray(new).astype(jnp.result_type(old))
