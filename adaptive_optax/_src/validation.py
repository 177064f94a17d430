"""Eager validation of settings: a bad value fails at construction, naming the setting.

Values that are tracers (for example under ``optax.inject_hyperparams``) cannot be checked
eagerly and are passed through; they were checked when the weighting was first built.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)


def _is_traced(value: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def _is_number(leaf: Any) -> bool:
    """A real number or a numeric array; booleans and strings are not numbers."""
    if isinstance(leaf, (bool, np.bool_, str, bytes)):
        return False
    if isinstance(leaf, numbers.Real):
        return True
    dtype = getattr(leaf, "dtype", None)
    return (
        dtype is not None and np.issubdtype(dtype, np.number) and np.isrealobj(np.empty(0, dtype))
    )


def concrete(value: Any) -> np.ndarray | None:
    """The leaves of ``value`` as a flat float64 NumPy array, or None when any is traced."""
    if _is_traced(value):
        return None
    return np.concatenate(
        [np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(value)]
    )


def check_number(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    per_term: bool = False,
    static: bool = False,
) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number in the interval, e.g. ``(0, 1)``.

    Args:
      name: the setting's name, used in the message.
      value: one number (a Python number or a 0-d array); with ``per_term``, also an array of
        numbers or a pytree of them, one per term. Tracers are not checked.
      low, high: the interval's ends; values must be finite whatever the ends.
      low_open, high_open: whether an end is excluded.
      integer: whether the value must be a whole number (a step count or a seed).
      per_term: whether one value per term is accepted.
      static: whether the value fixes the computation's structure or is read only at
        ``init`` (an iteration count, a seed): a traced value is then refused.

    A Python ``int`` must fit an int32 (JAX converts it to one): ``2**40`` is refused; pass a
    float for a large real setting.
    """
    if _is_traced(value):
        if static:
            raise ValueError(
                f"{name} is static: it cannot be traced or injected; pass a Python number "
                f"(with optax.inject_hyperparams, list it in static_args=({name!r},))"
            )
        return
    kind = "a whole number" if integer else "a real number"
    leaves = jax.tree.leaves(value)
    if not leaves or not all(_is_number(leaf) for leaf in leaves):
        raise ValueError(f"{name} must be {kind}, got {value!r} of type {type(value).__name__}")
    if not per_term and (len(leaves) != 1 or leaves[0] is not value or np.ndim(value) != 0):
        raise ValueError(
            f"{name} must be a single number ({kind}), got {value!r} of type {type(value).__name__}"
        )
    if any(isinstance(leaf, int) and abs(leaf) > INT32_MAX for leaf in leaves):
        raise ValueError(
            f"{name} must fit an int32 (at most {INT32_MAX}), got {value!r}; pass a float "
            "for a large real setting"
        )
    array = concrete(value)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    # NaN fails both comparisons, so it is never inside.
    inside = np.all(array > low if low_open else array >= low) and np.all(
        array < high if high_open else array <= high
    )
    if not inside:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    if integer and not np.all(array == np.round(array)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if integer and np.any(np.abs(array) > INT32_MAX):
        raise ValueError(f"{name} must fit an int32 (at most {INT32_MAX}), got {value!r}")


def check_flag(name: str, value: Any) -> bool:
    """Returns ``value``; raises ``ValueError`` unless it is a bool (``"no"`` is not False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
