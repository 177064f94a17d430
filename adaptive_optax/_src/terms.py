"""Loss terms: the map between a pytree of per-term scalars and a vector, and term names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class Terms(NamedTuple):
    """The static layout of the loss terms, taken from the base weights.

    Attributes:
      treedef: tree structure of the base weights.
      names: one name per leaf, its key path joined with "/" (``"mel"``, ``"heads/stop"``).
    """

    treedef: Any
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.names)

    def vector(self, tree: PyTree, what: str, dtype: Any = None) -> jax.Array:
        """Stacks a pytree of scalars shaped like the base weights into a ``(n_terms,)`` vector.

        Raises:
          ValueError: if the structure differs from the base weights or a leaf is not a scalar.
        """
        structure = jax.tree.structure(tree)
        if structure != self.treedef:
            raise ValueError(
                f"{what} must have the structure of the base weights {self.treedef}, "
                f"got {structure}"
            )
        leaves = jax.tree.leaves(tree)
        for name, leaf in zip(self.names, leaves, strict=True):
            if np.shape(leaf) != ():
                raise ValueError(f"{what}[{name!r}] must be a scalar, got shape {np.shape(leaf)}")
        return jnp.stack([jnp.asarray(leaf, dtype) for leaf in leaves])

    def tree(self, vector: jax.Array) -> PyTree:
        """Inverse of :meth:`vector`: a ``(n_terms,)`` vector back into the base structure."""
        return jax.tree.unflatten(self.treedef, [vector[i] for i in range(self.size)])


def term_names(tree: PyTree) -> tuple[str, ...]:
    """Names of the leaves of ``tree``: key paths joined with "/", or the index for a leaf."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = tuple(
        jax.tree_util.keystr(path, simple=True, separator="/") or str(i)
        for i, (path, _) in enumerate(paths)
    )
    return names


def terms_of(base_weights: PyTree) -> Terms:
    """The :class:`Terms` of a pytree of base weights.

    Raises:
      ValueError: if it has no leaves.
    """
    treedef = jax.tree.structure(base_weights)
    if treedef.num_leaves == 0:
        raise ValueError(f"base_weights must hold at least one weight, got {base_weights!r}")
    return Terms(treedef, term_names(base_weights))


def select(terms: Terms, adapt: PyTree | Sequence[str] | str | None) -> np.ndarray:
    """The boolean mask of the terms that adapt, from names or a pytree of bools.

    Raises:
      ValueError: for a name that is not a term, or a mask of another structure.
    """
    if adapt is None:
        return np.ones(terms.size, bool)
    if isinstance(adapt, str):
        adapt = (adapt,)
    if isinstance(adapt, (tuple, list, set, frozenset)) and all(isinstance(a, str) for a in adapt):
        unknown = sorted(set(adapt) - set(terms.names))
        if unknown:
            raise ValueError(f"adapt names unknown terms {unknown}; the terms are {terms.names}")
        return np.array([name in adapt for name in terms.names])
    if jax.tree.structure(adapt) != terms.treedef:
        raise ValueError(
            f"adapt must be term names or a pytree of bools shaped like the base weights, "
            f"got {adapt!r}"
        )
    return np.array([bool(a) for a in jax.tree.leaves(adapt)])
