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


#: Bytes of one ``(n, chunk)`` block of rows in :func:`gramian`: a leaf of more than this many
#: bytes across the ``n`` terms is reduced block by block in a loop, so that no ``(n, size)``
#: copy of it is made (2 MiB: a block stays in a CPU core's L2 cache).
BLOCK_BYTES = 2**21


def _leaf_gramian(leaves: Sequence[jax.Array]) -> jax.Array:
    """``G[i, j] = <leaves[i], leaves[j]>`` for one parameter leaf of each of the ``n`` terms.

    Args:
      leaves: the ``n`` terms' gradients of one parameter leaf, all of one shape.

    Returns:
      The ``(n, n)`` contribution of the leaf, in at least float32: one ``(n, size) @ (size, n)``
      product of the stacked rows for a leaf of at most :data:`BLOCK_BYTES` across the terms,
      else a sum over blocks of ``BLOCK_BYTES`` (a ``fori_loop`` over slices of the leaves, one
      ``(n, chunk)`` block at a time), at the highest matmul precision.
    """
    n = len(leaves)
    dtype = at_least_float32(jnp.result_type(*leaves))
    flat = [jnp.ravel(leaf) for leaf in leaves]
    size = flat[0].size

    def block(pieces: Sequence[jax.Array]) -> jax.Array:
        rows = jnp.stack([piece.astype(dtype) for piece in pieces])
        return jnp.matmul(rows, rows.T, precision=jax.lax.Precision.HIGHEST)

    chunk = max(1, BLOCK_BYTES // (n * dtype.itemsize))
    if size <= chunk:
        return block(flat)
    count = size // chunk

    def body(c: jax.Array, total: jax.Array) -> jax.Array:
        return total + block([jax.lax.dynamic_slice_in_dim(f, c * chunk, chunk) for f in flat])

    total = jax.lax.fori_loop(0, count, body, jnp.zeros((n, n), dtype))
    if size > count * chunk:
        total = total + block([f[count * chunk :] for f in flat])
    return total


def gramian(term_grads: Sequence[PyTree]) -> jax.Array:
    """``G[i, j] = <g_i, g_j>`` for the gradient pytrees ``g_1 .. g_n``, leaf by leaf.

    Each parameter leaf contributes the inner products of its ``n`` gradients, computed in at
    least float32 at the highest matmul precision: one ``(n, size) @ (size, n)`` product for a
    small leaf; for a leaf of more than :data:`BLOCK_BYTES` across the terms, a loop over
    blocks of its elements, so that the stacked rows are never copied whole (the peak holds
    the ``n`` gradients and one block).

    Args:
      term_grads: one gradient pytree per term, all of the same structure.

    Returns:
      The ``(n, n)`` Gramian, symmetric and positive semi-definite up to rounding.
    """
    total = None
    for leaves in zip(*(jax.tree.leaves(g) for g in term_grads), strict=True):
        product = _leaf_gramian(leaves)
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
