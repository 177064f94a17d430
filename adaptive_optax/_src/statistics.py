"""The running statistics every rule shares: bias-corrected EMA, windows, relative variance.

All functions are vectorised over terms: ``(n_terms,)`` vectors, ``(n_terms, window)`` windows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adaptive_optax._src.base import RunningStats, Signals

EPS = 1e-8  # floor of |mean| and mean^2 in relative quantities


def at_least_float32(dtype) -> jnp.dtype:
    """The dtype statistics are kept in: float32, or float64 for float64 weights.

    Written without ``jnp.promote_types``, which refuses bfloat16 with float32 under
    ``jax_numpy_dtype_promotion="strict"``.
    """
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype).itemsize > 4 else jnp.float32)


def init_stats(n_terms: int, window: int, dtype) -> RunningStats:
    """Empty statistics for ``n_terms`` terms and windows of ``window`` values."""
    zeros = jnp.zeros((n_terms,), dtype)
    counts = jnp.zeros((n_terms,), jnp.int32)
    return RunningStats(
        loss_mean=zeros,
        loss_count=counts,
        loss_window=jnp.zeros((n_terms, window), dtype),
        grad_window=jnp.zeros((n_terms, window), dtype),
        grad_count=counts,
    )


def count_where(counter: jax.Array, event: jax.Array) -> jax.Array:
    """``counter + 1`` where ``event``, saturating at the dtype's maximum instead of wrapping."""
    return jnp.where(event, optax.safe_increment(counter), counter)


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


def _filled(window: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The mask of filled window slots and their number (at least 1, to divide by)."""
    size = window.shape[-1]
    filled = jnp.minimum(count, size)
    mask = jnp.arange(size) < filled[:, None]
    return mask, jnp.maximum(filled, 1).astype(window.dtype)


def window_mean(window: jax.Array, count: jax.Array) -> jax.Array:
    """Mean over the filled part of each window (0 for an empty window)."""
    mask, filled = _filled(window, count)
    # dividing before summing cannot overflow, even for values near the float maximum
    return jnp.sum(jnp.where(mask, window, 0.0) / filled[:, None], axis=-1)


def relative_variance(window: jax.Array, count: jax.Array) -> jax.Array:
    """``variance / max(mean**2, eps)`` over the filled part of each window.

    Values are first divided by the window's largest magnitude, so that losses near the
    float maximum neither overflow nor turn the ratio into NaN; the ratio is scale-free.
    """
    mask, filled = _filled(window, count)
    values = jnp.where(mask, window, 0.0)
    scale = jnp.max(jnp.abs(values), axis=-1, keepdims=True)
    values = values / jnp.maximum(scale, jnp.finfo(window.dtype).tiny)
    mean = jnp.sum(values, axis=-1) / filled
    variance = jnp.sum(jnp.where(mask, (values - mean[:, None]) ** 2, 0.0), axis=-1) / filled
    return variance / jnp.maximum(mean**2, EPS)


def _push(window: jax.Array, count: jax.Array, value: jax.Array, keep: jax.Array) -> jax.Array:
    """Writes ``value`` into each ring buffer at slot ``count % window`` where ``keep``."""
    slot = (count % window.shape[-1])[:, None]
    write = keep[:, None] & (jnp.arange(window.shape[-1]) == slot)
    return jnp.where(write, value[:, None], window)


def update_stats(
    stats: RunningStats,
    losses: jax.Array,
    grad_norms: jax.Array | None,
    grad_stats: dict[str, jax.Array],
    finite: jax.Array,
    step: jax.Array,
    ema_decay,
) -> tuple[RunningStats, Signals]:
    """Folds one step into the statistics of the terms where ``finite`` holds.

    Args:
      stats: the statistics before this step.
      losses: ``(n_terms,)`` this step's losses (may hold non-finite values).
      grad_norms: ``(n_terms,)`` this step's gradient norms, or None.
      grad_stats: ``{name: (n_terms,)}`` other gradient statistics of this step.
      finite: ``(n_terms,)`` bool, which terms to fold in; the others are left unchanged.
      step: the step being taken, passed through to the signals.
      ema_decay: decay of the loss EMA.

    Returns:
      The new statistics and the :class:`Signals` of this step, all finite.
    """
    losses = jnp.where(finite, losses, 0.0)
    mean = stats.loss_mean
    deviation = (losses - mean) / jnp.maximum(jnp.abs(mean), EPS)
    deviation = jnp.nan_to_num(jnp.where(stats.loss_count > 0, deviation, 0.0))

    new_mean = ema_update(mean, stats.loss_count, losses, ema_decay)
    new_mean = jnp.where(finite & jnp.isfinite(new_mean), new_mean, mean)
    loss_window = _push(stats.loss_window, stats.loss_count, losses, finite)
    loss_count = count_where(stats.loss_count, finite)

    grad_mean = window_mean(stats.grad_window, stats.grad_count)
    grad_window, grad_count = stats.grad_window, stats.grad_count
    if grad_norms is not None:
        grad_norms = jnp.where(finite, grad_norms, 0.0)
        grad_window = _push(grad_window, grad_count, grad_norms, finite)
        grad_count = count_where(grad_count, finite)

    new_stats = RunningStats(new_mean, loss_count, loss_window, grad_window, grad_count)
    signals = Signals(
        losses=losses,
        finite=finite,
        loss_mean=mean,
        deviation=deviation,
        rel_variance=relative_variance(loss_window, loss_count),
        grad_norms=grad_norms,
        grad_mean=grad_mean,
        has_grad_history=stats.grad_count > 0,
        grad_stats={name: jnp.where(finite, v, 0.0) for name, v in grad_stats.items()},
        step=step,
    )
    return new_stats, signals
