"""The running statistics every rule shares: the loss history and the recent gradient norm.

Every statistic is an elementwise update of ``(n,)`` vectors: no window is kept and nothing is
reduced over time, so a jitted ``update`` fuses into a few kernels whatever the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src import validation
from adaptive_optax._src.base import RunningStats, Signals

EPS = 1e-8  # floor of |mean| in relative quantities
MAX_DEVIATION = 1e3  # |relative deviation| is clipped here before squaring: no overflow


def at_least_float32(dtype) -> jnp.dtype:
    """The dtype statistics are kept in: float32, or float64 for float64 weights.

    Written without ``jnp.promote_types``, which refuses bfloat16 with float32 under
    ``jax_numpy_dtype_promotion="strict"``.
    """
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype).itemsize > 4 else jnp.float32)


def init_stats(n_terms: int, dtype) -> RunningStats:
    """Empty statistics for ``n_terms`` terms."""
    zeros = jnp.zeros((n_terms,), dtype)
    counts = jnp.zeros((n_terms,), jnp.int32)
    return RunningStats(
        loss_count=counts,
        first_loss=zeros,
        previous_loss=zeros,
        loss_mean=zeros,
        recent_mean=zeros,
        rel_variance=zeros,
        grad_count=counts,
        grad_mean=zeros,
    )


def count_where(counter: jax.Array, event: jax.Array) -> jax.Array:
    """``counter + 1`` where ``event``, saturating at the dtype's maximum instead of wrapping."""
    return jnp.where(event, optax.safe_increment(counter), counter)


def span_decay(window) -> jax.Array:
    """The EMA decay whose centre of mass is that of a window of ``window`` steps."""
    return 1.0 - 2.0 / (jnp.asarray(window, jnp.float32) + 1.0)


def ema_update(mean: jax.Array, count: jax.Array, value: jax.Array, decay) -> jax.Array:
    """One step of the bias-corrected EMA, kept corrected: ``mean`` after ``count`` values.

    Equal to Adam's ``ema / (1 - decay**n)`` with ``ema = decay * ema + (1 - decay) * value``,
    written as the convex combination ``(1 - a) * mean + a * value`` with
    ``a = (1 - decay) / (1 - decay**n)``, which cannot overflow; the first value is taken as is.
    """
    decay = jnp.asarray(decay, mean.dtype)
    n = optax.safe_increment(count).astype(mean.dtype)
    rate = (1.0 - decay) / jnp.maximum(1.0 - decay**n, jnp.finfo(mean.dtype).tiny)
    rate = jnp.where(count == 0, 1.0, rate)
    return (1.0 - rate) * mean + rate * value


def relative_deviation(value: jax.Array, mean: jax.Array) -> jax.Array:
    """``(value - mean) / max(|mean|, eps)``, clipped to ``+/-MAX_DEVIATION``."""
    deviation = (value - mean) / jnp.maximum(jnp.abs(mean), EPS)
    return jnp.clip(deviation, -MAX_DEVIATION, MAX_DEVIATION)


def _zero_where_not(finite: jax.Array, value: jax.Array) -> jax.Array:
    """``value`` with the entries of non-finite terms zeroed: a vector's, or a matrix's rows
    and columns (the Gramian)."""
    if value.ndim == 2:
        return jnp.where(finite[:, None] & finite[None, :], value, 0.0)
    return jnp.where(finite, value, 0.0)


