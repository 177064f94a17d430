"""Gramian weightings: pure functions from the Gramian of the per-term gradients to weights.

With ``J`` the ``(K, n)`` matrix whose rows are the gradients ``g_i`` of the ``K`` loss terms,
a *weighting* maps the ``(K, K)`` Gramian ``G = J J^T`` to weights ``w`` and the update
direction is the aggregate ``w^T J = sum_i w_i g_i`` (TorchJD's design). Each function here is
pure and runs entirely in-graph: jittable, vmappable, no host round-trip, no Python branching on
traced values, and every iterative solver runs a fixed number of iterations.

Shared conventions:

- The Gramian is symmetrised and normalised by its largest entry, then by its trace, before
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

References:
  Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024
  (https://arxiv.org/abs/2406.16232), and TorchJD (https://github.com/SimplexLab/TorchJD).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from adaptive_optax._src import config

Array = jax.Array

#: Iterations of the interior-point QP solver (MGDA, UPGrad, DualProj and each CAGrad step);
#: it reaches float32 precision in about 15 on the tested problems (K <= 30).
QP_ITERATIONS = 25
#: Root-finding (Illinois) steps of CAGrad's outer problem; each solves one simplex QP.
CAGRAD_ITERATIONS = 16
#: Damped Newton steps of Nash-MTL.
NASH_ITERATIONS = 40

ScaleMode = Literal["min", "median", "rmse"]


# ------------------------------------------------------------------------------------ helpers


class _Normalized(NamedTuple):
    """A Gramian divided by ``scale = max|G_ij| * trace(G / max|G_ij|)`` (its trace)."""

    gramian: Array  # (K, K), trace 1 when ``ok``; rows and columns of left-out terms zeroed
    ok: Array  # bool scalar: finite entries and a positive trace
    root_scale: Array  # sqrt(scale), computed without overflow
    active: Array  # (K,) bool: the terms solved for (``mask``)


def _compute_dtype(dtype) -> jnp.dtype:
    """float64 for float64 input, float32 otherwise (half precision is computed in float32)."""
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype).itemsize > 4 else jnp.float32)


def _normalize(gramian, mask=None) -> _Normalized:
    """Symmetrises ``gramian``, zeroes the rows and columns of the terms left out by ``mask``
    and divides it by its trace; see :class:`_Normalized`."""
    g = jnp.asarray(gramian)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"gramian must be a non-empty square (K, K) matrix, got {g.shape}")
    g = jax.lax.stop_gradient(g.astype(_compute_dtype(g.dtype)))
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
    return _Normalized(g, ok, jnp.sqrt(peak) * jnp.sqrt(jnp.where(ok, trace, 1.0)), active)


def _uniform(active: Array, dtype) -> Array:
    """``1 / k`` on the ``k`` active terms, 0 elsewhere (all zero when none is active)."""
    ones = active.astype(dtype)
    return ones / jnp.maximum(jnp.sum(ones), 1.0)


def _finish(weights: Array, n: _Normalized) -> Array:
    """``weights`` (0 on left-out terms) where the input was valid and the result is finite,
    else uniform over the active terms."""
    weights = jnp.where(n.active, weights, 0.0)
    good = n.ok & jnp.all(jnp.isfinite(weights))
    return jnp.where(good, weights, _uniform(n.active, weights.dtype))


def _safe_divide(numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, and 0 where the denominator is 0."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def _vector(name: str, value, g: Array) -> Array:
    """``value`` as a ``(K,)`` array in the dtype of ``g``; raises ``ValueError`` otherwise."""
    vector = jnp.asarray(value)
    if vector.shape != (g.shape[0],):
        raise ValueError(f"{name} must have shape ({g.shape[0]},), got {vector.shape}")
    return vector.astype(g.dtype)


def _preference(pref_vector, n: _Normalized, *, mean: bool) -> Array:
    """The preference vector, 0 on left-out terms; by default ``1/k`` on the ``k`` active
    terms (``mean``) or ones."""
    if pref_vector is None:
        return _uniform(n.active, n.gramian.dtype) if mean else n.active.astype(n.gramian.dtype)
    return jnp.where(n.active, _vector("pref_vector", pref_vector, n.gramian), 0.0)


def _check(name: str, value, *, low: float = 0.0) -> None:
    """Raises ``ValueError`` unless ``value`` is one finite number ``>= low`` (traced values
    are not checked)."""
    config.check_number(name, value, low=low)


def _check_iterations(name: str, value) -> int:
    """``value``, a Python int ``>= 1`` (a fixed iteration count, static); else ``ValueError``."""
    config.check_number(name, value, low=1, integer=True, static=True)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int (a fixed iteration count), got {value!r}")
    return value


def _spectrum(g: Array) -> tuple[Array, Array, Array]:
    """Eigenvalues (ascending), eigenvectors, and the mask of eigenvalues above the rank
    tolerance ``K * eps * lambda_max`` (the default of ``torch.linalg.pinv`` and of the
    Aligned-MTL authors)."""
    lam, vec = jnp.linalg.eigh(g)
    tol = g.shape[0] * jnp.finfo(g.dtype).eps * jnp.maximum(lam[-1], 0.0)
    return lam, vec, lam > tol


def _pinv_solve(g: Array, x: Array) -> tuple[Array, Array]:
    """``pinv(G) x`` for a symmetric PSD ``G``, through its spectrum, and whether ``x`` has a
    resolved component in the range of ``G`` (more than ``eps`` of its squared norm)."""
    lam, vec, keep = _spectrum(g)
    coords = vec.T @ x
    inverse = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    in_range = jnp.sum(jnp.where(keep, coords**2, 0.0))
    resolved = in_range > jnp.finfo(g.dtype).eps * jnp.sum(coords**2)
    return vec @ (inverse * coords), resolved


def _step_to_boundary(value: Array, delta: Array) -> Array:
    """Largest ``a`` with ``value + a * delta >= 0`` (inf when no entry decreases)."""
    falling = delta < 0
    return jnp.min(jnp.where(falling, -value / jnp.where(falling, delta, -1.0), jnp.inf))


def _nonneg_qp(
    q: Array, c: Array, *, simplex: bool, iterations: int, active: Array | None = None
) -> Array:
    """``argmin_x 1/2 x^T Q x + c^T x`` s.t. ``x >= 0`` (and ``sum(x) = 1`` if ``simplex``).

    Mehrotra predictor-corrector interior-point method with a fixed iteration count. Each step
    factorises ``Q + Z/X`` (plus ``1 1^T`` for the simplex, whose constraint is then
    eliminated) once, by Cholesky; ``Q`` may be singular. Once the duality measure falls below
    ``eps**2`` the iterate is frozen, so extra iterations cannot degrade it. From the symmetric
    start ``x = 1/K`` (simplex) or ``x = 1``, the method is permutation-equivariant, and for a
    non-unique minimiser it tends to the analytic centre of the optimal face.

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
        # Predictor (affine) step, then a centred corrector with Mehrotra's sigma.
        dxa, dza, _ = direction(factor, x, z, residual, primal, -x * z)
        alpha = jnp.minimum(1.0, jnp.minimum(_step_to_boundary(x, dxa), _step_to_boundary(z, dza)))
        mu_affine = (x + alpha * dxa) @ (z + alpha * dza) / k
        sigma = jnp.clip(_safe_divide(mu_affine, mu) ** 3, 0.0, 1.0)
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


