"""Eager validation of settings: a bad value fails at construction, naming the setting.

Values that are tracers (for example under ``optax.inject_hyperparams``) cannot be checked
eagerly and are passed through; they were checked when the weighting was first built.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def concrete(value: Any) -> np.ndarray | None:
    """The leaves of ``value`` as a float64 NumPy array, or None when any is traced."""
    leaves = jax.tree.leaves(value)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return None
    return np.asarray(leaves, dtype=np.float64)


def check_number(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """Raises ``ValueError`` unless ``value`` lies in the interval, e.g. ``(0, 1)`` or ``[0, inf)``.

    Args:
      name: the setting's name, used in the message.
      value: a number or array of numbers (tracers are not checked).
      low, high: the interval's ends.
      low_open, high_open: whether an end is excluded.
      integer: whether the value must be a whole number.
    """
    array = concrete(value)
    if array is None:
        return
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    # NaN fails both comparisons, so it is never inside.
    inside = np.all(array > low if low_open else array >= low) and np.all(
        array < high if high_open else array <= high
    )
    if not inside:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    if integer and not np.all(array == np.round(array)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")


def check_static_int(name: str, value: Any, *, low: int) -> int:
    """Returns ``value`` as an int; raises ``ValueError`` unless it is a Python int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low} (it sets an array shape), got {value!r}")
    return int(value)
