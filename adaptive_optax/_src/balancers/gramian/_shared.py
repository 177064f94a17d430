"""What the Gramian methods share: normalization, the dual-cone QP, the rule adapter.

With ``J`` the ``(K, n)`` matrix whose rows are the gradients ``g_i`` of the ``K`` loss terms,
a *weighting* maps the ``(K, K)`` Gramian ``G = J J^T`` to weights ``w`` and the update
direction is the aggregate ``w^T J = sum_i w_i g_i`` (TorchJD's design). Each method's module
(``mgda``, ``upgrad``, ``dualproj``, ``imtl_g``, ``aligned_mtl``, ``cagrad``, ``pcgrad``,
``gradvac``, ``config``, ``nash_mtl``, ``fairgrad``) holds its solver
``<method>_from_gramian`` (public as ``ao.gramian.<method>``), its rule ``<method>_rule`` and
its preset ``<method>_weights``; the solver's docstring holds the method's mathematics, its
departures from the authors' and TorchJD's code, and its references.

Solver conventions. Each solver is pure and runs entirely in-graph: jittable, vmappable, no
host round-trip, no Python branching on traced values, and every iterative solver runs a fixed
number of iterations, but for the dual-cone solver of UPGrad and DualProj, a ``lax.while_loop``
of principal pivots that stops once every problem is solved (a solved problem is left
unchanged, so a result never depends on the other members of a ``vmap`` batch), capped.

- The Gramian is symmetrized and normalized by its largest entry, then by its trace, before
  any solver runs, so fixed iteration counts work at any scale; every method but Nash-MTL
  gives weights invariant to ``G -> c G`` (``c > 0``), and Nash-MTL's are rescaled back.
- Computation is in float32 at least (float64 stays float64); the weights come back in that
  dtype, so bfloat16 and float16 Gramians give float32 weights.
- Invalid input (a non-finite entry, or a trace that is not positive, e.g. the zero matrix)
  gives uniform weights ``1 / K``, and so does any non-finite result; the output is always
  finite. Method-specific degenerate cases are documented with each method.
- ``mask`` (every method): the terms to solve for. The others are left out, as if their rows
  and columns were absent (their entries are not read, so they may be NaN), and get weight
  0; defaults that depend on ``K`` (a preference ``1/K``, uniform weights) use the number of
  terms kept. The rules of ``adaptive_optax`` pass the terms whose inputs were finite.
- The weights are constants for autodiff (the Gramian goes through ``jax.lax.stop_gradient``),
  as TorchJD computes them without gradient tracking: differentiate the aggregate
  ``w^T J`` (or the weighted loss) through ``J`` only.

Rule conventions. With ``g_i`` the gradient of term ``i`` and ``b`` the base weights, every
rule applies its method to the base-scaled gradients ``b_i g_i``, i.e. to the Gramian
``D_b G D_b`` (``D_b = diag(b)``, ``G_ij = <g_i, g_j>``), and proposes the loss weights
``b_i w_i``, where ``w`` are the method's weights in TorchJD's scale (the aggregate of the
scaled gradients is ``sum_i w_i b_i g_i``). So the weighted gradient ``sum_i b_i w_i g_i`` is
the method's aggregate for the loss terms ``b_i L_i``: unit base weights give the method
itself, and other base weights say how much each term counts before the method balances them.

Terms whose loss or gradient statistics are not finite this step (``signals.finite`` False)
are left out of the solve, as if absent: the method balances the other terms, and the guards
keep the left-out terms' weights (their last solved weights).

At rest the weights are the method's uniform weights ``b_i / n``, not the base weights: the
guards store ``b / n`` as the base (``Rule.per_term_base``; ``state.base_weights`` and the
``base/<term>`` metrics show it), so the initial weights, the weights after
:func:`adaptive_optax.disable`, those of terms that do not adapt and those of a term left out
before its first solve are ``b_i / n``, the scale of the method's weights (which sum to about
1 for unit base weights), not ``n`` times it: under SGD, disabling the method or skipping a
step does not multiply the step by ``n``. ``bounds`` factors apply to ``b_i / n``.

References:
  Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024
  (https://arxiv.org/abs/2406.16232), and TorchJD (https://github.com/SimplexLab/TorchJD).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import float_dtype, require
from adaptive_optax._src.base import Rule, Signals
from adaptive_optax._src.gradients import GRAMIAN
from adaptive_optax._src.statistics import at_least_float32

Array = jax.Array

#: Iterations of the interior-point QP solver (MGDA and each CAGrad step);
#: it reaches float32 precision in about 15 on the tested problems (K <= 30).
QP_ITERATIONS = 25
#: The most principal pivots per dual-cone problem (UPGrad, DualProj); the solver stops as soon
#: as every problem is solved, in about ``K`` pivots on the tested problems (at most 35 at
#: K = 32), so this cap only bounds the work where the pivoting fails to end.
DUAL_CONE_ITERATIONS = 256
#: The ridge of the dual-cone QP (UPGrad, DualProj): TorchJD's default, whose values it reproduces.
REG_EPS = 1e-4

NEEDS = (GRAMIAN,)


# ------------------------------------------------------------------------ validation


def check_iterations(name: str, value) -> int:
    """``value``, a Python int ``>= 1`` (a fixed iteration count, static); else ``ValueError``."""
    validation.check_number(name, value, low=1, integer=True, static=True)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int (a fixed iteration count), got {value!r}")
    return value


def check_reg_eps(reg_eps: Any) -> None:
    """Raises ``ValueError`` unless ``reg_eps`` is one finite number ``>= 0`` (traced values
    are not checked)."""
    reg_eps = validation.check_number("reg_eps", reg_eps, low=0)


def check_qp_settings(reg_eps: Any, iterations: Any) -> int:
    """The settings of the dual-cone methods (UPGrad, DualProj): ``iterations``, checked."""
    check_reg_eps(reg_eps)
    return check_iterations("iterations", iterations)


def as_vector(name: str, value, g: Array) -> Array:
    """``value`` as a ``(K,)`` array in the dtype of ``g``; raises ``ValueError`` otherwise."""
    vector = jnp.asarray(value)
    if vector.shape != (g.shape[0],):
        raise ValueError(f"{name} must have shape ({g.shape[0]},), got {vector.shape}")
    return vector.astype(g.dtype)


# ---------------------------------------------------------------- normalization, division


class Normalized(NamedTuple):
    """A Gramian divided by ``scale = max|G_ij| * trace(G / max|G_ij|)`` (its trace)."""

    gramian: Array  # (K, K), trace 1 when ``ok``; rows and columns of left-out terms zeroed
    ok: Array  # bool scalar: finite entries and a positive trace
    root_scale: Array  # sqrt(scale), computed without overflow
    active: Array  # (K,) bool: the terms solved for (``mask``)


def normalize(gramian, mask=None) -> Normalized:
    """Symmetrizes ``gramian``, zeroes the rows and columns of the terms left out by ``mask``
    and divides it by its trace; see :class:`Normalized`."""
    g = jnp.asarray(gramian)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"gramian must be a non-empty square (K, K) matrix, got {g.shape}")
    g = jax.lax.stop_gradient(g.astype(at_least_float32(g.dtype)))
    k = g.shape[0]
    if mask is None:
        active = jnp.ones((k,), bool)
    else:
        active = jnp.asarray(mask)
        if active.shape != (k,):
            raise ValueError(f"mask must have shape ({k},), got {active.shape}")
        active = jax.lax.stop_gradient(active).astype(bool)
        g = jnp.where(active[:, None] & active[None, :], g, 0.0)
    finite = jnp.all(jnp.isfinite(g))
    g = jnp.where(finite, 0.5 * g + 0.5 * g.T, 0.0)
    # Dividing by the largest entry first keeps the trace from overflowing.
    peak = jnp.max(jnp.abs(g))
    g = g / jnp.where(peak > 0, peak, 1.0)
    trace = jnp.trace(g)
    ok = finite & (trace > 0)
    g = g / jnp.where(ok, trace, 1.0)
    return Normalized(g, ok, jnp.sqrt(peak) * jnp.sqrt(jnp.where(ok, trace, 1.0)), active)


def uniform(active: Array, dtype) -> Array:
    """``1 / k`` on the ``k`` active terms, 0 elsewhere (all zero when none is active)."""
    ones = active.astype(dtype)
    return ones / jnp.maximum(jnp.sum(ones), 1.0)


def finish(weights: Array, n: Normalized) -> Array:
    """``weights`` (0 on left-out terms) where the input was valid and the result is finite,
    else uniform over the active terms."""
    weights = jnp.where(n.active, weights, 0.0)
    good = n.ok & jnp.all(jnp.isfinite(weights))
    return jnp.where(good, weights, uniform(n.active, weights.dtype))


def divide_where(ok: Array, numerator, denominator: Array, otherwise=0.0) -> Array:
    """``numerator / denominator`` where ``ok``, else ``otherwise``; the denominators left out
    are replaced by 1 before dividing, so neither value nor gradient is ever NaN."""
    return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), otherwise)


def divide_or_zero(numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, and 0 where the denominator is 0."""
    return divide_where(denominator != 0, numerator, denominator)