def _min_norm_weights(
    g: Array, iterations: int, shift: Array | None = None, active: Array | None = None
) -> Array:
    """``argmin_{w in simplex} 1/2 w^T G w + shift^T w``: the min-norm point when no shift."""
    c = jnp.zeros((g.shape[0],), g.dtype) if shift is None else shift
    return _nonneg_qp(g, c, simplex=True, iterations=iterations, active=active)


def _dual_cone_weights(g: Array, u: Array, reg_eps, iterations: int, active: Array) -> Array:
    """Weights ``v`` of the projection of ``J^T u`` onto the dual cone ``{d : J d >= 0}``.

    Proposition 1 of Quinton & Rey: ``v = argmin_v v^T G v`` s.t. ``v >= u``, solved here as
    ``v = u + x`` with ``x >= 0``, on ``G + reg_eps * I`` as TorchJD does.
    """
    q = g + reg_eps * jnp.eye(g.shape[0], dtype=g.dtype)
    return u + _nonneg_qp(q, q @ u, simplex=False, iterations=iterations, active=active)


# --------------------------------------------------------------------------------- weightings


def mgda_from_gramian(gramian, *, iterations: int = QP_ITERATIONS, mask=None) -> Array:
    """MGDA: the weights of the min-norm point of the convex hull of the gradients.

    ``w = argmin_{w >= 0, sum(w) = 1} w^T G w``. The aggregate ``d = J^T w`` satisfies
    ``J d >= ||d||^2 >= 0``: it conflicts with no gradient.

    Solved by a primal-dual interior-point method (fixed ``iterations``) on the
    trace-normalised Gramian, where the authors and TorchJD run Frank-Wolfe (Algorithm 2 of
    Sener & Koltun) with an early stop at ``gamma < 0.001`` or 100 iterations: the minimiser is
    the same, reached to float precision. When it is not unique (``0`` in the hull of a
    rank-deficient set), the interior-point method returns the analytic centre of the optimal
    face, which keeps the weights permutation-equivariant.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      iterations: interior-point iterations (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights on the simplex; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = mgda_from_gramian(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.6, 0.4]

    References:
      Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective optimization*,
      2012; Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018.
    """
    iterations = _check_iterations("iterations", iterations)
    n = _normalize(gramian, mask)
    return _finish(_min_norm_weights(n.gramian, iterations, active=n.active), n)


