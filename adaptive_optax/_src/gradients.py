"""Gradient statistics a rule can ask for, computed from per-term gradients: per-term scalars
(norm, max-abs, mean-abs) and the Gramian of the per-term gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src.base import PyTree
from adaptive_optax._src.statistics import at_least_float32


def _max_abs(grads: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(grads)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))


def _mean_abs(grads: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(grads)
    total = sum(jnp.sum(jnp.abs(leaf)) for leaf in leaves)
    return total / sum(leaf.size for leaf in leaves)


GRADIENT_STATISTICS: Mapping[str, Callable[[PyTree], jax.Array]] = MappingProxyType(
    {"norm": optax.tree.norm, "max_abs": _max_abs, "mean_abs": _mean_abs}
)
"""Name -> function from one term's gradient pytree to a scalar (read-only). ``"norm"`` is the
L2 norm."""


GRAMIAN = "gramian"
"""The joint statistic: the ``(n, n)`` matrix of inner products of the per-term gradients."""


def gramian(term_grads: Sequence[PyTree]) -> jax.Array:
    """``G[i, j] = <g_i, g_j>`` for the gradient pytrees ``g_1 .. g_n``, in one pass.

    Each parameter leaf contributes one ``(n, size) @ (size, n)`` product, computed in at least
    float32 at the highest matmul precision.

    Args:
      term_grads: one gradient pytree per term, all of the same structure.

    Returns:
      The ``(n, n)`` Gramian, symmetric and positive semi-definite up to rounding.
    """
    total = None
    for leaves in zip(*(jax.tree.leaves(g) for g in term_grads), strict=True):
        dtype = at_least_float32(jnp.result_type(*leaves))
        rows = jnp.stack([jnp.ravel(leaf).astype(dtype) for leaf in leaves])
        product = jnp.matmul(rows, rows.T, precision=jax.lax.Precision.HIGHEST)
        total = product if total is None else total + product.astype(total.dtype)
    return total


def check_statistics(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, each a key of :data:`GRADIENT_STATISTICS`.

    Raises:
      ValueError: for an unknown name.
    """
    names = tuple(names)
    known = {*GRADIENT_STATISTICS, GRAMIAN}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown gradient statistics {unknown}; known: {sorted(known)}")
    return names


def gradient_statistics(term_grads: PyTree, names: Iterable[str], terms_treedef) -> dict:
    """Each named statistic of each term's gradients, as pytrees shaped like the base weights.

    Args:
      term_grads: a pytree keyed like the base weights whose values are gradient pytrees
        (what :func:`adaptive_optax.per_term_grads` of a dict-valued loss function gives).
      names: statistics to compute, keys of :data:`GRADIENT_STATISTICS`.
      terms_treedef: the tree structure of the base weights.

    Returns:
      ``{name: per-term pytree of scalars}``, and for ``"gramian"`` the ``(n, n)`` matrix in
      the leaf order of the base weights.
    """
    per_term = terms_treedef.flatten_up_to(term_grads)
    return {
        name: gramian(per_term)
        if name == GRAMIAN
        else jax.tree.unflatten(
            terms_treedef, [GRADIENT_STATISTICS[name](grads) for grads in per_term]
        )
        for name in check_statistics(names)
    }