def preference(pref_vector, n: Normalized, *, mean: bool) -> Array:
    """The preference vector, 0 on left-out terms; by default ``1/k`` on the ``k`` active
    terms (``mean``) or ones."""
    if pref_vector is None:
        return uniform(n.active, n.gramian.dtype) if mean else n.active.astype(n.gramian.dtype)
    return jnp.where(n.active, as_vector("pref_vector", pref_vector, n.gramian), 0.0)


# --------------------------------------------------------- spectrum and the dual-cone QP


def spectrum(g: Array) -> tuple[Array, Array, Array]:
    """Eigenvalues (ascending), eigenvectors, and the mask of eigenvalues above the rank
    tolerance ``K * eps * lambda_max`` (the default of ``torch.linalg.pinv`` and of the
    Aligned-MTL authors)."""
    lam, vec = jnp.linalg.eigh(g)
    tol = g.shape[0] * jnp.finfo(g.dtype).eps * jnp.maximum(lam[-1], 0.0)
    return lam, vec, lam > tol


def pinv_solve(g: Array, x: Array) -> tuple[Array, Array]:
    """``pinv(G) x`` for a symmetric PSD ``G``, through its spectrum, and whether ``x`` has a
    resolved component in the range of ``G`` (more than ``eps`` of its squared norm)."""
    lam, vec, keep = spectrum(g)
    coords = vec.T @ x
    inverse = divide_where(keep, 1.0, lam)
    in_range = jnp.sum(jnp.where(keep, coords**2, 0.0))
    resolved = in_range > jnp.finfo(g.dtype).eps * jnp.sum(coords**2)
    return vec @ (inverse * coords), resolved