def upgrad_from_gramian(
    gramian,
    *,
    pref_vector=None,
    reg_eps: float = 1e-4,
    iterations: int = QP_ITERATIONS,
    mask=None,
) -> Array:
    """UPGrad: project each gradient onto the dual cone of all gradients, and average.

    With ``u = pref_vector`` (default ``1/K``), each row ``u_i e_i`` is projected onto the dual
    cone ``{d : J d >= 0}`` by solving ``v_i = argmin_v v^T G v`` s.t. ``v >= u_i e_i``
    (Proposition 1 of Quinton & Rey) and ``w = sum_i v_i``. The aggregate ``J^T w`` is
    non-conflicting (``J J^T w >= 0``) up to the regularisation.

    As in TorchJD's ``QuadprogProjector``, the QP runs on ``G / trace(G) + reg_eps * I``;
    ``reg_eps = 1e-4`` reproduces TorchJD's values (and its small ``O(reg_eps)`` departure
    from the exact projection). The box-constrained QP is solved in-graph by a primal-dual
    interior-point method with a fixed iteration count, vmapped over the ``K`` rows, where
    TorchJD calls quadprog on the host. Unlike TorchJD, which zeroes a Gramian whose trace is
    below ``norm_eps = 1e-4``, nothing here depends on the absolute scale.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` preference weights; default ``1/K`` each.
      reg_eps: ridge added to the trace-normalised Gramian (``>= 0``).
      iterations: interior-point iterations (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = upgrad_from_gramian(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [1.1109, 0.7894]

    References:
      Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024, Section 3;
      TorchJD ``UPGradWeighting``.
    """
    iterations = _check_iterations("iterations", iterations)
    _check("reg_eps", reg_eps)
    n = _normalize(gramian, mask)
    pref = _preference(pref_vector, n, mean=True)
    rows = jnp.diag(pref)
    projected = jax.vmap(lambda u: _dual_cone_weights(n.gramian, u, reg_eps, iterations, n.active))(
        rows
    )
    return _finish(jnp.sum(projected, axis=0), n)


