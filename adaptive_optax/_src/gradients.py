"""Gradient statistics a rule can ask for, computed per loss term from per-term gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src.base import PyTree


def _max_abs(grads: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(grads)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))


def _mean_abs(grads: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(grads)
    total = sum(jnp.sum(jnp.abs(leaf)) for leaf in leaves)
    return total / sum(leaf.size for leaf in leaves)


GRADIENT_STATISTICS: dict[str, Callable[[PyTree], jax.Array]] = {
    "norm": optax.tree.norm,
    "max_abs": _max_abs,
    "mean_abs": _mean_abs,
}
"""Name -> function from one term's gradient pytree to a scalar. ``"norm"`` is the L2 norm."""


def check_statistics(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, each a key of :data:`GRADIENT_STATISTICS`.

    Raises:
      ValueError: for an unknown name.
    """
    names = tuple(names)
    unknown = sorted(set(names) - set(GRADIENT_STATISTICS))
    if unknown:
        raise ValueError(
            f"unknown gradient statistics {unknown}; known: {sorted(GRADIENT_STATISTICS)}"
        )
    return names


def gradient_statistics(term_grads: PyTree, names: Iterable[str], terms_treedef) -> dict:
    """Each named statistic of each term's gradients, as pytrees shaped like the base weights.

    Args:
      term_grads: a pytree keyed like the base weights whose values are gradient pytrees
        (what ``jax.jacrev`` of a dict-valued loss function gives).
      names: statistics to compute, keys of :data:`GRADIENT_STATISTICS`.
      terms_treedef: the tree structure of the base weights.

    Returns:
      ``{name: per-term pytree of scalars}``.
    """
    per_term = terms_treedef.flatten_up_to(term_grads)
    return {
        name: jax.tree.unflatten(
            terms_treedef, [GRADIENT_STATISTICS[name](grads) for grads in per_term]
        )
        for name in check_statistics(names)
    }