def _step_to_boundary(value: Array, delta: Array) -> Array:
    """Largest ``a`` with ``value + a * delta >= 0`` (inf when no entry decreases)."""
    falling = delta < 0
    return jnp.min(jnp.where(falling, -value / jnp.where(falling, delta, -1.0), jnp.inf))


def nonneg_qp(
    q: Array, c: Array, *, simplex: bool, iterations: int, active: Array | None = None
) -> Array:
    """``argmin_x 1/2 x^T Q x + c^T x`` s.t. ``x >= 0`` (and ``sum(x) = 1`` if ``simplex``).

    Mehrotra predictor-corrector interior-point method with a fixed iteration count. Each step
    factorises ``Q + Z/X`` (plus ``1 1^T`` for the simplex, whose constraint is then
    eliminated) once, by Cholesky; ``Q`` may be singular. Once the duality measure falls below
    ``eps**2`` the iterate is frozen, so extra iterations cannot degrade it. From the symmetric
    start ``x = 1/K`` (simplex) or ``x = 1``, the method is permutation-equivariant in exact
    arithmetic, and for a non-unique minimizer its central path tends to the analytic center
    of the optimal face; in floating point the Cholesky solves are not equivariant, and along
    a degenerate direction of the optimal face (where ``Q + Z/X`` is nearly singular) rounding,
    not the barrier, decides where the iterate ends (see ``ao.gramian.mgda``).

    With ``active``, the other variables are held at 0: their rows and columns of ``Q`` are
    replaced by the identity's and their ``c`` by a cost larger than any multiplier of the
    active problem, so their optimum is 0 with a strictly positive dual (the interior-point
    iterate goes to 0 at the method's rate), and the result is set to exactly 0 there.
    """
    k = q.shape[0]
    dtype = q.dtype
    if active is not None:
        pair = active[:, None] & active[None, :]
        q = jnp.where(pair, q, 0.0) + jnp.diag(jnp.where(active, 0.0, 1.0).astype(dtype))
        largest = jnp.max(jnp.abs(q)) + jnp.max(jnp.where(active, jnp.abs(c), 0.0))
        c = jnp.where(active, c, 1.0 + 2.0 * largest)
    ones = jnp.ones((k,), dtype)
    mu_floor = jnp.finfo(dtype).eps ** 2

    def factorise(x, z):
        h = q + jnp.diag(z / x)
        # Adding 1 1^T (Q has trace 1) keeps the matrix well conditioned on a degenerate
        # optimal face of the simplex, where Q + Z/X alone is nearly singular.
        return cho_factor(h + jnp.outer(ones, ones) if simplex else h)

    def direction(factor, x, z, residual, primal, complementarity):
        rhs = residual + complementarity / x
        if simplex:
            # (H + 1 1^T) dx + 1 (dy + primal) = rhs with 1^T dx = -primal.
            a, b = cho_solve(factor, jnp.stack([rhs, ones], axis=-1)).T
            shifted = (jnp.sum(a) + primal) / jnp.sum(b)
            dx, dy = a - shifted * b, shifted - primal
        else:
            dx, dy = cho_solve(factor, rhs), jnp.zeros((), dtype)
        return dx, (complementarity - z * dx) / x, dy

    def step(_, state):
        x, z, y = state
        residual = -(q @ x + c - z + y * ones)
        primal = jnp.sum(x) - 1.0
        mu = x @ z / k
        factor = factorise(x, z)
        # Predictor (affine) step, then a centerd corrector with Mehrotra's sigma.
        dxa, dza, _ = direction(factor, x, z, residual, primal, -x * z)
        alpha = jnp.minimum(1.0, jnp.minimum(_step_to_boundary(x, dxa), _step_to_boundary(z, dza)))
        mu_affine = (x + alpha * dxa) @ (z + alpha * dza) / k
        sigma = jnp.clip(divide_or_zero(mu_affine, mu) ** 3, 0.0, 1.0)
        dx, dz, dy = direction(factor, x, z, residual, primal, sigma * mu - x * z - dxa * dza)
        alpha = jnp.minimum(
            1.0, 0.99 * jnp.minimum(_step_to_boundary(x, dx), _step_to_boundary(z, dz))
        )
        finite = jnp.isfinite(alpha) & jnp.isfinite(dy) & jnp.all(jnp.isfinite(dx + dz))
        alpha = jnp.where(finite & (mu > mu_floor), alpha, 0.0)
        return (
            x + alpha * jnp.where(finite, dx, 0.0),
            z + alpha * jnp.where(finite, dz, 0.0),
            y + alpha * jnp.where(finite, dy, 0.0),
        )

    start = (ones / k if simplex else ones, ones, jnp.zeros((), dtype))
    x, _, _ = jax.lax.fori_loop(0, iterations, step, start)
    if active is None:
        return x
    x = jnp.where(active, x, 0.0)
    if simplex:  # back onto the simplex of the active terms, exactly
        total = jnp.sum(x)
        x = x / jnp.where(total > 0, total, 1.0)
    return x


