"""Spike detection: a robust z-score on a log scale, against statistics a spike cannot inflate.

A value ``x > 0`` (a loss, a gradient norm) is judged on ``log x``, so that a spike is a jump by
a factor whatever the scale. Its running mean ``mu`` and variance ``var`` are bias-corrected
EMAs; the z-score is ``(log x - mu) / max(sqrt(var), min_std)``, and a spike is
``z > threshold`` once ``warmup`` values were seen. As in ZClip, the statistics are updated with
the value clipped at ``mu + threshold * std``: a spike moves them no more than a value at the
threshold would, so the next spike is judged against the same baseline.

References:
  Kumar et al., "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", 2025
  (arXiv:2504.02507), code bluorion-com/ZClip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive_optax._src.base import LogStats, SpikeStats
from adaptive_optax._src.statistics import count_where, ema_update

MIN_STD = 0.1  # floor of the log-scale standard deviation: small wobbles are never spikes


def init_spike_stats(n_terms: int, dtype) -> SpikeStats:
    """Empty statistics for ``n_terms`` terms."""
    empty = LogStats(
        count=jnp.zeros((n_terms,), jnp.int32),
        mean=jnp.zeros((n_terms,), dtype),
        variance=jnp.zeros((n_terms,), dtype),
    )
    return SpikeStats(loss=empty, grad=empty)


def z_score(stats: LogStats, value: jax.Array, *, threshold, decay, warmup, prior_std=None):
    """This value's z-score (0 until ``warmup`` values or for ``value <= 0``), and new stats.

    Args:
      stats: the statistics before this value.
      value: ``(n,)`` values; only finite positive normal numbers are observed.
      threshold: z-score at which the value is clipped before it enters the statistics.
      decay: decay of the EMAs, in ``[0, 1)``.
      warmup: values needed before a z-score is given; with ``prior_std``, the weight of
        the prior in values (one value is then enough).
      prior_std: the prior standard deviation of ``log x`` (> 0), per term or for all, or
        None for no prior; a NaN entry: no prior for that term.

    Returns:
      ``(z, new_stats)``, both finite.
    """
    # subnormal values may be flushed to zero, and log(0) is -inf: observe normal numbers only
    observed = jnp.isfinite(value) & (value >= jnp.finfo(value.dtype).tiny)
    log_value = jnp.log(jnp.where(observed, value, 1.0))
    variance = stats.variance
    if prior_std is None:
        warm = stats.count >= warmup
    else:
        # per term; NaN: that term has no prior and waits for ``warmup`` values
        prior = jnp.broadcast_to(jnp.asarray(prior_std, variance.dtype), variance.shape)
        has_prior = jnp.isfinite(prior)
        seen = stats.count.astype(variance.dtype)
        pseudo = jnp.asarray(warmup, variance.dtype)  # the prior counts as this many values
        shrunk = (seen * variance + pseudo * jnp.where(has_prior, prior, 0.0) ** 2) / (
            seen + pseudo
        )
        variance = jnp.where(has_prior, shrunk, variance)
        warm = jnp.where(has_prior, stats.count >= 1, stats.count >= warmup)
    std = jnp.maximum(jnp.sqrt(variance), MIN_STD)
    z = jnp.where(observed & warm, (log_value - stats.mean) / std, 0.0)
    clipped = jnp.where(warm, jnp.minimum(log_value, stats.mean + threshold * std), log_value)
    mean = ema_update(stats.mean, stats.count, clipped, decay)
    deviation = jnp.where(stats.count > 0, clipped - stats.mean, 0.0)
    variance = ema_update(stats.variance, stats.count, deviation**2, decay)
    new_stats = LogStats(
        count=count_where(stats.count, observed),
        mean=jnp.where(observed, mean, stats.mean),
        variance=jnp.where(observed, variance, stats.variance),
    )
    return z, new_stats


def detect_spikes(
    stats: SpikeStats, losses, grad_norms, finite, *, threshold, decay, warmup, prior_std=None
) -> tuple[jax.Array, SpikeStats]:
    """Which terms spike this step (their loss or gradient norm), and the new statistics.

    Args:
      stats: the statistics before this step.
      losses: ``(n,)`` this step's losses.
      grad_norms: ``(n,)`` this step's gradient norms, or None.
      finite: ``(n,)`` bool; other terms are neither judged nor observed.
      threshold, decay, warmup, prior_std: see :func:`z_score`.

    Returns:
      ``(spiked, new_stats)``.
    """
    settings = dict(threshold=threshold, decay=decay, warmup=warmup, prior_std=prior_std)
    z_loss, loss = z_score(stats.loss, jnp.where(finite, losses, 0.0), **settings)
    spiked = z_loss > threshold
    grad = stats.grad
    if grad_norms is not None:
        z_grad, grad = z_score(stats.grad, jnp.where(finite, grad_norms, 0.0), **settings)
        spiked |= z_grad > threshold
    return spiked & finite, SpikeStats(loss=loss, grad=grad)