def dualproj_from_gramian(
    gramian,
    *,
    pref_vector=None,
    reg_eps: float = 1e-4,
    iterations: int = QP_ITERATIONS,
    mask=None,
) -> Array:
    """DualProj: project the mean gradient onto the dual cone of the gradients.

    ``w = argmin_v v^T G v`` s.t. ``v >= u`` with ``u = pref_vector`` (default ``1/K``): the
    weights of the projection of ``J^T u`` onto ``{d : J d >= 0}`` (Equation 11 of GEM,
    in TorchJD's dual form). Same solver, regularisation and departures as
    ``upgrad_from_gramian`` (``ao.gramian.upgrad``).

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` weights of the vector to project; default ``1/K`` each.
      reg_eps: ridge added to the trace-normalised Gramian (``>= 0``).
      iterations: interior-point iterations (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = dualproj_from_gramian(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.6109, 0.5]

    References:
      Lopez-Paz & Ranzato, *Gradient Episodic Memory for Continual Learning*, NeurIPS 2017;
      TorchJD ``DualProjWeighting``.
    """
    iterations = _check_iterations("iterations", iterations)
    _check("reg_eps", reg_eps)
    n = _normalize(gramian, mask)
    pref = _preference(pref_vector, n, mean=True)
    return _finish(_dual_cone_weights(n.gramian, pref, reg_eps, iterations, n.active), n)


def imtl_g_from_gramian(gramian, *, mask=None) -> Array:
    """IMTL-G: the aggregate has the same projection on every unit gradient.

    Closed form (TorchJD's generalisation to linearly dependent gradients)::

        v = pinv(G) sqrt(diag(G)),    w = v / sum(v)

    For independent gradients, ``u_i^T (J^T v) = 1`` for every unit gradient ``u_i``; the
    authors' code (LibMTL) solves the equivalent ``(K-1)``-dimensional system with
    ``torch.inverse`` and needs independent gradients. The pseudo-inverse drops eigenvalues
    below ``K * eps * lambda_max`` (``torch.linalg.pinv``'s default). When ``sum(v)``
    vanishes (``|sum(v)| <= eps * sum|v|``), the weights are zero, as in TorchJD.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights summing to 1 (or zeros, see above); uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = imtl_g_from_gramian(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.5923, 0.4077]

    References:
      Liu et al., *Towards Impartial Multi-task Learning*, ICLR 2021; TorchJD
      ``IMTLGWeighting``.
    """
    n = _normalize(gramian, mask)
    g = n.gramian
    v, _ = _pinv_solve(g, jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0)))
    v = jnp.where(n.active, v, 0.0)
    total = jnp.sum(v)
    significant = jnp.abs(total) > jnp.finfo(g.dtype).eps * jnp.sum(jnp.abs(v))
    return _finish(jnp.where(significant, v / jnp.where(significant, total, 1.0), 0.0), n)


def _aligned_scale(lam: Array, keep: Array, mode: ScaleMode) -> Array:
    """Aligned-MTL's scale among the kept eigenvalues (``lam`` ascending, kept at the top)."""
    rank = jnp.sum(keep)
    if mode == "min":
        return jnp.min(jnp.where(keep, lam, jnp.inf))
    if mode == "median":  # torch.median: the lower median
        return lam[lam.shape[0] - rank + (rank - 1) // 2]
    return jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1).astype(lam.dtype)


def aligned_mtl_from_gramian(
    gramian, *, pref_vector=None, scale_mode: ScaleMode = "min", mask=None
) -> Array:
    """Aligned-MTL: align the gradients' principal components, then combine them.

    With ``G = V diag(lambda) V^T`` restricted to the ``r`` eigenvalues above
    ``K * eps * lambda_max``::

        B = sqrt(s) V diag(lambda)^(-1/2) V^T,    w = B u

    where ``u = pref_vector`` (default ``1/K``) and ``s`` is the smallest kept eigenvalue
    (``"min"``, default), their lower median (``"median"``) or their mean (``"rmse"``), as in
    TorchJD. For rank 0, ``B = I``. The authors' code (LibMTL) uses ``"min"`` and sums the
    columns of ``B`` (``u = 1``), which only scales the weights by ``K``.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` preference weights; default ``1/K`` each.
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"`` (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = aligned_mtl_from_gramian(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.5591, 0.4083]

    References:
      Senushkin et al., *Independent Component Alignment for Multi-Task Learning*, CVPR 2023;
      TorchJD ``AlignedMTLWeighting``.
    """
    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
    n = _normalize(gramian, mask)
    pref = _preference(pref_vector, n, mean=True)
    lam, vec, keep = _spectrum(n.gramian)
    inverse_root = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    scale = _aligned_scale(lam, keep, scale_mode)
    balance = jnp.sqrt(jnp.maximum(scale, 0.0)) * (vec * inverse_root) @ vec.T
    return _finish(jnp.where(jnp.any(keep), balance @ pref, pref), n)


