"""The base weights the rule and the guards work around at one step: not a guard.

A change to the base weights lives with the base (see the guide, "Where new features go"): the
schedules a base weight may follow (``adaptive_optax._src.schedules``) and the scale
normalization, which replaces each base weight by one on a common scale.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_optax._src.base import AdaptiveState, RunningStats
from adaptive_optax._src.guards.checks import check_choice
from adaptive_optax._src.schedules import Schedules, entering, follow, scheduled_base

Normalize = Literal["first_loss", "running"] | None
"""The scale normalization: None, or the loss each base weight is divided by."""


class BaseAtStep(NamedTuple):
    """The state's weights, healed and carried along the schedules to this step: ``(n,)``.

    Attributes:
      base: the base weights at this step.
      weights: the current weights, carried with their factor ``weight / base``.
      previous: the rollback targets, likewise.
      corrupt: bool, a stored weight or base, or a schedule's value, was healed.
      present: bool (or True without schedules), the term's loss was weighted at this step.
      entered: bool scalar (or False without schedules), a scheduled term enters this step.
    """

    base: jax.Array
    weights: jax.Array
    previous: jax.Array
    corrupt: jax.Array
    present: Any
    entered: Any


def at_step(
    healed: tuple,
    state: AdaptiveState,
    step: jax.Array,
    schedules: Schedules,
    scale: float,
    built: jax.Array,
) -> BaseAtStep:
    """The healed ``(base, weights, previous, corrupt)`` carried to the weighting's base at
    ``step``: its schedules there, and its constant base weights.

    The weighting's base weights win over the state's, constant and scheduled alike: a state
    restored from a checkpoint written with other base weights (or made by another weighting
    with the same terms) has its weights carried to this weighting's base with their factor
    ``weight / base``, as along a schedule. The losses of this step were weighted with the
    state's base: a term whose base was 0 was absent, and its loss is not read (not folded,
    judged or counted).

    Args:
      healed: ``(base, weights, previous, corrupt)`` of :func:`always.heal`.
      state: the state before this step.
      step: the step being taken.
      schedules: the schedules among the base weights.
      scale: a factor on each schedule's value (see :func:`scheduled_base`).
      built: ``(n,)`` the base weights the weighting was built with (a schedule's at step 0).
    """
    base, weights, previous, corrupt = healed
    if not schedules:
        carried = follow(weights, base, built), follow(previous, base, built)
        return BaseAtStep(built, *carried, corrupt, True, False)
    present = base > 0
    before, _ = scheduled_base(schedules, jnp.maximum(state.step - 1, 0), base, scale)
    entered = entering(before, base)  # a term whose loss is read from this step on
    new_base, bad = scheduled_base(schedules, step, base, scale)
    new_base = jnp.where(schedules.scheduled, new_base, built)
    weights, previous = follow(weights, base, new_base), follow(previous, base, new_base)
    return BaseAtStep(new_base, weights, previous, corrupt | bad, present, entered)


def absent_weigh_nothing(schedules: Schedules, base: jax.Array, *weights: jax.Array) -> tuple:
    """Each vector of ``weights`` with 0 where the base is 0: an absent term weighs nothing,
    whatever its bounds."""
    if not schedules:
        return weights
    return tuple(jnp.where(base > 0, w, 0) for w in weights)


def absent_forget(present: Any, state: AdaptiveState, *, empty: tuple) -> tuple:
    """The state's ``(stats, spike_stats, start_ramp)``, emptied for each absent term.

    A scheduled term whose base is 0 is absent; when its base turns positive again (a paused
    adversarial stage, cyclical KL annealing) it enters as at its first entry: with empty
    statistics, its losses judged for spikes only after the entry's warmup, and the start
    ramp from its beginning. Without schedules (``present`` is True) nothing changes.

    Args:
      present: ``(n,)`` bool, the term's loss is read at this step (or True).
      state: the state before this step.
      empty: ``(stats, spike_stats, start_ramp)`` as ``init`` makes them.
    """
    kept = (state.stats, state.spike_stats, state.start_ramp)
    if present is True:
        return kept
    return jax.tree.map(lambda new, old: jnp.where(present, old, new), empty, kept)


class Normalization(NamedTuple):
    """The scale normalization: base weights ``b_i * c / L_i`` on a common scale.

    ``L_i`` is the term's first finite loss (``"first_loss"``, GradNorm's ``L_i(0)``) or its
    running mean (``"running"``), ``c`` keeps the adaptive terms' base total. The rule, the
    bounds, the start ramp and ``moves="ratios"`` then work around the normalized base;
    non-adaptive terms, and every term while disabled, keep the base weights given. Keeps no
    state: it reads the shared statistics.

    Attributes:
      normalize: None (off), ``"first_loss"`` or ``"running"``.

    Examples:
      >>> from adaptive_optax._src.guards.base_weights import Normalization
      >>> Normalization.checked(normalize="first_loss")
      Normalization(normalize='first_loss')
    """

    normalize: Normalize

    @classmethod
    def checked(cls, normalize: Any) -> Normalization:
        """The record, its setting validated.

        Raises:
          ValueError: naming ``normalize`` and its value, unless None, ``"first_loss"`` or
            ``"running"``.
        """
        check_choice("normalize", normalize, (None, "first_loss", "running"))
        return cls(normalize)

    def base(self, base: jax.Array, stats: RunningStats, adaptive: Any) -> jax.Array:
        """The ``(n,)`` base weights the rule works around: normalized, or ``base`` when off.

        Over the adaptive terms with a loss seen, their total kept. ``L_i`` is floored at
        ``1e-8`` times the largest (so every ratio is at most 1e8 and finite); other terms keep
        their base weight.
        """
        if self.normalize is None:
            return base
        scale = jnp.abs(stats.first_loss if self.normalize == "first_loss" else stats.loss_mean)
        known = adaptive & (stats.loss_count > 0)
        top = jnp.max(jnp.where(known, scale, 0.0))
        known &= top > 0
        relative = jnp.maximum(scale / jnp.where(top > 0, top, 1.0), 1e-8)  # in [1e-8, 1]
        b = base.astype(scale.dtype)
        inverse = jnp.where(known, b / relative, 0.0)
        peak = jnp.max(inverse)
        inverse = inverse / jnp.where(peak > 0, peak, 1.0)  # in [0, 1]: the sum cannot overflow
        total_base = jnp.sum(jnp.where(known, b, 0.0))
        total_inverse = jnp.sum(inverse)
        normalized = inverse * (total_base / jnp.where(total_inverse > 0, total_inverse, 1.0))
        good = known & jnp.isfinite(normalized) & (normalized > 0)
        return jnp.where(good, normalized, b).astype(base.dtype)
