"""Scheduled base weights: a term's base weight as a function of the step, as optax schedules.

A leaf of the base weights may be a callable ``schedule(count) -> weight`` (any optax schedule:
``optax.linear_schedule``, ``optax.piecewise_constant_schedule``, ``optax.cosine_decay_schedule``,
a step function for a term that enters at step ``N``). Its value is taken at the state's step
after the update (the number of updates so far, optax's ``count``), so the weights returned by
``update`` follow the schedule at the step they weight, and ``init`` holds its value at 0.

A term whose scheduled base is 0 is *absent*: its weight is 0, its loss and gradient statistics
are not read (not folded into the statistics, not judged for spikes, not counted as non-finite),
and it enters, when its base turns positive, with fresh statistics and its weight at the base;
the spike guard judges a scheduled term after ``ENTRY_SPIKE_WARMUP`` values of it, not 10.
While its base moves, the adapted factor ``weight / base`` is kept, so bounds, guards, the spike
guard and :func:`adaptive_optax.disable` follow the scheduled base.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_optax._src import validation
from adaptive_optax._src.terms import Terms

ENTRY_FACTOR = 2.0  # a scheduled base rising by more than this factor in one step "enters"
# values a scheduled term's statistics need before the spike guard judges it (10 for a constant
# term): measured on examples/vocoder_gan.py, whose adversarial loss rises for 10 to 40 steps
# after entry while the discriminator warms up
ENTRY_SPIKE_WARMUP = 50


class Schedules(NamedTuple):
    """The schedules among the base weights.

    Attributes:
      functions: per term, its schedule, or None for a constant base weight.
      scheduled: NumPy bool ``(n,)``, which terms are scheduled.
    """

    functions: tuple[Callable[[jax.Array], Any] | None, ...]
    scheduled: np.ndarray

    def __bool__(self) -> bool:
        return bool(self.scheduled.any())


def base_vector(terms: Terms, base_weights: Any, dtype) -> tuple[jax.Array, Schedules]:
    """The base weights at step 0 as an ``(n,)`` vector, and the schedules among them.

    A constant base weight must be positive and finite; a schedule is probed at step 0 (called
    on a concrete step, and traced, so Python branching on the step fails here) and must give a
    finite scalar ``>= 0``.

    Raises:
      ValueError: naming the term and what is wrong with its base weight.
    """
    functions, values = [], []
    for name, leaf in zip(terms.names, jax.tree.leaves(base_weights), strict=True):
        if callable(leaf):
            functions.append(leaf)
            values.append(_probe(name, leaf))
            continue
        # one message for every value out of range, 0, inf and NaN alike: the allowed range
        if validation.is_real_scalar(leaf) and not 0 < float(leaf) < np.inf:
            raise ValueError(
                f"base_weights[{name!r}] must be in (0, inf), a finite number > 0 (a term "
                f"that enters later takes a schedule, 0 until it enters), got {leaf!r}"
            )
        validation.check_number(f"base_weights[{name!r}]", leaf, low=0, low_open=True)
        functions.append(None)
        values.append(leaf)
    scheduled = np.array([fn is not None for fn in functions])
    vector = jnp.stack([jnp.asarray(v, dtype) for v in values])
    return vector, Schedules(tuple(functions), scheduled)


def _probe(name: str, schedule: Callable) -> Any:
    """The schedule's value at step 0, after checking that it is a traceable scalar >= 0.

    Built under a trace (inside ``jax.jit``), the value is still computed eagerly; a schedule
    that closes over traced values gives a traced value, whose checks are left to ``update``.
    """
    what = f"base_weights[{name!r}] is a schedule (a callable of the step)"
    try:
        with jax.ensure_compile_time_eval():
            value = _call(schedule, jnp.zeros([], jnp.int32))
        traced = jax.eval_shape(
            lambda step: _call(schedule, step), jax.ShapeDtypeStruct((), jnp.int32)
        )
    except Exception as error:  # any failure of user code, reported with the term's name
        raise ValueError(f"{what} that fails on an int32 step: {error!r}") from error
    if jnp.shape(value) != () or getattr(traced, "shape", None) != ():
        raise ValueError(f"{what} that must return a scalar, got shape {jnp.shape(value)}")
    concrete = validation.concrete(value)
    if concrete is None:
        return value
    if not (np.isfinite(concrete[0]) and concrete[0] >= 0):
        raise ValueError(f"{what} that must be finite and >= 0, got {float(concrete[0])} at step 0")
    return float(concrete[0])


def _call(schedule: Callable, step: jax.Array) -> jax.Array:
    """``schedule(step)`` under standard dtype promotion (optax's schedules mix Python floats
    and int32 counts, which strict promotion refuses)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.asarray(schedule(step))


def scheduled_base(
    schedules: Schedules, step: jax.Array, base: jax.Array, scale: float = 1.0
) -> tuple:
    """Each scheduled base at ``step``; a non-finite or negative value keeps ``base``.

    Args:
      schedules: the schedules.
      step: the step after this update.
      base: ``(n,)`` the base weights of the state (at the previous step).
      scale: a factor on each schedule's value (``1 / n`` for a rule whose weights rest at
        ``base / n``, see :class:`adaptive_optax.Rule`).

    Returns:
      ``(new_base, bad)``: the base weights at ``step`` and which schedules gave a value that
      is not finite and ``>= 0`` (healed to the previous base, and counted as healed).
    """
    values = [
        base[i] if fn is None else (_call(fn, step).astype(base.dtype) * scale).reshape(())
        for i, fn in enumerate(schedules.functions)
    ]
    new = jnp.stack(values)
    bad = schedules.scheduled & ~(jnp.isfinite(new) & (new >= 0))
    return jnp.where(bad, base, new), bad


def follow(value: jax.Array, old_base: jax.Array, new_base: jax.Array) -> jax.Array:
    """A weight carried from ``old_base`` to ``new_base`` with its factor ``value / old_base``.

    A term entering (``old_base == 0``) starts at its new base.
    """
    moved = old_base != new_base
    positive = old_base > 0
    ratio = new_base / jnp.where(positive, old_base, 1.0)
    return jnp.where(moved, jnp.where(positive, value * ratio, new_base), value)


def entering(old_base: jax.Array, new_base: jax.Array) -> jax.Array:
    """Whether any base rises by more than ``ENTRY_FACTOR`` this step (from 0 included)."""
    return jnp.any(new_base > ENTRY_FACTOR * old_base)
