"""The guards that cannot be switched off: finite inputs, healing, finite proposals.

A non-finite loss or gradient statistic changes no statistic and no weight; a corrupted
stored weight or base is healed; a rule's non-finite state is kept at its previous value; a
proposal that is not finite, or whose weighted loss would not be, is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_optax._src.base import AdaptiveState, PyTree, Rule, Signals
from adaptive_optax._src.gradients import GRAMIAN, check_statistics
from adaptive_optax._src.schedules import Schedules
from adaptive_optax._src.terms import Terms


def check_state(state: Any, rule: Rule, base: jax.Array) -> None:
    """Raises ``ValueError`` unless ``state`` is an unbatched :class:`AdaptiveState` whose rule
    state has the structure this weighting's rule keeps (not another weighting's state)."""
    if not isinstance(state, AdaptiveState):
        raise ValueError(
            "update expects the adaptive_optax.AdaptiveState made by this weighting's init, "
            f"got {type(state).__name__}"
        )
    expected = jax.tree.structure(
        jax.eval_shape(rule.init, jax.ShapeDtypeStruct(base.shape, base.dtype))
    )
    if jax.tree.structure(state.rule_state) != expected:  # type: ignore[operator]
        raise ValueError(
            "update got the state of another weighting: its rule_state is "
            f"{type(state.rule_state).__name__} with structure "
            f"{jax.tree.structure(state.rule_state)}, this weighting's rule keeps {expected}; "
            "pass the state made by this weighting's init"
        )
    if jnp.ndim(state.step) != 0:
        raise ValueError(
            f"update got a state with batch axes (its step has shape {jnp.shape(state.step)}):"
            " map it over them with jax.vmap(weighting.update)"
        )


def read_inputs(terms: Terms, losses: PyTree, grad_norms, grad_stats, axis_name, dtype) -> tuple:
    """This step's losses and gradient statistics as ``(n,)`` vectors, and which are valid:
    finite, and a gradient statistic >= 0 (a negative norm is invalid, as a NaN is).

    ``grad_norms`` joins ``grad_stats`` as ``"norm"``; each statistic is one global scalar or
    one per term. Under ``axis_name`` every input is averaged over the replicas.

    Returns:
      ``(loss, gradients, finite)``.
    """
    loss = terms.vector(losses, "losses", dtype)
    if grad_stats is not None and not isinstance(grad_stats, Mapping):
        raise ValueError(f"grad_stats must be a dict of gradient statistics, got {grad_stats!r}")
    named = dict(grad_stats or {})
    if grad_norms is not None:
        if "norm" in named:
            raise ValueError("give the gradient norm once: grad_norms= or grad_stats['norm']")
        named["norm"] = grad_norms
    check_statistics(named)
    gradients = {
        name: _gramian_matrix(terms, value, dtype)
        if name == GRAMIAN
        else terms.per_term(
            value, "grad_norms" if name == "norm" else f"grad_stats[{name!r}]", dtype
        )
        for name, value in named.items()
    }
    if axis_name is not None:
        loss, gradients = jax.lax.pmean((loss, gradients), axis_name)
    finite = jnp.isfinite(loss)
    for name, value in gradients.items():
        if name == GRAMIAN:  # a NaN in g_i fills row and column i; the diagonal tells whose
            value = jnp.diagonal(value)
        # every gradient statistic is >= 0 (a norm, a mean of |g|, a squared norm): a negative
        # one is a caller's bug, counted as an invalid input like a NaN, never averaged in
        finite &= jnp.isfinite(value) & (value >= 0)
    return loss, gradients, finite


def _gramian_matrix(terms: Terms, value, dtype) -> jax.Array:
    """The ``(n, n)`` Gramian given as ``grad_stats["gramian"]``, in the terms' leaf order."""
    if np.shape(value) != (terms.size, terms.size):
        raise ValueError(
            f"grad_stats['gramian'] must be an ({terms.size}, {terms.size}) matrix of the inner "
            f"products of the per-term gradients, in the order of terms {list(terms.names)}; "
            f"got shape {np.shape(value)}"
        )
    return jnp.asarray(value).astype(dtype)


def heal(terms: Terms, state: AdaptiveState, initial_base, dtype, schedules: Schedules) -> tuple:
    """The state's base, current and previous weights as vectors, a corrupted value replaced.

    A stored weight that is not finite (a corrupted checkpoint) is reset to its base weight; a
    base weight that is not finite and positive (or 0, for a schedule), to the one the
    weighting was built with.

    Returns:
      ``(base, weights, previous, corrupt)``, ``corrupt`` where a weight or base was healed.
    """
    base = terms.vector(state.base_weights, "state.base_weights", dtype)
    allowed = (base > 0) | (schedules.scheduled & (base == 0))
    bad_base = ~(jnp.isfinite(base) & allowed)
    base = jnp.where(bad_base, initial_base, base)
    weights = terms.vector(state.weights, "state.weights", dtype)
    corrupt = bad_base | ~jnp.isfinite(weights)
    weights = jnp.where(corrupt, base, weights)
    previous = terms.vector(state.previous_weights, "state.previous_weights", dtype)
    previous = jnp.where(jnp.isfinite(previous), previous, base)
    return base, weights, previous, corrupt


def propose(rule: Rule, signals: Signals, weights, base, rule_state) -> tuple:
    """The rule's proposal in the weights' dtype; a non-finite leaf of its new state keeps its
    previous value."""
    proposal, new_rule_state = rule.propose(signals, weights, base, rule_state)
    new_rule_state = jax.tree.map(keep_finite, new_rule_state, rule_state)
    return proposal.astype(weights.dtype), new_rule_state


def keep_finite(new, old):
    """``new`` where finite, else ``old``, in ``old``'s dtype (a rule may compute wider)."""
    if jnp.issubdtype(jnp.result_type(new), jnp.inexact):
        return jnp.where(jnp.isfinite(new), new, old).astype(jnp.result_type(old))
    return jnp.asarray(new).astype(jnp.result_type(old))


def valid(proposal: jax.Array, losses: jax.Array) -> jax.Array:
    """Where the ``(n,)`` proposal and its weighted loss are finite.

    The product is never formed: ``|w| * |loss| <= max`` is tested as
    ``|w| <= max / max(|loss|, 1)``, which holds on every backend (a fused
    ``isfinite(w * loss)`` can be simplified away by a compiler).
    """
    largest = jnp.finfo(losses.dtype).max
    return jnp.abs(proposal).astype(losses.dtype) <= largest / jnp.maximum(jnp.abs(losses), 1.0)
