"""PCD: priority-constrained descent, the primary gradient under progress constraints for the
others; solver, rule and preset."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, main_index, preset
from adaptive_optax._src.balancers.gramian._shared import (
    NEEDS,
    QP_ITERATIONS,
    Array,
    check_iterations,
    divide_where,
    nonneg_qp,
    proposal,
    scaled_gramian,
    uniform,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.statistics import at_least_float32

#: TorchJD's defaults (``PCDWeighting``).
TAU = 0.02
BETA = 0.999
EPS = 1e-8
#: A constraint counts as met when violated by at most this fraction of the largest scaled
#: squared norm (TorchJD's ``tol``, loosened to the interior-point method's float32 precision).
FEASIBILITY_TOL = 1e-5


class PCDState(NamedTuple):
    """State of :func:`pcd_rule` (and of ``ao.gramian.pcd``).

    Attributes:
      sq_norm_ema: ``(n,)`` the moving average of each term's squared gradient norm.
      counts: ``(n,)`` int32, the finite squared norms averaged (its bias correction).
    """

    sq_norm_ema: chex.Array
    counts: chex.Array


def _check_settings(tau, beta, eps, iterations) -> int:
    validation.check_number("tau", tau, low=0, high=1)
    validation.check_number("beta", beta, low=0, high=1, high_open=True)
    validation.check_number("eps", eps, low=0)
    return check_iterations("iterations", iterations)


def pcd_init(num_terms: int) -> PCDState:
    """The state of ``ao.gramian.pcd`` before its first call: no squared norm averaged."""
    return PCDState(jnp.zeros((num_terms,), jnp.float32), jnp.zeros((num_terms,), jnp.int32))


def pcd_from_gramian(
    gramian,
    state: PCDState,
    *,
    primary: int = 0,
    tau: float = TAU,
    beta: float = BETA,
    eps: float = EPS,
    iterations: int = QP_ITERATIONS,
    mask=None,
) -> tuple[Array, PCDState]:
    """PCD: follow the primary gradient, guaranteeing each other term a fraction of progress.

    With ``g_p`` the primary gradient and ``h_i = s_i g_i`` the normalized gradients
    (``s_i = 1 / sqrt(v_i + eps)``, ``v_i`` the bias-corrected moving average, decay ``beta``,
    of ``||g_i||^2`` over the calls, kept in ``state``)::

        d = argmin_d 1/2 ||d - h_p||^2  s.t.  h_j . d >= tau ||h_j||^2  for every j != p

    whose solution is ``d = h_p + sum_j mu_j h_j`` with ``mu >= 0`` the minimizer of the dual
    ``1/2 mu^T H mu - b^T mu``, ``b_j = tau H_jj - H_jp`` (``H`` the Gramian of the ``h``); the
    output is ``d`` rescaled to ``||g_p||``: weights ``w_p = s_p c``, ``w_j = mu_j s_j c`` with
    ``c = ||g_p|| / ||d||``. Zero weights when ``g_p = 0`` or when ``d`` is zero up to the
    rounding of the Gramian; the weights of ``g_p`` alone (``w_p = 1``, others 0) when the
    constraints cannot all hold (three terms or more, e.g. two opposite secondary
    gradients), as TorchJD.

    TorchJD's ``PCDWeighting``, whose QP is solved by Goldfarb and Idnani's dual active-set
    method on the host; here the dual QP is solved in-graph by the interior-point method of
    the other Gramian methods (``iterations`` steps) on the trace-normalized ``H`` (``mu``
    does not depend on ``H``'s scale), and a constraint counts as met when violated by at most
    ``1e-5`` of the largest ``H_jj``. Departures: a term left out by ``mask`` is not averaged
    and gets weight 0 (TorchJD has no mask); left-out primary: all weights 0; an invalid
    Gramian (non-finite) leaves the state unchanged and gives uniform weights (TorchJD: NaN).

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      state: the ``PCDState`` of the previous call (``pcd_init(K)`` at first).
      primary: the index of the primary term (a Python int).
      tau: the fraction of normalized progress guaranteed to each other term, in ``[0, 1]``.
      beta: the decay of the squared norms' moving average, in ``[0, 1)``.
      eps: added to the moving average before its inverse square root (``>= 0``).
      iterations: interior-point iterations of the QP (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(weights, state)``: the ``(K,)`` PCD weights and the new ``PCDState``.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # the secondary conflicts with the primary
      >>> state = ao.gramian.pcd_init(2)
      >>> w, state = ao.gramian.pcd(J @ J.T, state, tau=0.2)
      >>> d = w @ J  # no longer conflicts with the secondary, and has the primary's norm
      >>> bool(d @ J[1] > 0), round(float(jnp.linalg.norm(d)), 4)
      (True, 1.0)

    References:
      *Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
      Multi-Objective Optimization*, TMLR 2026 (https://openreview.net/forum?id=HT01yGHLEt;
      reference code github DaraVaram/priority-constrained-descent); TorchJD ``PCDWeighting``.
    """
    iterations = _check_settings(tau, beta, eps, iterations)
    g = jnp.asarray(gramian)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"gramian must be a non-empty square (K, K) matrix, got {g.shape}")
    k = g.shape[0]
    if not (isinstance(primary, int) and 0 <= primary < k):
        raise ValueError(f"primary must be an index below {k}, got {primary!r}")
    g = jax.lax.stop_gradient(g.astype(at_least_float32(g.dtype)))
    dtype = g.dtype
    active = jnp.ones((k,), bool) if mask is None else jnp.asarray(mask).astype(bool)
    g = jnp.where(active[:, None] & active[None, :], g, 0.0)
    g = 0.5 * g + 0.5 * g.T
    ok = jnp.all(jnp.isfinite(g))
    g = jnp.where(ok, g, 0.0)
    sq_norms = jnp.maximum(jnp.diag(g), 0.0)

    # The moving average of the squared norms, on the terms solved for.
    averaged = active & ok
    ema = state.sq_norm_ema.astype(dtype)
    ema = jnp.where(averaged, beta * ema + (1.0 - beta) * sq_norms, ema)
    counts = state.counts + averaged.astype(jnp.int32)
    new_state = PCDState(ema.astype(state.sq_norm_ema.dtype), counts)
    corrected = ema / (1.0 - beta ** jnp.maximum(counts, 1).astype(dtype))
    denominators = jnp.sqrt(corrected + eps)
    scales = divide_where(denominators > 0, 1.0, denominators)

    # The dual QP on the normalized Gramian (divided by its trace: mu is scale-free).
    h = g * scales[:, None] * scales[None, :]
    trace = jnp.trace(h)
    h = h / jnp.where(trace > 0, trace, 1.0)
    secondary = active & (jnp.arange(k) != primary)
    b = tau * jnp.diag(h) - h[:, primary]
    mu = nonneg_qp(h, -b, simplex=False, iterations=iterations, active=secondary)
    slack = h @ mu - b
    largest = jnp.max(jnp.diag(h))
    feasible = jnp.all(jnp.where(secondary, slack >= -FEASIBILITY_TOL * largest, True))
    feasible = feasible & jnp.all(jnp.isfinite(mu))
    one_hot = jax.nn.one_hot(primary, k, dtype=dtype)
    v = jnp.where(feasible, one_hot + jnp.where(secondary, mu, 0.0), one_hot)

    # d = sum_i v_i h_i, rescaled to ||g_p||; zero when g_p or d is (numerically) zero.
    direction = v @ h @ v
    magnitude = (jnp.abs(v) @ jnp.sqrt(jnp.maximum(jnp.diag(h), 0.0))) ** 2
    precision = 10.0 * jnp.finfo(dtype).eps
    moving = (sq_norms[primary] > 0) & active[primary] & (direction > precision * magnitude)
    # ||d_unnormalized||^2 = trace * direction
    length = jnp.sqrt(sq_norms[primary] / jnp.where(moving, trace * direction, 1.0))
    weights = jnp.where(moving, v * scales * length, 0.0)
    good = ok & jnp.all(jnp.isfinite(weights))
    weights = jnp.where(good, weights, uniform(active, dtype))
    return weights, jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)


def pcd_rule(
    main: int = 0,
    *,
    tau: float = TAU,
    beta: float = BETA,
    eps: float = EPS,
    iterations: int = QP_ITERATIONS,
) -> Rule:
    """PCD: follow the main term's gradient, guaranteeing each other term a fraction of progress.

    ``ao.gramian.pcd`` with ``main`` as the primary term, on ``G_b = D_b G D_b`` of the finite
    terms, the moving average of the squared norms in the state; the loss weight is
    ``b_i w_i``. The normalization makes the other terms' base weights irrelevant (each
    gradient is divided by its own running norm); the aggregate has the main term's gradient
    norm. A main term whose input is not finite this step proposes zero weights for all (the
    guards keep the non-finite term's weight).

    Recommended guards (``ao.RECOMMENDED["pcd"]``): none, as the other Gramian methods.

    Args:
      main: leaf index of the primary term (TorchJD: the first row).
      tau: the fraction of normalized progress guaranteed to each other term, in ``[0, 1]``.
      beta: the decay of the squared norms' moving average, in ``[0, 1)``.
      eps: added to the moving average before its inverse square root (``>= 0``).
      iterations: interior-point iterations of the QP (static, ``>= 1``).

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"gramian"``, with state ``PCDState``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.pcd_rule(0, tau=0.1), {"task": 1.0, "fairness": 1.0})

    References:
      See ``ao.gramian.pcd``.
    """
    iterations = _check_settings(tau, beta, eps, iterations)
    validation.check_number("main", main, low=0, integer=True, static=True)
    main = int(main)

    def init(base_weights: chex.Array) -> PCDState:
        return pcd_init(base_weights.shape[0])

    def propose(signals: Signals, weights, base_weights, state: PCDState):
        gramian, base, _ = scaled_gramian(signals, base_weights, "pcd_rule")
        if main >= base.shape[0]:
            raise ValueError(f"main must index a term (< {base.shape[0]}), got {main}")
        w, new_state = pcd_from_gramian(
            gramian,
            state,
            primary=main,
            tau=tau,
            beta=beta,
            eps=eps,
            iterations=iterations,
            mask=signals.finite,
        )
        return proposal(signals, weights, base * w), new_state

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)


@preset
def pcd_weights(
    base_weights: PyTree,
    *,
    main: str | int = 0,
    tau: float = TAU,
    beta: float = BETA,
    eps: float = EPS,
    iterations: int = QP_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """PCD (priority-constrained descent) as a weighting: the main term first.

    See :func:`adaptive_optax.pcd_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["pcd"]`` (none: run it bare).

    Args:
      main: the primary term, by name or leaf index (default: the first leaf).
      tau: the fraction of normalized progress guaranteed to each other term.
      beta: the decay of the squared norms' moving average.
      eps: added to the moving average.
      iterations: interior-point iterations of the QP.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.pcd_weights({"fair": 1.0, "task": 1.0}, main="task", tau=0.2)
      >>> G = [[2.0, -1.0], [-1.0, 1.0]]  # gradients: fair (-1, 1), task (1, 0)
      >>> weights, state = weighting.update(
      ...     {"fair": 1.0, "task": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["task"]), 4), round(float(weights["fair"]), 4)
      (1.3608, 0.8729)

    References:
      See ``ao.gramian.pcd``.
    """
    if not isinstance(main, str):
        validation.check_number("main", main, low=0, integer=True, static=True)
    rule = pcd_rule(
        main_index(base_weights, main), tau=tau, beta=beta, eps=eps, iterations=iterations
    )
    return bare(rule, base_weights, guards)
