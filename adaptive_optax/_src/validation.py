"""Eager validation of settings: a bad value fails at construction, naming the setting.

Values that are tracers (under ``jax.jit``, or ``optax.inject_hyperparams``) cannot be checked
eagerly: :func:`check_number` returns them clipped into their range, never as given, and
records whether they were in range with the :func:`traced_settings` collector that is open
(``adaptive_optax.guarded`` opens one and skips every adjustment of a step whose traced
settings were out of range, counting it).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)

_COLLECTORS: list[list[jax.Array]] = []


@contextlib.contextmanager
def traced_settings() -> Iterator[list[jax.Array]]:
    """Collects, while open, one bool scalar per traced setting checked: in its range.

    Yields:
      The list the flags are appended to (empty when no setting was traced).
    """
    flags: list[jax.Array] = []
    _COLLECTORS.append(flags)
    try:
        yield flags
    finally:
        _COLLECTORS.pop()


def enclosing_verdicts() -> list[jax.Array]:
    """The verdicts already in the open collector (empty when none is open): a preset opens
    one around its rule's construction, so that :func:`adaptive_optax.guarded`, built next,
    also skips the steps whose rule settings were traced out of range."""
    return list(_COLLECTORS[-1]) if _COLLECTORS else []


def note_traced(ok: jax.Array) -> None:
    """Records a traced check's verdict (a bool scalar) with the open collector, if any."""
    if _COLLECTORS:
        _COLLECTORS[-1].append(ok)


def _clip_traced(
    leaf: Any, *, low: float, high: float, low_open: bool, high_open: bool, integer: bool
) -> tuple[jax.Array, jax.Array]:
    """A traced setting clipped into its interval, and whether it was in it (a bool scalar).

    An open end is replaced by the nearest representable value inside (next to an open 0, the
    smallest normal number, since XLA may flush subnormals to 0); NaN becomes the lower end
    (the upper one when the lower is infinite). A whole-number setting is rounded.
    """
    x = jnp.asarray(leaf)
    if not jnp.issubdtype(x.dtype, jnp.floating):  # an integer or bool tracer
        ok = jnp.asarray(True)
        lo = math.ceil(low) + int(low_open and float(low).is_integer()) if low > -math.inf else None
        hi = (
            math.floor(high) - int(high_open and float(high).is_integer())
            if high < math.inf
            else None
        )
        if lo is not None:
            ok = ok & jnp.all(x >= lo)
            x = jnp.maximum(x, jnp.asarray(lo, x.dtype))
        if hi is not None:
            ok = ok & jnp.all(x <= hi)
            x = jnp.minimum(x, jnp.asarray(hi, x.dtype))
        return x, ok
    ok = jnp.isfinite(x)
    ok &= (x > low) if low_open else (x >= low)
    ok &= (x < high) if high_open else (x <= high)
    if integer:
        ok &= x == jnp.round(x)
    lo = jnp.asarray(low, x.dtype)
    hi = jnp.asarray(high, x.dtype)
    tiny = jnp.finfo(x.dtype).tiny  # next to 0 take a normal number: subnormals may be flushed
    if low_open:
        lo = jnp.asarray(tiny, x.dtype) if low == 0 else jnp.nextafter(lo, hi)
    if high_open:
        hi = jnp.asarray(-tiny, x.dtype) if high == 0 else jnp.nextafter(hi, lo)
    clipped = jnp.clip(x, lo, hi)
    if integer:
        clipped = jnp.clip(jnp.round(clipped), lo, hi)
    fallback = lo if low > -math.inf else (hi if high < math.inf else jnp.zeros_like(lo))
    return jnp.where(jnp.isnan(clipped), fallback, clipped), jnp.all(ok)


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


def is_real_scalar(value: Any) -> bool:
    """Whether ``value`` is one concrete real number (a Python number or a 0-d array)."""
    return not _is_traced(value) and _is_number(value) and np.ndim(value) == 0


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
) -> Any:
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

    Returns:
      ``value`` as given when it is concrete (and valid); a traced value clipped into the
      interval (NaN to its lower end, a whole number rounded), whose verdict, in range or
      not, goes to the open :func:`traced_settings` collector.

    A Python ``int`` must fit an int32 (JAX converts it to one): ``2**40`` is refused; pass a
    float for a large real setting.
    """
    if _is_traced(value):
        if static:
            raise ValueError(
                f"{name} is static: it cannot be traced or injected; pass a Python number "
                f"(with optax.inject_hyperparams, list it in static_args=({name!r},))"
            )
        interval = dict(low=low, high=high, low_open=low_open, high_open=high_open, integer=integer)
        verdicts: list[jax.Array] = []

        def clip(leaf: Any) -> Any:
            if not isinstance(leaf, jax.core.Tracer):
                return leaf
            clipped, ok = _clip_traced(leaf, **interval)
            verdicts.append(ok)
            return clipped

        clipped = jax.tree.map(clip, value)
        for ok in verdicts:
            note_traced(ok)
        return clipped
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
    return value


def check_flag(name: str, value: Any) -> bool:
    """Returns ``value``; raises ``ValueError`` unless it is a bool (``"no"`` is not False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