def _cagrad_direction_weights(g: Array, mean: Array, s: Array, iterations, qp_iterations, active):
    """``w* = argmin_{w in simplex} w^T G mean + s sqrt(w^T G w)``.

    Since ``sqrt(q) = min_t (q / t + t) / 2``, the minimiser is ``w(t*)`` with
    ``w(t) = argmin_simplex (t / s) (G 1/K)^T w + 1/2 w^T G w`` and ``t* = ||J^T w(t*)||``;
    ``psi(t) = log ||J^T w(t)|| - log t`` decreases in ``t`` (the partial minimum over ``w`` is
    convex in ``t``). The root is bracketed by ``[||J^T w_0||, sqrt(max G_ii)]``, where
    ``w_0 = w(0)`` is the min-norm point (no simplex point is shorter, none longer than the
    longest gradient), and found by the Illinois method in ``log t``. The lower end is raised
    to the rounding error of ``||J^T w_0||`` when ``0`` is (numerically) in the hull. The
    bracket follows the gradients' scales: a term whose gradient is thousands of times shorter
    than another's still moves the solution (no fixed floor).
    """
    b = g @ mean
    tiny = jnp.sqrt(jnp.finfo(g.dtype).tiny)

    def norm(w):
        return jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))

    def floor(w):
        # The shortest resolved ||J^T w||: below it, psi is rounding noise.
        return jnp.maximum(jnp.sqrt(_rounding_error(g, w)), tiny)

    def evaluate(log_t):
        w = _min_norm_weights(g, qp_iterations, shift=b * jnp.exp(log_t) / s, active=active)
        return jnp.log(jnp.maximum(norm(w), tiny)) - log_t, w

    def step(t, state):
        # Step 0 finds the min-norm point (t = 0), steps 1 and 2 evaluate the ends of the
        # bracket, the others its secant point, so that the graph holds one QP (it compiles in
        # about half the time of two).
        lo, f_lo, w_lo, hi, f_hi, w_hi, side = state
        secant = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        mid = jnp.where(jnp.isfinite(secant), jnp.clip(secant, lo, hi), 0.5 * (lo + hi))
        log_t = jnp.select([t == 0, t == 1, t == 2], [-jnp.inf, lo, hi], mid)
        f_mid, w_mid = evaluate(log_t)
        low_side = f_mid > 0  # the root lies above mid
        # Illinois: halve the value kept at an end that survives twice in a row.
        halved_hi = jnp.where(low_side & (side == 1), 0.5 * f_hi, f_hi)
        halved_lo = jnp.where(~low_side & (side == -1), 0.5 * f_lo, f_lo)
        cases = (
            (jnp.log(jnp.maximum(norm(w_mid), floor(w_mid))), f_lo, w_mid, hi, f_hi, w_mid, side),
            (lo, f_mid, w_mid, hi, f_hi, w_hi, side),
            (lo, f_lo, w_lo, hi, f_mid, w_mid, side),
            (
                jnp.where(low_side, mid, lo),
                jnp.where(low_side, f_mid, halved_lo),
                jnp.where(low_side, w_mid, w_lo),
                jnp.where(low_side, hi, mid),
                jnp.where(low_side, halved_hi, f_mid),
                jnp.where(low_side, w_hi, w_mid),
                jnp.where(low_side, jnp.int32(1), jnp.int32(-1)),
            ),
        )
        return jax.tree.map(lambda *x: jnp.select([t == 0, t == 1, t == 2], x[:3], x[3]), *cases)

    hi = 0.5 * jnp.log(jnp.maximum(jnp.max(jnp.diag(g)), tiny**2))
    zero, weights = jnp.zeros((), g.dtype), jnp.zeros_like(mean)
    start = (hi, zero, weights, hi, zero, weights, jnp.zeros((), jnp.int32))
    lo, f_lo, w_lo, hi, f_hi, w_hi, _ = jax.lax.fori_loop(0, iterations + 3, step, start)
    return jnp.where(jnp.abs(f_lo) < jnp.abs(f_hi), w_lo, w_hi)


