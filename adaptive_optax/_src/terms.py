"""Loss terms: the map between a pytree of per-term scalars and a vector, and term names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _is_real(leaf: Any) -> bool:
    """A real number or an array of them: not a bool, a complex number, a string or None."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return isinstance(leaf, (int, float)) and not isinstance(leaf, bool)
    return np.dtype(dtype).kind in "fiu" or jnp.issubdtype(dtype, jnp.floating)


def term_names(tree: PyTree) -> tuple[str, ...]:
    """Names of the leaves of ``tree``: key paths joined with "/", or the index for a leaf."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return tuple(
        jax.tree_util.keystr(path, simple=True, separator="/") or str(i)
        for i, (path, _) in enumerate(paths)
    )


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

    def check_structure(self, tree: PyTree, what: str) -> None:
        """Raises ``ValueError`` naming the missing and extra terms unless ``tree`` fits.

        Args:
          tree: a pytree that should have the structure of the base weights.
          what: its name in the message (``"losses"``, ``"grad_norms"``).
        """
        structure = jax.tree.structure(tree)
        if structure == self.treedef:
            return
        given = term_names(tree)
        missing = [name for name in self.names if name not in given]
        extra = [name for name in given if name not in self.names]
        if missing or extra:
            detail = f"missing terms {missing}" if missing else ""
            detail += ("; " if missing and extra else "") + (
                f"extra terms {extra}" if extra else ""
            )
        else:
            detail = f"another structure: {structure}"
        raise ValueError(
            f"{what} must have the structure of the base weights, terms {list(self.names)}; "
            f"got {detail}"
        )

    def vector(self, tree: PyTree, what: str, dtype: Any = None) -> jax.Array:
        """Stacks a pytree of scalars shaped like the base weights into an ``(n,)`` vector.

        Raises:
          ValueError: naming the missing or extra terms, or a leaf that is not a scalar.
        """
        self.check_structure(tree, what)
        leaves = jax.tree.leaves(tree)
        for name, leaf in zip(self.names, leaves, strict=True):
            if not _is_real(leaf):
                raise ValueError(
                    f"{what}[{name!r}] must be a real number, got {leaf!r} of type "
                    f"{type(leaf).__name__}"
                )
            if np.shape(leaf) != ():
                raise ValueError(f"{what}[{name!r}] must be a scalar, got shape {np.shape(leaf)}")
        return jnp.stack([jnp.asarray(leaf, dtype) for leaf in leaves])

    def per_term(self, value: Any, what: str, dtype: Any) -> jax.Array:
        """One scalar for every term, or a pytree of scalars shaped like the base weights.

        Raises:
          ValueError: for an array with one or more axes (give a pytree of scalars instead), or
            a pytree of another structure, naming the missing or extra terms.
        """
        if jax.tree.structure(value) != self.treedef and jax.tree_util.treedef_is_leaf(
            jax.tree.structure(value)
        ):
            if np.ndim(value) != 0:
                raise ValueError(
                    f"{what} must be one scalar or a pytree of scalars shaped like the base "
                    f"weights (terms {list(self.names)}), got an array of shape {np.shape(value)}"
                )
            return jnp.full((self.size,), value, dtype)
        return self.vector(value, what, dtype)

    def tree(self, vector: jax.Array) -> PyTree:
        """Inverse of :meth:`vector`: the last axis of ``vector`` back into the base structure.

        Leading axes are kept: a batched vector gives a pytree of batched leaves.
        """
        leaves = [vector[..., i] for i in range(self.size)]
        return jax.tree.unflatten(self.treedef, leaves)


def stack_terms(tree: PyTree) -> jax.Array:
    """The leaves of a pytree of per-term scalars stacked on a last axis: ``(..., n)``.

    Works on batched leaves; the inverse of :meth:`Terms.tree`.
    """
    return jnp.stack(jax.tree.leaves(tree), axis=-1)


def terms_of(base_weights: PyTree) -> Terms:
    """The :class:`Terms` of a pytree of base weights.

    Raises:
      ValueError: if it has no leaves, or a leaf that is not a scalar (a vector of base
        weights must be split into a pytree of scalars, one per term).
    """
    treedef = jax.tree.structure(base_weights)
    if treedef.num_leaves == 0:
        raise ValueError(f"base_weights must hold at least one weight, got {base_weights!r}")
    names = term_names(base_weights)
    for name, leaf in zip(names, jax.tree.leaves(base_weights), strict=True):
        if np.ndim(leaf) != 0:
            where = "" if name == "0" and treedef.num_leaves == 1 else f"[{name!r}]"
            raise ValueError(
                f"base_weights{where} must be a scalar: base weights are a pytree with one scalar "
                f"per loss term, such as {{'mel': 2.5, 'stop': 1.0}} or a tuple of floats; got an "
                f"array of shape {np.shape(leaf)}"
            )
    return Terms(treedef, names)


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