def min_norm_weights(
    g: Array, iterations: int, shift: Array | None = None, active: Array | None = None
) -> Array:
    """``argmin_{w in simplex} 1/2 w^T G w + shift^T w``: the min-norm point when no shift."""
    c = jnp.zeros((g.shape[0],), g.dtype) if shift is None else shift
    return nonneg_qp(g, c, simplex=True, iterations=iterations, active=active)


def dual_cone_weights(g: Array, u: Array, reg_eps, iterations: int, active: Array) -> Array:
    """Weights ``v`` of the projection of ``J^T u_r`` onto the dual cone ``{d : J d >= 0}``,
    for each row ``u_r`` of ``u`` (``(R, K)``; a ``(K,)`` vector is one row), all at once.

    Proposition 1 of Quinton & Rey: ``v = argmin_v v^T G v`` s.t. ``v >= u``, solved here on
    ``Q = G + reg_eps * I`` as TorchJD does, as the linear complementarity problem in
    ``x = v - u >= 0``: ``y = Q x + Q u >= 0``, ``x^T y = 0``. Solved by principal pivoting
    (Cottle and Dantzig; Murty, *Linear Complementarity*, 1988, Chapter 4) on the ``(K, K)``
    tableau of each row, all rows in one batched computation: starting from ``x = 0``, each
    pivot exchanges ``x_r`` and ``y_r`` for the most negative basic value ``r``, a rank-one
    update of the tableau (no factorization). That rule solved every tested problem in about
    ``K`` pivots but may cycle on some positive definite ``Q``: after ``4 K`` pivots the
    least infeasible index is pivoted instead (Murty's least-index rule, finite for the
    P-matrix ``Q``). The loop stops once no row has a negative basic
    value (a row already solved is left unchanged, so a row's result never depends on the
    other rows, nor on the other members of a ``vmap`` batch), after at most ``iterations``
    pivots per row. The tableau's block on the free variables is then ``Q_FF^{-1}``: two steps
    of iterative refinement against ``Q`` polish ``x_F = -Q_FF^{-1} (Q u)_F``, and ``x`` is
    clipped at 0. A pivot that is not positive and finite (``reg_eps = 0`` on a singular
    Gramian) is not taken: that row stops where it is.
    """
    k = g.shape[0]
    dtype = g.dtype
    rows = jnp.atleast_2d(u)
    q = g + reg_eps * jnp.eye(k, dtype=dtype)
    b = rows @ q  # (R, K): Q u_r (Q is symmetric)
    index = jnp.arange(k)
    tiny = jnp.finfo(dtype).tiny
    slack = 16 * jnp.finfo(dtype).eps

    def choose(tableau, basic, count):
        scale = jnp.max(jnp.abs(basic), axis=1, keepdims=True)
        infeasible = (basic < -slack * scale) & active
        most_negative = jnp.argmin(jnp.where(infeasible, basic, jnp.inf), axis=1)
        r = jnp.where(count < 4 * k, most_negative, jnp.argmax(infeasible, axis=1))
        pivot = jnp.take_along_axis(jnp.diagonal(tableau, axis1=1, axis2=2), r[:, None], 1)[:, 0]
        go = jnp.any(infeasible, axis=1) & (pivot > tiny) & jnp.isfinite(pivot)
        return r, pivot, go

    def cond(state):
        tableau, basic, _, count = state
        return jnp.any(choose(tableau, basic, count)[2]) & (count < iterations)

    def body(state):
        tableau, basic, free, count = state
        r, pivot, go = choose(tableau, basic, count)
        pivot = jnp.where(go, pivot, 1.0)[:, None]
        at_r = index[None, :] == r[:, None]  # (R, K)
        row = jnp.sum(jnp.where(at_r[:, :, None], tableau, 0.0), axis=1)  # T_rj
        column = jnp.sum(jnp.where(at_r[:, None, :], tableau, 0.0), axis=2) / pivot  # T_ir / T_rr
        value = jnp.sum(jnp.where(at_r, basic, 0.0), axis=1, keepdims=True)  # t_r
        new = tableau - column[:, :, None] * row[:, None, :]
        new = jnp.where(at_r[:, :, None], -row[:, None, :] / pivot[:, :, None], new)
        new = jnp.where(at_r[:, None, :], column[:, :, None], new)
        new = jnp.where(at_r[:, :, None] & at_r[:, None, :], 1.0 / pivot[:, :, None], new)
        new_basic = jnp.where(at_r, -value / pivot, basic - column * value)
        go_ = go[:, None]
        return (
            jnp.where(go_[:, :, None], new, tableau),
            jnp.where(go_, new_basic, basic),
            jnp.where(go_ & at_r, ~free, free),
            count + 1,
        )

    start = (
        jnp.broadcast_to(q, (rows.shape[0], k, k)),
        b,
        jnp.zeros(b.shape, bool),
        jnp.zeros((), jnp.int32),
    )
    tableau, basic, free, _ = jax.lax.while_loop(cond, body, start)
    x = jnp.where(free, basic, 0.0)
    for _ in range(2):  # iterative refinement: x_F -= Q_FF^{-1} (Q x + Q u)_F
        residual = jnp.where(free, x @ q + b, 0.0)
        x = x - jnp.where(free, jnp.einsum("rij,rj->ri", tableau, residual), 0.0)
    x = jnp.where(free & active, jnp.maximum(x, 0.0), 0.0)
    v = rows + x
    return v if u.ndim == 2 else v[0]