def _rounding_error(g: Array, w: Array) -> Array:
    """A bound on the rounding error of ``w^T G w`` (``||J^T w||^2``) in ``g``'s dtype."""
    return 8 * g.shape[0] * jnp.finfo(g.dtype).eps * (jnp.abs(w) @ jnp.abs(g) @ jnp.abs(w))


def cagrad_from_gramian(
    gramian,
    *,
    c: float = 0.5,
    rescale: bool = False,
    norm_eps: float = 1e-4,
    iterations: int = CAGRAD_ITERATIONS,
    qp_iterations: int = QP_ITERATIONS,
    mask=None,
) -> Array:
    """CAGrad: the best worst-case improvement within a ball around the mean gradient.

    On the trace-normalised Gramian, with ``g_0 = J^T 1/K`` and ``s = c ||g_0||``::

        w* = argmin_{w in simplex} w^T G 1/K + s ||J^T w||
        weights = 1/K + (s / ||J^T w*||) w*

    (TorchJD's formulation, Algorithm 1 of Liu et al.). The simplex subproblem is solved
    in-graph (see ``_cagrad_direction_weights``: one min-norm QP, then ``iterations`` Illinois
    steps, each one interior-point QP of ``qp_iterations``), where TorchJD uses cvxpy/Clarabel
    and the authors scipy's SLSQP. The weights do not depend on the scale of ``G``.

    The weights are zero, as in TorchJD, only when ``||J^T w*|| < norm_eps`` (relative to
    ``sqrt(trace(G))``, TorchJD's normalisation) or when ``||J^T w*||^2`` is below its
    rounding error in the computing dtype (``w*`` is then noise; this happens near
    Pareto-stationary points, where ``0`` is in the convex hull of the gradients). Gradients
    of different scales are not stationary: a term whose gradient is 3000 times shorter than
    another's (relative norm ``3e-4``) still gives CAGrad's direction, as in TorchJD and the
    authors' code. ``norm_eps=0`` never zeroes the weights, as the authors' code: where
    ``||J^T w*||`` is not resolved it gives the mean gradient (``1/K`` each). A term with a
    zero gradient keeps ``1/K`` (its weight does not change the aggregate). ``c = 0`` (or a
    zero mean gradient) gives ``1/K``.
    ``rescale=True`` divides by ``1 + c**2``, as the authors' NYUv2 code does by default;
    TorchJD does not rescale.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      c: radius of the ball, relative to ``||g_0||`` (``>= 0``).
      rescale: divide the weights by ``1 + c**2``.
      norm_eps: relative norm of ``J^T w*`` below which the weights are zero, in ``[0, 1)``.
      iterations: root-finding steps (static).
      qp_iterations: interior-point iterations of each QP (static).
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = cagrad_from_gramian(J @ J.T, c=0.5)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [0.7041, 0.5]

    References:
      Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021;
      TorchJD ``CAGradWeighting``.
    """
    _check("c", c)
    _check("norm_eps", norm_eps)
    iterations = _check_iterations("iterations", iterations)
    qp_iterations = _check_iterations("qp_iterations", qp_iterations)
    n = _normalize(gramian, mask)
    g = n.gramian
    mean = _uniform(n.active, g.dtype)
    s = c * jnp.sqrt(jnp.maximum(mean @ g @ mean, 0.0))
    safe_s = jnp.where(s > 0, s, 1.0)
    w = _cagrad_direction_weights(g, mean, safe_s, iterations, qp_iterations, n.active)
    norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
    resolved = w @ g @ w > _rounding_error(g, w)
    moving = jnp.where(resolved, mean + _safe_divide(s, norm) * w, mean)
    # A zero gradient's weight does not move the aggregate: keep its share of the mean.
    moving = jnp.where(jnp.diag(g) > 0, moving, mean)
    stationary = (norm_eps > 0) & (~resolved | (norm < norm_eps))
    weights = jnp.where(s > 0, jnp.where(stationary, 0.0, moving), mean)
    if rescale:
        weights = weights / (1.0 + c**2)
    return _finish(weights, n)


