"""The bounds: each weight stays within factors of its base, or within absolute limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_optax._src import validation
from adaptive_optax._src.base import PyTree
from adaptive_optax._src.terms import Terms

BoundsOf = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class Bounds(NamedTuple):
    """A limit: a landing proposal is clipped to ``[low, high]``.

    ``low, high = base * bounds`` for the base weights the rule works around (scheduled,
    normalized), overridden by ``min_weight`` / ``max_weight``. The spike guard's cut and the
    start ramp respect the lower bound too. Keeps no state: the bounds follow the base weights
    of the state.

    Attributes:
      bounds: ``(low, high)`` factors of each base weight, ``0 <= low``, ``0 < high``; None
        for ``[0, inf)``.
      min_weight: absolute lower bound, a scalar or a pytree shaped like the base weights, or
        None.
      max_weight: absolute upper bound, likewise, or None.

    Examples:
      >>> import jax.numpy as jnp
      >>> from adaptive_optax._src.guards.bounds import Bounds
      >>> from adaptive_optax._src.terms import terms_of
      >>> terms = terms_of({"a": 1.0, "b": 2.0})
      >>> bounds = Bounds.checked(bounds=(0.5, 2.0), min_weight=None, max_weight=None)
      >>> bounds_of = bounds.of(terms, jnp.array([1.0, 2.0]), adaptive=[True, True])
      >>> [x.tolist() for x in bounds_of(jnp.array([1.0, 2.0]))]
      [[0.5, 1.0], [2.0, 4.0]]
    """

    bounds: tuple[Any, Any] | None
    min_weight: PyTree | None
    max_weight: PyTree | None

    @classmethod
    def checked(cls, bounds: Any, min_weight: Any, max_weight: Any) -> Bounds:
        """The record, its settings validated (their fit to the terms is checked by :meth:`of`).

        Raises:
          ValueError: naming the setting and its value: ``bounds`` must be a pair of numbers
            ``0 <= low``, ``0 < high`` or None; ``min_weight`` >= 0, ``max_weight`` > 0.
        """
        if bounds is not None:
            if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
                raise ValueError(
                    f"bounds must be a pair (low, high) of factors or None, got {bounds!r}"
                )
            bounds = (
                validation.check_number("bounds[0]", bounds[0], low=0),
                validation.check_number("bounds[1]", bounds[1], low=0, low_open=True),
            )
        if min_weight is not None:
            min_weight = validation.check_number("min_weight", min_weight, low=0, per_term=True)
        if max_weight is not None:
            max_weight = validation.check_number(
                "max_weight", max_weight, low=0, low_open=True, per_term=True
            )
        return cls(bounds, min_weight, max_weight)

    def of(self, terms: Terms, base: jax.Array, adaptive: Any) -> BoundsOf:
        """``bounds_of(base) -> (low, high)``, checked against the ``(n,)`` base weights given.

        Args:
          terms: the loss terms.
          base: ``(n,)`` base weights to check the bounds against (1 for a scheduled term).
          adaptive: ``(n,)`` bools: the terms whose base must lie within its bounds.

        Raises:
          ValueError: naming the term, for ``low >= high``, an adaptive base outside its
            bounds, or a per-term bound of another structure than the base weights.
        """
        bounds = self.bounds
        min_weight, max_weight = self.min_weight, self.max_weight
        detail = f"(bounds={bounds}, min_weight={min_weight}, max_weight={max_weight})"
        if min_weight is not None:
            min_weight = terms.per_term(min_weight, "min_weight", base.dtype)
        if max_weight is not None:
            max_weight = terms.per_term(max_weight, "max_weight", base.dtype)

        def bounds_of(base: jax.Array) -> tuple[jax.Array, jax.Array]:
            low, high = jnp.zeros_like(base), jnp.full_like(base, jnp.inf)
            if bounds is not None:
                low, high = base * bounds[0], base * bounds[1]
            low = low if min_weight is None else min_weight
            high = high if max_weight is None else max_weight
            return low, high

        values = validation.concrete((*bounds_of(base), base))
        if values is None:  # traced: the weighting skips its adjustments unless low < high
            traced_low, traced_high = bounds_of(base)
            validation.note_traced(jnp.all(traced_low < traced_high))
        else:
            lows, highs, bases = np.split(values, 3)
            for name, lo, hi, b, adapts in zip(
                terms.names, lows, highs, bases, adaptive, strict=True
            ):
                if not lo < hi:
                    raise ValueError(
                        f"the bounds of {name!r} must satisfy low < high, got "
                        f"[{lo:.6g}, {hi:.6g}] " + detail
                    )
                if adapts and not lo <= b <= hi:
                    raise ValueError(
                        f"base_weights[{name!r}]={b:.6g} lies outside its bounds "
                        f"[{lo:.6g}, {hi:.6g}]"
                    )
        return bounds_of

    @staticmethod
    def clip(proposal: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        """The ``(n,)`` proposal within ``[low, high]`` (a NaN stays NaN, for validation)."""
        return jnp.clip(proposal, low, high)