# ----------------------------------------------------------------- the rule adapter


def scaled_gramian(signals: Signals, base_weights, rule: str):
    """``D_u G D_u`` with ``u = b / max(b)`` (the base-scaled Gramian over ``max(b)**2``: no
    overflow, and the same weights for every method invariant to ``G -> c G``), ``b`` and
    ``u``, in the rule's float dtype. ``b`` is the user's base weights: the guards store
    ``b / n`` (``Rule.per_term_base``), the method's uniform weights."""
    gramian = require(signals, GRAMIAN, rule)
    dtype = float_dtype(gramian)
    base = base_weights.astype(dtype) * base_weights.shape[0]
    unit = base / jnp.max(base)
    return unit[:, None] * gramian.astype(dtype) * unit[None, :], base, unit


def proposal(signals: Signals, weights, loss_weights):
    """The new loss weights on the finite terms; the current ones elsewhere."""
    return jnp.where(signals.finite, loss_weights, weights.astype(loss_weights.dtype))


def gramian_rule(rule: str, solver: Callable[..., Array], **settings: Any) -> Rule:
    """A stateless Gramian rule: ``solver(D_u G D_u, mask=finite, **settings) -> w``, proposal
    ``b * w``; ``settings`` are the method's, already checked."""

    def init(base_weights: chex.Array) -> tuple:
        del base_weights
        return ()

    def propose(signals: Signals, weights, base_weights, state):
        gramian, base, _ = scaled_gramian(signals, base_weights, rule)
        w = solver(gramian, mask=signals.finite, **settings)
        return proposal(signals, weights, base * w), state

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)