def pcgrad_from_gramian(gramian, *, key: Array | None = None, mask=None) -> Array:
    """PCGrad as coefficients: project away conflicts, one gradient after another.

    For each term ``i``, start from ``g_i^PC = g_i`` and for each other term ``j`` in order: if
    ``g_i^PC . g_j < 0``, ``g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 g_j``. The aggregate is
    ``sum_i g_i^PC`` (a sum, as in TorchJD and the authors); tracking ``g_i^PC`` by its
    coefficients ``W[i]``, every inner product is ``G[j] @ W[i]``, so only the Gramian is
    needed. Terms with a zero gradient are never projected on.

    Order convention: with ``key=None`` every term visits the others in index order
    ``0, 1, ..., K-1`` (deterministic; not permutation-invariant for ``K >= 3``). With a
    ``key``, each term draws its own random order, as TorchJD (``torch.randperm`` per term)
    and the authors (``random.shuffle`` per term) do. For ``K = 2`` the order is irrelevant.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      key: optional PRNG key for random orders.
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = pcgrad_from_gramian(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [2.2222, 1.5789]

    References:
      Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020; TorchJD
      ``PCGradWeighting``.
    """
    n = _normalize(gramian, mask)
    g = n.gramian
    k = g.shape[0]
    terms = jnp.arange(k)
    if key is None:
        order = jnp.broadcast_to(terms, (k, k))
    else:
        # One uniformly random order per term: the ranks of i.i.d. uniform draws.
        order = jnp.argsort(jax.random.uniform(key, (k, k), g.dtype), axis=1)
    diag = jnp.diag(g)

    def project(t, w):
        j = order[:, t]  # the term each row projects on at this step
        inner = jnp.sum(g[j] * w, axis=1)
        conflict = (inner < 0) & (j != terms) & (diag[j] > 0)
        return w.at[terms, j].add(jnp.where(conflict, -inner / jnp.where(conflict, diag[j], 1), 0))

    w = jax.lax.fori_loop(0, k, project, jnp.eye(k, dtype=g.dtype))
    return _finish(jnp.sum(w, axis=0), n)


def config_from_gramian(gramian, *, pref_vector=None, mask=None) -> Array:
    """ConFIG: the direction with equal-weighted alignment to every unit gradient.

    With ``U = D^(-1/2) J`` the unit gradients (``D = diag(G)``; zero gradients give zero rows)
    and ``u = pref_vector`` (default ones), ConFIG takes ``d = pinv(U) u`` and returns
    ``(sum_i g_i . d_hat) d_hat``. Since ``pinv(U) = U^T pinv(U U^T)``, ``d = J^T v`` with::

        v = D^(-1/2) pinv(D^(-1/2) G D^(-1/2)) u,    w = v (1^T G v) / (v^T G v)

    so the weights need only the Gramian. Departure: the pseudo-inverse of the unit Gramian
    drops its eigenvalues below ``K * eps * lambda_max``, i.e. singular values of ``U`` below
    about ``sqrt(K * eps)`` of the largest, where the authors (``lstsq``) and TorchJD
    (``pinv``) act on ``U`` itself; they agree unless ``U`` is that ill-conditioned. When
    ``pinv(U) u`` vanishes (``u`` has no component above ``eps`` in the range of the unit
    Gramian, e.g. two opposite gradients) or ``v^T G v = 0``, the weights are zero, as
    TorchJD's normalisation of a (numerically) zero direction gives.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      pref_vector: ``(K,)`` target alignments; default ones (their scale does not matter).
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = config_from_gramian(J @ J.T)
      >>> np.asarray(w @ J, np.float64).round(4).tolist()
      [0.1588, 2.0706, 2.0706]

    References:
      Liu et al., *ConFIG: Towards Conflict-free Training of Physics Informed Neural
      Networks*, ICLR 2025 (https://arxiv.org/abs/2408.11104); TorchJD ``ConFIG``.
    """
    n = _normalize(gramian, mask)
    g = n.gramian
    pref = _preference(pref_vector, n, mean=False)
    diag = jnp.diag(g)
    inverse_norm = jnp.where(diag > 0, 1.0 / jnp.sqrt(jnp.where(diag > 0, diag, 1.0)), 0.0)
    units = g * inverse_norm[:, None] * inverse_norm[None, :]
    coefficients, resolved = _pinv_solve(units, pref)
    v = inverse_norm * coefficients
    gv = g @ v
    weights = jnp.where(resolved, _safe_divide(jnp.sum(gv), v @ gv) * v, 0.0)
    return _finish(weights, n)


