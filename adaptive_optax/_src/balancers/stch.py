"""STCH, smooth Tchebycheff scalarization (Lin, Zhang, Yang, Liu, Wang & Zhang, ICML 2024)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals

#: The authors' smoothing parameter for multi-task learning (``--STCH_mu``).
MU = 1.0
#: The authors' ``1e-20`` inside each logarithm.
LOG_EPS = 1e-20


class STCHState(NamedTuple):
    """State of :func:`stch_rule`.

    Attributes:
      nadir_sum: ``(n,)`` the sum of the finite losses averaged into the nadir so far.
      nadir_count: ``(n,)`` int32, how many there were; the nadir ``z_i`` is their mean once
        every term has ``nadir_steps`` of them.
    """

    nadir_sum: chex.Array
    nadir_count: chex.Array


def _check_settings(mu, log_steps, nadir_steps) -> tuple[Any, Any, Any]:
    """The settings, checked (traced ones clipped into range, see ``check_number``)."""
    return (
        validation.check_number("mu", mu, low=0, low_open=True),
        validation.check_number("log_steps", log_steps, low=0, integer=True),
        validation.check_number("nadir_steps", nadir_steps, low=1, integer=True),
    )


def stch_rule(*, mu: float = MU, log_steps: int = 0, nadir_steps: int = 1) -> Rule:
    """Smooth Tchebycheff scalarization of the log-normalized losses, as the authors train.

    The authors' multi-task code (``STCH_MTL/LibMTL/weighting/STCH.py``) trains on::

        K mu log sum_i exp(l_i / mu),    l_i = log(L_i / z_i + 1e-20)

    the smooth maximum of the log losses normalized by their nadir ``z_i`` (the mean loss
    over a period after a warmup). Its gradient weights each term's gradient by
    ``K s_i / (L_i + 1e-20 z_i)`` with ``s = softmax(l / mu)``: the term that is worst
    relative to its nadir dominates as ``mu -> 0`` (Tchebycheff), and ``mu -> inf`` gives
    ``1 / L_i`` (the sum of the log losses). Before the nadir is known the authors train on
    ``sum_i log(L_i + 1e-20)``, weights ``1 / (L_i + 1e-20)``. With base weights ``b`` as the
    paper's preference ``lambda`` (``mu log sum_i exp(lambda_i (f_i - z*_i) / mu)``, eq. 7, on
    ``f_i = log L_i`` with the ideal point ``z*_i = log z_i``), the proposed weights are::

        w_i = b_i / (L_i + 1e-20)                         the first log_steps + nadir_steps
        w_i = K b_i s_i / (L_i + 1e-20 z_i),  s = softmax(b l / mu)             then

    ``z_i`` is the mean of the term's first ``nadir_steps`` finite losses after
    ``log_steps`` steps; the authors' schedule is ``log_steps`` the steps of their
    ``STCH_warmup_epoch`` epochs (4) and ``nadir_steps`` those of the next epoch. The
    defaults (``0`` and ``1``) normalize by the first finite loss. Unit base weights give the
    authors' weights. As every weighting here, the weights computed from this step's losses
    weight the next step's (the authors differentiate the same step's).

    Scale: the weights are those of log losses, about ``b_i / L_i``, not the base weights
    (under Adam only their ratios matter). Departures, for finiteness: a loss below 0 counts
    as 0 (its logarithm is then ``log 1e-20``, the authors'); a nadir at or below 0 counts as
    the dtype's smallest normal number; a term whose loss is not finite this step is left out
    of the softmax (its proposal is ignored by the guards) and out of the nadir's mean; the
    scalarization switches to STCH once every term has its nadir (a term that is never finite
    keeps the log weights for all). Weights are capped at the dtype's largest finite number.

    Recommended guards (``ao.RECOMMENDED["stch"]``): bounds, as for the other weights of
    ``1 / L`` (IMTL-L, GLS): a loss near 0 pushes its weight up by orders of magnitude. The
    bounds also cap the ratios of terms whose losses differ in scale by more than the
    bounds' span: widen them, or use ``max_weight``, where that matters.

    Args:
      mu: the smoothing parameter (``> 0``); the authors use 1 for multi-task learning.
      log_steps: steps on the log losses before the nadir is measured (an int ``>= 0``).
      nadir_steps: finite losses of each term averaged into its nadir (an int ``>= 1``),
        during which the log losses still train.

    Returns:
      A :class:`adaptive_optax.Rule` with state ``STCHState``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.stch_rule(mu=0.5), {"seg": 1.0, "depth": 1.0})

    References:
      Lin, Zhang, Yang, Liu, Wang & Zhang, *Smooth Tchebycheff Scalarization for
      Multi-Objective Optimization*, ICML 2024 (arXiv:2402.19078); the authors' code,
      github Xi-L/STCH, ``STCH_MTL/LibMTL/weighting/STCH.py``.
    """
    mu, log_steps, nadir_steps = _check_settings(mu, log_steps, nadir_steps)

    def init(base_weights: chex.Array) -> STCHState:
        dtype = float_dtype(base_weights)
        return STCHState(
            jnp.zeros(base_weights.shape, dtype), jnp.zeros(base_weights.shape, jnp.int32)
        )

    def propose(signals: Signals, weights, base_weights, state: STCHState):
        del weights
        dtype = state.nadir_sum.dtype
        big, tiny = jnp.finfo(dtype).max, jnp.finfo(dtype).tiny
        finite = signals.finite
        losses = jnp.clip(jnp.where(finite, signals.losses.astype(dtype), 0.0), 0.0, big)
        prefs = base_weights.astype(dtype)
        k = losses.shape[0]

        # The authors' weights of this step: STCH once every term's nadir is known.
        ready = jnp.all(state.nadir_count >= nadir_steps)
        nadir = jnp.maximum(state.nadir_sum / jnp.maximum(state.nadir_count, 1).astype(dtype), tiny)
        shifted = jnp.maximum(losses + LOG_EPS * nadir, tiny)
        logits = jnp.where(finite, prefs * (jnp.log(shifted) - jnp.log(nadir)) / mu, -big)
        exps = jnp.where(finite, jnp.exp(logits - jnp.max(logits)), 0.0)
        softmax = exps / jnp.maximum(jnp.sum(exps), tiny)
        smooth = k * prefs * softmax / shifted
        logs = prefs / jnp.maximum(losses + LOG_EPS, tiny)
        proposal = jnp.minimum(jnp.where(ready, smooth, logs), big)

        # This step's finite losses enter the nadir after log_steps steps, nadir_steps each.
        measuring = finite & (signals.step > log_steps) & (state.nadir_count < nadir_steps)
        total = jnp.minimum(state.nadir_sum + losses, big)
        state = STCHState(
            jnp.where(measuring, total, state.nadir_sum),
            state.nadir_count + measuring.astype(jnp.int32),
        )
        return proposal, state

    return Rule(init=init, propose=propose)


@preset
def stch_weights(
    base_weights: PyTree,
    *,
    mu: float = MU,
    log_steps: int = 0,
    nadir_steps: int = 1,
    **guards: Any,
) -> LossWeighting:
    """STCH (Lin et al. 2024) as a weighting: the smooth maximum of log-normalized losses.

    See :func:`adaptive_optax.stch_rule` for the formula, the nadir and the departures;
    recommended guards: ``ao.RECOMMENDED["stch"]``.

    Args:
      mu: the smoothing parameter.
      log_steps: steps on the log losses before the nadir is measured.
      nadir_steps: finite losses of each term averaged into its nadir.

    Returns:
      A :class:`adaptive_optax.LossWeighting`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.stch_weights({"a": 1.0, "b": 1.0})
      >>> state = weighting.init()
      >>> weights, state = weighting.update({"a": 2.0, "b": 0.5}, state)  # the nadir (2, 0.5)
      >>> float(weights["a"]), float(weights["b"])  # the log losses' 1 / L
      (0.5, 2.0)
      >>> weights, state = weighting.update({"a": 1.0, "b": 0.5}, state)
      >>> # l = (log 1/2, log 1) = (-0.69, 0): softmax (1/3, 2/3), w_i = 2 s_i / L_i
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.6667, 2.6667)
      >>> safe = ao.stch_weights({"a": 1.0, "b": 1.0}, **ao.RECOMMENDED["stch"])

    References:
      Lin et al., ICML 2024 (arXiv:2402.19078); github Xi-L/STCH.
    """
    rule = stch_rule(mu=mu, log_steps=log_steps, nadir_steps=nadir_steps)
    return bare(rule, base_weights, guards)
