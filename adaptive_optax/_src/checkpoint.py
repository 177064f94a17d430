"""Restoring weighting states from checkpoints, with a check that they fit the weighting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from adaptive_optax._src.base import AdaptiveState, PyTree
from adaptive_optax._src.terms import term_names

_FIELDS = frozenset(AdaptiveState._fields)
_ADDED = frozenset({"away", "away_since"})  # fields a state dict written by 0.1 lacks


def _is_state(node: Any) -> bool:
    return isinstance(node, AdaptiveState) or (
        isinstance(node, Mapping) and frozenset(node) in (_FIELDS, _FIELDS - _ADDED)
    )


def _upgraded(node: Any) -> Any:
    """A state dict (or a dict holding some) with the fields added since 0.1: at its base."""
    if not isinstance(node, Mapping):
        return node
    if frozenset(node) == _FIELDS - _ADDED:
        n = len(jax.tree.leaves(node["weights"]))
        return {**node, **{name: np.zeros((n,), np.int32) for name in _ADDED}}
    return {key: _upgraded(value) for key, value in node.items()}


def _terms_in(tree: PyTree) -> list[tuple[str, ...]]:
    """Term names of every weighting state in ``tree`` (a pytree or a state dict)."""
    found = [node for node in jax.tree.leaves(tree, is_leaf=_is_state) if _is_state(node)]
    return [
        term_names(node.weights if isinstance(node, AdaptiveState) else node["weights"])
        for node in found
    ]


def restore(target: PyTree, restored: PyTree) -> PyTree:
    """Checks a state loaded from a checkpoint against the state it should replace.

    Neither ``flax.serialization.from_state_dict`` nor ``orbax.checkpoint`` checks array
    shapes against the target (a weighting built with another ``dtype``, rule or terms can
    load silently); this function does, for the whole tree.

    Args:
      target: a state built by the current code: ``weighting.init()``, ``tx.init(params)``, a
        train state; only its structure, shapes and dtypes are used.
      restored: the loaded state, in the structure of ``target`` (from
        ``flax.serialization.from_state_dict(target, ...)``, ``from_bytes`` or
        ``orbax.checkpoint`` with a target), or a raw state dict as
        ``flax.serialization.to_state_dict`` writes it (requires flax).

    Returns:
      ``restored`` in the structure of ``target``.

    A state dict written before the fields ``away`` and ``away_since`` existed gets them at
    their "at its base" values.

    Raises:
      ValueError: naming the difference: loss terms added, removed or renamed; another tree
        structure; a leaf of another shape or dtype (a setting like ``dtype`` or the rule
        changed).

    Examples:
      >>> import adaptive_optax as ao
      >>> from flax import serialization
      >>> weighting = ao.stable_weights({"mel": 2.5, "stop": 1.0})
      >>> saved = serialization.to_bytes(weighting.init())
      >>> state = ao.restore(weighting.init(), serialization.msgpack_restore(saved))
      >>> int(state.step)
      0
    """
    restored = _upgraded(restored)
    expected, found = _terms_in(target), _terms_in(restored)
    if expected != found:
        raise ValueError(
            f"the checkpoint does not match the weighting: its loss terms are "
            f"{_describe(found)}, the weighting's are {_describe(expected)} "
            "(a term was added, removed or renamed)"
        )
    if _structure(restored) != _structure(target) and isinstance(restored, Mapping):
        from flax import serialization  # a state dict: flax wrote it

        restored = serialization.from_state_dict(target, dict(restored))
    if _structure(restored) != _structure(target):
        raise ValueError(
            f"the checkpoint's structure {jax.tree.structure(restored)} differs from the "
            f"target's {jax.tree.structure(target)}"
        )
    paths = jax.tree_util.tree_flatten_with_path(target)[0]
    for (path, want), got in zip(paths, jax.tree.leaves(restored), strict=True):
        if np.shape(got) != np.shape(want) or _dtype(got) != _dtype(want):
            raise ValueError(
                f"the checkpoint does not match at {jax.tree_util.keystr(path)}: it holds "
                f"{_dtype(got)}{list(np.shape(got))}, the target "
                f"{_dtype(want)}{list(np.shape(want))} (did a setting such as "
                "dtype or the rule change?)"
            )
    return restored


def _structure(tree: PyTree) -> Any:
    return jax.tree.structure(tree)


def _dtype(leaf: Any) -> np.dtype:
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)


def _describe(terms: list[tuple[str, ...]]) -> str:
    if not terms:
        return "none (no weighting state)"
    return " and ".join(str(t) for t in terms)