def _nash_start(q: Array, init: Array | None) -> Array:
    """The best multiple of ``init`` (default ones): ``c init`` with ``c^2 = K / init^T Q init``."""
    direction = jnp.ones((q.shape[0],), q.dtype)
    if init is not None:
        usable = jnp.all(jnp.isfinite(init) & (init > 0))
        direction = jnp.where(usable, init, direction)
    return direction * jnp.sqrt(q.shape[0] / (direction @ q @ direction))


def _nash_newton(q: Array, alpha: Array, iterations: int) -> Array:
    """Damped Newton on ``F(a) = 1/2 a^T Q a - sum(log a)``, whose minimiser has
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
    reg_eps: float = 1e-5,
    iterations: int = NASH_ITERATIONS,
    mask=None,
) -> Array:
    """Nash-MTL: the Nash bargaining solution ``alpha > 0`` with ``G alpha = 1 / alpha``.

    The direction ``d = J^T alpha`` maximises ``sum_i log(g_i . d)`` over the unit ball (up to
    scale); ``alpha`` is the unique minimiser of the strictly convex
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
    ``1/||g_i||`` and ``alpha_i (G alpha)_i`` falls below ``1/2``. On well-posed problems
    ``reg_eps`` changes ``alpha_i (G alpha)_i = 1`` by ``reg_eps * ||g_i||^2 alpha_i^2``,
    about ``reg_eps`` relative. ``max_norm`` rescales
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
      mask: optional ``(K,)`` bools, the terms to solve for (see the module's conventions).

    Returns:
      ``(K,)`` positive weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> G = J @ J.T
      >>> alpha = nash_mtl_from_gramian(G)
      >>> np.asarray(G @ alpha * alpha, np.float64).round(3).tolist()  # G alpha = 1 / alpha
      [1.0, 1.0]
      >>> w = nash_mtl_from_gramian(G, max_norm=1.0)
      >>> np.asarray(w @ J, np.float64).round(4).tolist()
      [0.0542, 0.7061, 0.7061]

    References:
      Navon et al., *Multi-Task Learning as a Bargaining Game*, ICML 2022; TorchJD
      ``NashMTL``.
    """
    iterations = _check_iterations("iterations", iterations)
    _check("reg_eps", reg_eps)
    if isinstance(max_norm, (int, float)) and not max_norm > 0:
        raise ValueError(f"max_norm must be > 0 (or None), got {max_norm!r}")
    n = _normalize(gramian, mask)
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
        init = _vector("init", init, g)
        previous = jnp.where(jnp.all(jnp.isfinite(init) & (init > 0)), init, previous)
    beta = _nash_newton(q, _nash_start(q, root * previous), iterations)
    # Without a bargaining solution beta_i grows to about 1 / sqrt(reg_eps) and
    # beta_i (C beta)_i = 1 - reg_eps beta_i^2 falls far below 1: keep the previous alpha.
    solved = jnp.all(jnp.where(n.active, beta * (correlation @ beta) > 0.5, True))
    beta = jnp.where(n.active, jnp.where(solved, beta, previous * root * n.root_scale), 0.0)
    if max_norm is not None:
        # ||J^T alpha|| = sqrt(beta^T C beta): the normalisations cancel.
        norm = jnp.sqrt(jnp.maximum(beta @ correlation @ beta, 0.0))
        too_long = norm > max_norm
        beta = beta * jnp.where(too_long, max_norm / jnp.where(too_long, norm, 1.0), 1.0)
    return _finish(beta / root / n.root_scale, n)