def update_stats(
    stats: RunningStats,
    losses: jax.Array,
    grad_stats: Mapping[str, jax.Array],
    finite: jax.Array,
    step: jax.Array,
    *,
    ema_decay,
    window,
) -> tuple[RunningStats, Signals]:
    """Folds one step into the statistics of the terms where ``finite`` holds.

    Args:
      stats: the statistics before this step.
      losses: ``(n,)`` this step's losses (may hold non-finite values).
      grad_stats: ``{name: (n,)}`` this step's gradient statistics; ``"norm"`` is kept
        in the recent gradient-norm mean.
      finite: ``(n,)`` bool, which terms to fold in; the others are left unchanged.
      step: the step being taken, passed through to the signals.
      ema_decay: decay of the running mean.
      window: span of the recent statistics.

    Returns:
      The new statistics and the :class:`Signals` of this step, all finite.
    """
    losses = jnp.where(finite, losses, 0.0)
    seen = stats.loss_count > 0
    recent = span_decay(window)

    def fold(new, old):
        return jnp.where(finite & jnp.isfinite(new), new, old)

    deviation = jnp.where(seen, relative_deviation(losses, stats.loss_mean), 0.0)
    recent_deviation = jnp.where(seen, relative_deviation(losses, stats.recent_mean), 0.0)
    variance = ema_update(stats.rel_variance, stats.loss_count, recent_deviation**2, recent)
    first = jnp.where(seen, stats.first_loss, losses)
    previous = jnp.where(seen, stats.previous_loss, losses)

    grad_stats = {name: _zero_where_not(finite, value) for name, value in grad_stats.items()}
    grad_mean, grad_count = stats.grad_mean, stats.grad_count
    norm = grad_stats.get("norm")
    if norm is not None:
        grad_mean = fold(ema_update(grad_mean, grad_count, norm, recent), grad_mean)
        grad_count = count_where(grad_count, finite)

    new_stats = RunningStats(
        loss_count=count_where(stats.loss_count, finite),
        first_loss=fold(first, stats.first_loss),
        previous_loss=fold(losses, stats.previous_loss),
        loss_mean=fold(
            ema_update(stats.loss_mean, stats.loss_count, losses, ema_decay), stats.loss_mean
        ),
        recent_mean=fold(
            ema_update(stats.recent_mean, stats.loss_count, losses, recent), stats.recent_mean
        ),
        rel_variance=fold(variance, stats.rel_variance),
        grad_count=grad_count,
        grad_mean=grad_mean,
    )
    signals = Signals(
        step=step,
        losses=losses,
        finite=finite,
        loss_count=stats.loss_count,
        first_loss=first,
        previous_loss=previous,
        loss_mean=stats.loss_mean,
        deviation=deviation,
        rel_variance=new_stats.rel_variance,
        grad_mean=stats.grad_mean,
        has_grad_history=stats.grad_count > 0,
        grad_stats=grad_stats,
    )
    return new_stats, signals


class Statistics(NamedTuple):
    """The settings of the shared running statistics (not a guard: every rule reads them).

    Attributes:
      ema_decay: decay of the running mean of the losses (and of the running mean of the
        normalized weights), in ``[0, 1)`` (may be traced).
      window: span, in steps, of the recent statistics (the loss variance and the mean
        gradient norm), >= 1 (may be traced).

    Examples:
      >>> from adaptive_optax._src.statistics import Statistics
      >>> Statistics.checked(ema_decay=0.99, window=10)
      Statistics(ema_decay=0.99, window=10)
    """

    ema_decay: Any
    window: Any

    @classmethod
    def checked(cls, ema_decay: Any, window: Any) -> Statistics:
        """The record, its settings validated.

        Raises:
          ValueError: naming the setting and its value: ``ema_decay`` must be in ``[0, 1)``,
            ``window`` >= 1.
        """
        ema_decay = validation.check_number("ema_decay", ema_decay, low=0, high=1, high_open=True)
        window = validation.check_number("window", window, low=1)
        return cls(ema_decay, window)


def normalized(weights: jax.Array) -> jax.Array:
    """``w / sum(w)`` for finite weights >= 0, without overflow; uniform when all are 0."""
    top = jnp.max(weights)
    scaled = weights / jnp.where(top > 0, top, 1.0)
    total = jnp.sum(scaled)
    uniform = jnp.full_like(weights, 1.0 / weights.shape[0])
    return jnp.where(total > 0, scaled / jnp.where(total > 0, total, 1.0), uniform)


def average_weights(average: jax.Array, step: jax.Array, ratios: jax.Array, decay) -> jax.Array:
    """The running mean of the normalized weights after ``step`` (restarted if corrupted)."""
    average = ema_update(average, step, ratios, decay)
    return jnp.where(jnp.isfinite(average), average, ratios)
