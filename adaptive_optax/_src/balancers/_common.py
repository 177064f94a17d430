"""What the balancing rules share: the preset wrapper, safe arithmetic, the weighted softmax."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers.recommended import BARE
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.guards import guarded
from adaptive_optax._src.statistics import at_least_float32
from adaptive_optax._src.terms import terms_of

GUARD_SETTINGS = tuple(
    name
    for name, parameter in inspect.signature(guarded).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)
"""The keyword settings of :func:`adaptive_optax.guarded`, which every preset accepts."""

Factory = TypeVar("Factory", bound=Callable[..., LossWeighting])


def preset(factory: Factory) -> Factory:
    """Makes a preset's errors name the preset: an unknown keyword is a ``TypeError`` naming
    it, its own settings and the guards' (not ``guarded()``), and a bad value is a
    ``ValueError`` that starts with its name."""
    parameters = inspect.signature(factory).parameters.values()
    own = tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
    accepted = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
    name = factory.__name__

    @functools.wraps(factory)
    def named(*args: Any, **kwargs: Any) -> LossWeighting:
        for keyword in kwargs:
            if keyword not in accepted and keyword not in GUARD_SETTINGS:
                raise TypeError(
                    f"{name}() got an unexpected keyword argument {keyword!r}; its settings: "
                    f"{', '.join(own) or 'none'}, and those of adaptive_optax.guarded: "
                    f"{', '.join(GUARD_SETTINGS)}"
                )
        try:
            # collects the verdicts of the rule's traced settings for guarded (validation)
            with validation.traced_settings():
                return factory(*args, **kwargs)
        except ValueError as error:
            message = str(error)
            raise ValueError(
                message if message.startswith(f"{name}: ") else f"{name}: {message}"
            ) from None

    return named  # type: ignore[return-value]


def bare(rule: Rule, base_weights: PyTree, guards: dict[str, Any]) -> LossWeighting:
    """``rule`` under the :data:`BARE` settings, overridden by the user's ``guards``."""
    return guarded(rule, base_weights, **{**BARE, **guards})


def float_dtype(x: jax.Array):
    """The dtype a rule computes in: at least float32."""
    return at_least_float32(x.dtype)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` with ``|denominator|`` floored at the dtype's tiny."""
    tiny = jnp.finfo(denominator.dtype).tiny
    return numerator / jnp.where(jnp.abs(denominator) >= tiny, denominator, tiny)


def finite_or(x: jax.Array, fallback: float | jax.Array) -> jax.Array:
    """``x`` where finite, else ``fallback``."""
    return jnp.where(jnp.isfinite(x), x, fallback)


def scaled_softmax(logits: jax.Array, numerator_weights: jax.Array | None = None) -> jax.Array:
    """``n * f_i exp(x_i) / sum_j f_j exp(x_j)``: weights summing to the number of terms.

    Finite for any input: infinities are clipped to the dtype's range and NaN counts as 0; the
    maximum is subtracted before ``exp``. With ``numerator_weights`` (clipped at 0) summing to
    zero, the weights are uniform.
    """
    big = jnp.finfo(logits.dtype).max
    logits = jnp.nan_to_num(logits, nan=0.0, posinf=big, neginf=-big)
    exps = jnp.exp(logits - jnp.max(logits))
    if numerator_weights is not None:
        weights = jnp.clip(finite_or(numerator_weights, 0.0), 0.0, big)
        exps = exps * (weights / jnp.maximum(jnp.max(weights), jnp.finfo(logits.dtype).tiny))
    total = jnp.sum(exps)
    n = logits.shape[0]
    return jnp.where(total > 0, n * exps / jnp.where(total > 0, total, 1.0), 1.0)


def require(signals: Signals, name: str, rule: str) -> jax.Array:
    """The gradient statistic ``name`` of this step, or a ``ValueError`` saying how to pass it."""
    value = signals.grad_stats.get(name)
    how = "grad_norms=" if name == "norm" else f"grad_stats={{{name!r}: ...}}"
    if value is None:
        raise ValueError(
            f"{rule} needs the gradient statistic {name!r}: pass {how} to update, or use "
            "adaptive_optax.weight_gradients, which computes it from per-term gradients"
        )
    return value


def main_index(base_weights: PyTree, main: str | int) -> int:
    """The leaf index of the main term, given by name or index; ``ValueError`` if none."""
    names = terms_of(base_weights).names
    if isinstance(main, str):
        if main not in names:
            raise ValueError(f"main must name a term {names}, got {main!r}")
        return names.index(main)
    if not (isinstance(main, int) and 0 <= main < len(names)):
        raise ValueError(f"main must be a term name or an index below {len(names)}, got {main!r}")
    return main
