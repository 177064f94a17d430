"""Nash-MTL: the Nash bargaining solution ``G alpha = 1 / alpha``; solver, rule and preset."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset
from adaptive_optax._src.balancers.gramian._shared import (
    NEEDS,
    Array,
    as_vector,
    check_iterations,
    check_reg_eps,
    divide_where,
    finish,
    normalize,
    proposal,
    scaled_gramian,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals

#: Damped Newton steps of Nash-MTL.
NASH_ITERATIONS = 40
#: The default ridge added to the unit-diagonal Gramian.
REG_EPS = 1e-5
#: Newton steps on the Gramian without the ridge, from the ridge's solution, once a solution
#: is known to exist: the ridge detects a missing solution, and these remove its bias.
POLISH_ITERATIONS = 6


def _check_settings(max_norm, reg_eps, iterations) -> int:
    """``iterations``, checked with ``max_norm`` and ``reg_eps``."""
    if max_norm is not None:
        max_norm = validation.check_number("max_norm", max_norm, low=0, low_open=True)
    check_reg_eps(reg_eps)
    return check_iterations("iterations", iterations)


class NashMTLState(NamedTuple):
    """State of :func:`nash_mtl_rule`.

    Attributes:
      alpha: ``(n,)`` the last Nash bargaining solution ``alpha`` of the unscaled gradients
        (ones at first), the warm start of the next solve.
    """

    alpha: chex.Array


def _nash_start(q: Array, init: Array | None) -> Array:
    """The best multiple of ``init`` (default ones): ``c init`` with ``c^2 = K / init^T Q init``."""
    direction = jnp.ones((q.shape[0],), q.dtype)
    if init is not None:
        usable = jnp.all(jnp.isfinite(init) & (init > 0))
        direction = jnp.where(usable, init, direction)
    return direction * jnp.sqrt(q.shape[0] / (direction @ q @ direction))


def _nash_newton(q: Array, alpha: Array, iterations: int) -> Array:
    """Damped Newton on ``F(a) = 1/2 a^T Q a - sum(log a)``, whose minimizer has
    ``Q a = 1/a``. ``F`` is self-concordant, so the step ``-H^-1 grad / (1 + lambda)``
    (``lambda`` the Newton decrement) keeps ``a > 0`` and converges from any start."""

    def step(_, a):
        grad = q @ a - 1.0 / a
        delta = jnp.linalg.solve(q + jnp.diag(1.0 / a**2), grad)
        decrement = jnp.sqrt(jnp.maximum(grad @ delta, 0.0))
        new = a - delta / (1.0 + decrement)
        return jnp.where(jnp.all(jnp.isfinite(new) & (new > 0)), new, a)

    return jax.lax.fori_loop(0, iterations, step, alpha)


def nash_mtl_from_gramian(
    gramian,
    *,
    init=None,
    max_norm: float | None = None,
    reg_eps: float = REG_EPS,
    iterations: int = NASH_ITERATIONS,
    mask=None,
) -> Array:
    """Nash-MTL: the Nash bargaining solution ``alpha > 0`` with ``G alpha = 1 / alpha``.

    The direction ``d = J^T alpha`` maximizes ``sum_i log(g_i . d)`` over the unit ball (up to
    scale); ``alpha`` is the unique minimizer of the strictly convex
    ``F(a) = 1/2 a^T G a - sum_i log a_i``, whose gradient is ``G a - 1/a``. It is found by
    damped Newton (``iterations`` steps, self-concordant, so no line search). Since rescaling
    the gradients, ``G -> S G S`` with ``S`` diagonal, maps ``alpha`` to ``S^-1 alpha``, the
    problem is solved on the unit-diagonal ``C = D^(-1/2) G D^(-1/2)`` (``D = diag(G)``) plus
    ``reg_eps * I``, and ``alpha = D^(-1/2) beta``: the iteration count does not depend on the
    gradients' norms. Note ``||J^T alpha||^2 = alpha^T G alpha = K``.

    Departures from the authors' code: they solve the same fixed point with cvxpy (ECOS) by a
    sequence of up to 20 convex approximations (linearising ``log(G a)``), stopping when
    ``||G_n a - 1/a|| < 1e-3``, starting from the previous step's ``alpha``. Damped Newton
    reaches a relative residual ``||G a - 1/a|| / ||1/a||`` of about ``1e-7`` in float32 in
    under 20 steps on well-posed problems, rank-deficient Gramians included. When no
    solution exists (``0`` in the conic hull of the gradients, e.g. two opposite gradients,
    or a zero gradient), the weights are ``init`` (ones by default), as in TorchJD, whose
    solver fails there and keeps its previous ``alpha`` (ones at first); this is detected by
    ``reg_eps`` (relative to each term's squared gradient norm), which keeps the Newton
    iterates bounded: ``alpha_i`` grows to about ``1/sqrt(reg_eps)`` in units of
    ``1/||g_i||`` and ``alpha_i (G alpha)_i`` falls below ``1/2``. Where a solution exists,
    a few more Newton steps on ``C`` without the ridge remove the ridge's bias (which is
    ``reg_eps * ||g_i||^2 alpha_i^2`` on ``alpha_i (G alpha)_i``, not small where ``alpha``
    is large: gradients near a conic dependence, rank-deficient Gramians), so
    ``alpha_i (G alpha)_i = 1`` to float precision, as TorchJD's converged solutions.
    ``max_norm`` rescales
    ``alpha`` so that ``||J^T alpha|| <= max_norm``, like the authors' gradient clipping
    (``max_norm=1.0`` there and in TorchJD; default here: no clipping).

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      init: optional ``(K,)`` previous weights: the warm start (only its direction is used,
        rescaled optimally) and the weights when no solution exists. Ignored unless finite
        and positive.
      max_norm: optional bound on ``||J^T alpha||`` (``> 0``).
      reg_eps: ridge added to the unit-diagonal Gramian ``C`` (``>= 0``).
      iterations: Newton steps (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` positive weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> G = J @ J.T
      >>> alpha = ao.gramian.nash_mtl(G)
      >>> np.asarray(G @ alpha * alpha, np.float64).round(3).tolist()  # G alpha = 1 / alpha
      [1.0, 1.0]
      >>> w = ao.gramian.nash_mtl(G, max_norm=1.0)
      >>> np.asarray(w @ J, np.float64).round(4).tolist()
      [0.0542, 0.7061, 0.7061]

    References:
      Navon et al., *Multi-Task Learning as a Bargaining Game*, ICML 2022
      (arXiv:2202.01017); TorchJD ``NashMTL``.
    """
    iterations = _check_settings(max_norm, reg_eps, iterations)
    n = normalize(gramian, mask)
    g = n.gramian
    # G -> S G S maps alpha to S^-1 alpha, so solve on the unit-diagonal C = D^-1/2 G D^-1/2.
    diag = jnp.diag(g)
    root = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))  # a zero gradient keeps scale 1
    correlation = g / root[:, None] / root[None, :]
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    # A left-out term is a decoupled unit gradient: it does not move the others' solution.
    q = jnp.where(n.active[:, None] & n.active[None, :], correlation, eye) + reg_eps * eye
    previous = jnp.ones_like(diag)
    if init is not None:
        init = as_vector("init", init, g)
        previous = jnp.where(jnp.all(jnp.isfinite(init) & (init > 0)), init, previous)
    beta = _nash_newton(q, _nash_start(q, root * previous), iterations)
    # Without a bargaining solution beta_i grows to about 1 / sqrt(reg_eps) and
    # beta_i (C beta)_i = 1 - reg_eps beta_i^2 falls far below 1: keep the previous alpha.
    solved = jnp.all(jnp.where(n.active, beta * (correlation @ beta) > 0.5, True))
    # The ridge moves alpha_i (C alpha)_i by reg_eps * beta_i^2, which is not small where beta
    # is large (gradients near a conic dependence, rank-deficient Gramians): once a solution
    # is known to exist, Newton on C itself (F stays strictly convex and bounded below)
    # converges quadratically from the ridge's solution.
    exact = jnp.where(n.active[:, None] & n.active[None, :], correlation, eye)
    polished = _nash_newton(exact, beta, POLISH_ITERATIONS)
    beta = jnp.where(solved, polished, beta)
    beta = jnp.where(n.active, jnp.where(solved, beta, previous * root * n.root_scale), 0.0)
    if max_norm is not None:
        # ||J^T alpha|| = sqrt(beta^T C beta): the normalizations cancel.
        norm = jnp.sqrt(jnp.maximum(beta @ correlation @ beta, 0.0))
        too_long = norm > max_norm
        beta = beta * divide_where(too_long, max_norm, norm, 1.0)
    return finish(beta / root / n.root_scale, n)


def nash_mtl_rule(
    *,
    max_norm: float | None = None,
    reg_eps: float = REG_EPS,
    iterations: int = NASH_ITERATIONS,
) -> Rule:
    """Nash-MTL: the Nash bargaining solution, ``alpha > 0`` with ``G alpha = 1 / alpha``.

    ``ao.gramian.nash_mtl``, warm-started from the previous step's ``alpha`` (kept in the
    state), where the authors run up to 20 cvxpy solves. Rescaling a term's gradient rescales
    its ``alpha`` inversely, so the loss weight ``b_i alpha_i(D_b G D_b)`` equals
    ``alpha_i(G)``: the base weights have no effect on Nash-MTL. ``max_norm`` bounds
    ``||sum_i alpha_i g_i||``, as the authors' gradient clipping (``max_norm=1.0`` there and in
    TorchJD; default here: none). When no solution exists (a zero gradient, or zero in the
    gradients' conic hull) the previous ``alpha`` is kept (ones at first), as TorchJD does.

    Recommended guards (``ao.RECOMMENDED["nash_mtl"]``): none; ``every=k`` is the authors'
    ``update_weights_every``, and ``max_weight`` keeps a vanishing gradient from a huge weight
    (``alpha_i`` grows like ``1 / ||g_i||``).

    Args:
      max_norm: optional bound on the aggregate's norm (> 0), or None.
      reg_eps: ridge added to the unit-diagonal Gramian (>= 0).
      iterations: Newton steps (static, >= 1).

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"gramian"``, with state
      ``NashMTLState`` (``rule/alpha/<term>`` in :func:`adaptive_optax.metrics`).

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.nash_mtl_rule(max_norm=1.0), {"seg": 1.0, "depth": 1.0})

    References:
      See ``ao.gramian.nash_mtl``.
    """
    iterations = _check_settings(max_norm, reg_eps, iterations)

    def init(base_weights: chex.Array) -> NashMTLState:
        return NashMTLState(jnp.ones(base_weights.shape, float_dtype(base_weights)))

    def propose(signals: Signals, weights, base_weights, state: NashMTLState):
        gramian, _, unit = scaled_gramian(signals, base_weights, "nash_mtl_rule")
        # alpha(D_u G D_u) = alpha(G) / u: warm-start in those units, and back.
        start = state.alpha.astype(unit.dtype) / unit
        scaled = nash_mtl_from_gramian(
            gramian,
            init=start,
            max_norm=max_norm,
            reg_eps=reg_eps,
            iterations=iterations,
            mask=signals.finite,
        )
        alpha = unit * scaled
        new_state = NashMTLState(jnp.where(signals.finite, alpha, state.alpha))
        return proposal(signals, weights, alpha), new_state

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)


@preset
def nash_mtl_weights(
    base_weights: PyTree,
    *,
    max_norm: float | None = None,
    reg_eps: float = REG_EPS,
    iterations: int = NASH_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """Nash-MTL (Navon et al. 2022) as a weighting: the Nash bargaining solution.

    See :func:`adaptive_optax.nash_mtl_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["nash_mtl"]`` (none: run it bare).

    Args:
      max_norm: optional bound on the aggregate's norm, or None.
      reg_eps: ridge added to the unit-diagonal Gramian.
      iterations: Newton steps.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.nash_mtl_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)  # G w = 1 / w
      (0.5915, 0.4071)

    References:
      See ``ao.gramian.nash_mtl``.
    """
    rule = nash_mtl_rule(max_norm=max_norm, reg_eps=reg_eps, iterations=iterations)
    return bare(rule, base_weights, guards)
