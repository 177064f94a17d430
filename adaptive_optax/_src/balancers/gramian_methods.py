"""Gramian methods as rules: MGDA, UPGrad, DualProj, IMTL-G, Aligned-MTL, CAGrad, PCGrad, ConFIG
and Nash-MTL, each a function of the Gramian of the per-term gradients, solved in-graph.

With ``g_i`` the gradient of term ``i`` and ``b`` the base weights, every rule here applies its
method to the base-scaled gradients ``b_i g_i``, i.e. to the Gramian ``D_b G D_b``
(``D_b = diag(b)``, ``G_ij = <g_i, g_j>``), and proposes the loss weights ``b_i w_i``, where
``w`` are the method's weights in TorchJD's scale (the aggregate of the scaled gradients is
``sum_i w_i b_i g_i``). So the weighted gradient ``sum_i b_i w_i g_i`` is the method's
aggregate for the loss terms ``b_i L_i``: unit base weights give the method itself, and other
base weights say how much each term counts before the method balances them. The solvers
(``adaptive_optax._src.gramian``) document each algorithm, its fixed iteration counts and where
it departs from the authors' and TorchJD's code.

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp

from adaptive_optax._src import config
from adaptive_optax._src import gramian as solvers
from adaptive_optax._src.balancers._common import bare, float_dtype, preset, require
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals
from adaptive_optax._src.gradients import GRAMIAN
from adaptive_optax._src.gramian import _check_iterations

NEEDS = (GRAMIAN,)


class NashMTLState(NamedTuple):
    """State of :func:`nash_mtl_rule`.

    Attributes:
      alpha: ``(n,)`` the last Nash bargaining solution ``alpha`` of the unscaled gradients
        (ones at first), the warm start of the next solve.
    """

    alpha: chex.Array


class PCGradState(NamedTuple):
    """State of :func:`pcgrad_rule` with random orders.

    Attributes:
      key: ``uint32`` raw PRNG key data (``jax.random.key_data``) drawing the orders.
    """

    key: chex.Array


def _scaled_gramian(signals: Signals, base_weights, rule: str):
    """``D_u G D_u`` with ``u = b / max(b)`` (the base-scaled Gramian over ``max(b)**2``: no
    overflow, and the same weights for every method invariant to ``G -> c G``), ``b`` and
    ``u``, in the rule's float dtype. ``b`` is the user's base weights: the guards store
    ``b / n`` (``Rule.per_term_base``), the method's uniform weights."""
    gramian = require(signals, GRAMIAN, rule)
    dtype = float_dtype(gramian)
    base = base_weights.astype(dtype) * base_weights.shape[0]
    unit = base / jnp.max(base)
    return unit[:, None] * gramian.astype(dtype) * unit[None, :], base, unit


def _proposal(signals: Signals, weights, loss_weights):
    """The new loss weights on the finite terms; the current ones elsewhere."""
    return jnp.where(signals.finite, loss_weights, weights.astype(loss_weights.dtype))


def _rule(rule: str, solve: Callable[[chex.Array, chex.Array], chex.Array]) -> Rule:
    """A stateless Gramian rule: ``solve(D_u G D_u, finite) -> w``, proposal ``b * w``."""

    def init(base_weights: chex.Array) -> tuple:
        del base_weights
        return ()

    def propose(signals: Signals, weights, base_weights, state):
        gramian, base, _ = _scaled_gramian(signals, base_weights, rule)
        w = solve(gramian, signals.finite)
        return _proposal(signals, weights, base * w), state

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)


def _check_reg_eps(reg_eps: Any) -> None:
    config.check_number("reg_eps", reg_eps, low=0, high=jnp.inf, high_open=True)


# ---------------------------------------------------------------------------------- MGDA


def mgda_rule(*, iterations: int = solvers.QP_ITERATIONS) -> Rule:
    """MGDA: the weights of the min-norm point of the convex hull of the gradients.

    ``w = argmin_{w >= 0, sum(w) = 1} ||sum_i w_i b_i g_i||^2``; the loss weight is
    ``b_i w_i``. The aggregate ``d`` satisfies ``<b_i g_i, d> >= ||d||^2 >= 0``: it conflicts
    with no term, and it vanishes at a Pareto-stationary point. Solved in-graph by an
    interior-point method with ``iterations`` steps, where the authors and TorchJD run
    Frank-Wolfe on the host; the minimiser is the same, to float precision. Non-finite terms
    are left out of the hull.

    Recommended guards: none for the guarantee (a change limit, bounds or gate make the applied
    weights differ from the solver's, and the aggregate may then conflict); ``every=k`` to
    consult the solver every ``k`` steps only.

    Args:
      iterations: interior-point iterations (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.mgda_rule(), {"seg": 1.0, "depth": 1.0}, warmup_steps=10)

    References:
      Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective optimization*,
      2012; Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018.
    """
    _check_iterations("iterations", iterations)
    return _rule(
        "mgda_rule", lambda g, m: solvers.mgda_from_gramian(g, iterations=iterations, mask=m)
    )


@preset
def mgda_weights(
    base_weights: PyTree, *, iterations: int = solvers.QP_ITERATIONS, **guards: Any
) -> LossWeighting:
    """MGDA (Désidéri 2012; Sener & Koltun 2018) as a weighting: the min-norm aggregate.

    Runs bare by default (no warmup, cooling, stability gate, rollback, change limit or bounds;
    non-finite inputs are still skipped); any setting of :func:`adaptive_optax.guarded` can be
    passed through ``guards``, ``every=k`` included. See :func:`adaptive_optax.mgda_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term: the method balances the
        gradients of ``base_i * L_i``.
      iterations: interior-point iterations.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"`` (computed by
      :func:`adaptive_optax.weight_gradients`, or passed as ``grad_stats={"gramian": G}``).

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.mgda_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.6, 0.4)

    References:
      Sener & Koltun, NeurIPS 2018; TorchJD ``MGDAWeighting``.
    """
    return bare(mgda_rule(iterations=iterations), base_weights, guards)


# ------------------------------------------------------------------------ UPGrad, DualProj


def upgrad_rule(*, reg_eps: float = 1e-4, iterations: int = solvers.QP_ITERATIONS) -> Rule:
    """UPGrad: project each gradient onto the dual cone of all gradients, and average.

    With ``k`` finite terms, each ``b_i g_i / k`` is projected onto ``{d : <g_j, d> >= 0 for
    all j}``, and the projections are summed; the weights ``w`` solve, row by row, ``v_i =
    argmin_v v^T G_b v`` s.t. ``v >= e_i / k`` (Proposition 1 of Quinton & Rey), ``w = sum_i
    v_i``, on ``G_b / trace(G_b) + reg_eps I`` (``G_b = D_b G D_b``) as TorchJD does. The
    loss weight is ``b_i w_i``. The aggregate conflicts with no term (up to ``reg_eps``), and
    with equal base weights it is TorchJD's ``UPGrad()``; the base weights act as TorchJD's
    preference vector (``pref_vector = b / k``). Solved in-graph by an interior-point method,
    where TorchJD calls quadprog on the host.

    Recommended guards: none for the guarantee (see :func:`adaptive_optax.mgda_rule`);
    ``every=k`` to amortise the ``n`` small QPs.

    Args:
      reg_eps: ridge added to the trace-normalised Gramian (>= 0).
      iterations: interior-point iterations (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.upgrad_rule(), {"seg": 1.0, "depth": 1.0}, warmup_steps=10)

    References:
      Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024
      (arXiv:2406.16232), section 3; TorchJD ``UPGradWeighting``.
    """
    _check_reg_eps(reg_eps)
    _check_iterations("iterations", iterations)
    return _rule(
        "upgrad_rule",
        lambda g, m: solvers.upgrad_from_gramian(g, reg_eps=reg_eps, iterations=iterations, mask=m),
    )


@preset
def upgrad_weights(
    base_weights: PyTree,
    *,
    reg_eps: float = 1e-4,
    iterations: int = solvers.QP_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """UPGrad (Quinton & Rey 2024) as a weighting: the average of the projected gradients.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``. See :func:`adaptive_optax.upgrad_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term: the method balances the
        gradients of ``base_i * L_i``.
      reg_eps: ridge added to the trace-normalised Gramian.
      iterations: interior-point iterations.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.upgrad_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 3), round(float(weights["b"]), 3)  # TorchJD: 1.1109, 0.7894
      (1.111, 0.789)

    References:
      Quinton & Rey, 2024; TorchJD ``UPGradWeighting``.
    """
    rule = upgrad_rule(reg_eps=reg_eps, iterations=iterations)
    return bare(rule, base_weights, guards)


def dualproj_rule(*, reg_eps: float = 1e-4, iterations: int = solvers.QP_ITERATIONS) -> Rule:
    """DualProj: project the mean gradient onto the dual cone of the gradients.

    ``w = argmin_v v^T G_b v`` s.t. ``v >= 1 / k`` (``k`` finite terms, ``G_b = D_b G D_b``,
    regularised as in :func:`adaptive_optax.upgrad_rule`): the weights of the projection of
    ``sum_i b_i g_i / k`` onto ``{d : <g_j, d> >= 0 for all j}`` (GEM's projection, in
    TorchJD's dual form). The loss weight is ``b_i w_i``; the aggregate conflicts with no term.

    Recommended guards: as for :func:`adaptive_optax.upgrad_rule`.

    Args:
      reg_eps: ridge added to the trace-normalised Gramian (>= 0).
      iterations: interior-point iterations (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.dualproj_rule(), {"seg": 1.0, "depth": 1.0})

    References:
      Lopez-Paz & Ranzato, *Gradient Episodic Memory for Continual Learning*, NeurIPS 2017;
      TorchJD ``DualProjWeighting``.
    """
    _check_reg_eps(reg_eps)
    _check_iterations("iterations", iterations)
    return _rule(
        "dualproj_rule",
        lambda g, m: solvers.dualproj_from_gramian(
            g, reg_eps=reg_eps, iterations=iterations, mask=m
        ),
    )


@preset
def dualproj_weights(
    base_weights: PyTree,
    *,
    reg_eps: float = 1e-4,
    iterations: int = solvers.QP_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """DualProj (GEM's projection, Lopez-Paz & Ranzato 2017) as a weighting.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``. See :func:`adaptive_optax.dualproj_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term: the method balances the
        gradients of ``base_i * L_i``.
      reg_eps: ridge added to the trace-normalised Gramian.
      iterations: interior-point iterations.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.dualproj_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 3), round(float(weights["b"]), 3)  # TorchJD: 0.6109, 0.5
      (0.611, 0.5)

    References:
      Lopez-Paz & Ranzato, NeurIPS 2017; TorchJD ``DualProjWeighting``.
    """
    rule = dualproj_rule(reg_eps=reg_eps, iterations=iterations)
    return bare(rule, base_weights, guards)


# ----------------------------------------------------------------------------------- IMTL-G


def imtl_g_rule() -> Rule:
    """IMTL-G: the aggregate has the same projection on every unit gradient.

    Closed form (TorchJD's, which allows linearly dependent gradients): ``v = pinv(G_b)
    sqrt(diag(G_b))``, ``w = v / sum(v)`` with ``G_b = D_b G D_b``; the loss weight is
    ``b_i w_i``. The method is invariant to each term's gradient scale, so the base weights
    change only the length of the aggregate, not its direction. IMTL-G gives a negative
    weight to a term whose gradient is much longer than another's and well aligned with it;
    the weights of this library are non-negative, and the guards clip such a weight to 0 (or
    to the lower bound): a departure from the method, which the toy benchmark of MEASURED.md
    shows.

    Recommended guards: ``every=k`` to amortise the eigendecomposition; bounds if a weight
    should never reach 0.

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.imtl_g_rule(), {"seg": 1.0, "depth": 1.0})

    References:
      Liu et al., *Towards Impartial Multi-task Learning*, ICLR 2021; TorchJD
      ``IMTLGWeighting``.
    """
    return _rule("imtl_g_rule", lambda g, m: solvers.imtl_g_from_gramian(g, mask=m))


@preset
def imtl_g_weights(base_weights: PyTree, **guards: Any) -> LossWeighting:
    """IMTL-G (Liu et al. 2021) as a weighting: equal projections on the unit gradients.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``. See :func:`adaptive_optax.imtl_g_rule` (negative weights are clipped to 0).

    Args:
      base_weights: a pytree of positive floats, one per loss term.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.imtl_g_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.5923, 0.4077)

    References:
      Liu et al., ICLR 2021; TorchJD ``IMTLGWeighting``.
    """
    return bare(imtl_g_rule(), base_weights, guards)


# ------------------------------------------------------------------------------ Aligned-MTL


def aligned_mtl_rule(*, scale_mode: Literal["min", "median", "rmse"] = "min") -> Rule:
    """Aligned-MTL: align the principal components of the gradients, then combine them.

    With ``G_b = D_b G D_b = V diag(lambda) V^T`` restricted to its ``r`` eigenvalues above
    ``n * eps * lambda_max``: ``w = sqrt(s) V diag(lambda)^(-1/2) V^T 1 / k`` (``k`` finite
    terms), where ``s`` is the smallest kept eigenvalue (``"min"``, the authors' choice), their
    lower median (``"median"``) or their mean (``"rmse"``), as in TorchJD. The loss weight is
    ``b_i w_i``. A negative ``w_i`` is clipped to 0 by the guards (the library's weights are
    non-negative), a departure from the method.

    Recommended guards: as for :func:`adaptive_optax.imtl_g_rule`.

    Args:
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.aligned_mtl_rule(), {"seg": 1.0, "depth": 1.0})

    References:
      Senushkin et al., *Independent Component Alignment for Multi-Task Learning*, CVPR 2023;
      TorchJD ``AlignedMTLWeighting``.
    """
    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
    return _rule(
        "aligned_mtl_rule",
        lambda g, m: solvers.aligned_mtl_from_gramian(g, scale_mode=scale_mode, mask=m),
    )


@preset
def aligned_mtl_weights(
    base_weights: PyTree,
    *,
    scale_mode: Literal["min", "median", "rmse"] = "min",
    **guards: Any,
) -> LossWeighting:
    """Aligned-MTL (Senushkin et al. 2023) as a weighting: aligned principal components.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``. See :func:`adaptive_optax.aligned_mtl_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term: the method balances the
        gradients of ``base_i * L_i``.
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.aligned_mtl_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (0.5591, 0.4083)

    References:
      Senushkin et al., CVPR 2023; TorchJD ``AlignedMTLWeighting``.
    """
    return bare(aligned_mtl_rule(scale_mode=scale_mode), base_weights, guards)


# ----------------------------------------------------------------------------------- CAGrad


def cagrad_rule(
    *,
    c: float = 0.5,
    rescale: bool = False,
    norm_eps: float = 1e-4,
    iterations: int = solvers.CAGRAD_ITERATIONS,
    qp_iterations: int = solvers.QP_ITERATIONS,
) -> Rule:
    """CAGrad: the best worst-case improvement within a ball around the mean gradient.

    On the trace-normalised ``G_b = D_b G D_b`` with ``k`` finite terms, ``g_0`` the mean of
    the ``b_i g_i`` and ``s = c ||g_0||`` (TorchJD's formulation of Algorithm 1)::

        w* = argmin_{w in simplex} <sum_i w_i b_i g_i, g_0> + s ||sum_i w_i b_i g_i||
        w  = 1/k + (s / ||sum_i w*_i b_i g_i||) w*

    and the loss weight is ``b_i w_i``. The inner problem is solved in-graph (``iterations``
    root-finding steps of ``qp_iterations`` interior-point steps each), where the authors use
    scipy and TorchJD cvxpy. ``rescale=True`` divides by ``1 + c**2`` as the authors' code
    does; TorchJD does not. The weights are 0, as in TorchJD, only where ``||J^T w*||`` is
    below ``norm_eps`` of the Gramian's scale (``sqrt(trace(G_b))``) or below its rounding
    error; gradients of disparate norms (one 3000 times shorter) still move. ``norm_eps=0``
    never stops, as the authors' code.

    Recommended guards: ``every=k`` (each solve is ``iterations`` QPs); none for the method's
    guarantee.

    Args:
      c: radius of the ball relative to ``||g_0||`` (>= 0); the authors use 0.4 to 0.5.
      rescale: divide the weights by ``1 + c**2``.
      norm_eps: relative norm below which the gradients are taken as Pareto-stationary, in
        ``[0, 1)`` (a simplex point is never longer than the longest gradient).
      iterations: root-finding steps (static, >= 1).
      qp_iterations: interior-point iterations of each QP (static, >= 1).

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.cagrad_rule(c=0.4), {"seg": 1.0, "depth": 1.0})

    References:
      Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021;
      TorchJD ``CAGradWeighting``.
    """
    config.check_number("c", c, low=0, high=jnp.inf, high_open=True)
    rescale = config.check_flag("rescale", rescale)
    config.check_number("norm_eps", norm_eps, low=0, high=1, high_open=True)
    _check_iterations("iterations", iterations)
    _check_iterations("qp_iterations", qp_iterations)
    return _rule(
        "cagrad_rule",
        lambda g, m: solvers.cagrad_from_gramian(
            g,
            c=c,
            rescale=rescale,
            norm_eps=norm_eps,
            iterations=iterations,
            qp_iterations=qp_iterations,
            mask=m,
        ),
    )


@preset
def cagrad_weights(
    base_weights: PyTree,
    *,
    c: float = 0.5,
    rescale: bool = False,
    norm_eps: float = 1e-4,
    iterations: int = solvers.CAGRAD_ITERATIONS,
    qp_iterations: int = solvers.QP_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """CAGrad (Liu et al. 2021) as a weighting: conflict-averse gradient descent.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``. See :func:`adaptive_optax.cagrad_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term: the method balances the
        gradients of ``base_i * L_i``.
      c: radius of the ball relative to the mean gradient's norm.
      rescale: divide the weights by ``1 + c**2``.
      norm_eps: relative norm below which the gradients are taken as Pareto-stationary.
      iterations: root-finding steps.
      qp_iterations: interior-point iterations of each QP.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.cagrad_weights({"a": 1.0, "b": 1.0}, c=0.5)
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 3), round(float(weights["b"]), 3)  # TorchJD: 0.7041, 0.5
      (0.704, 0.5)

    References:
      Liu et al., NeurIPS 2021; TorchJD ``CAGradWeighting``.
    """
    rule = cagrad_rule(
        c=c, rescale=rescale, norm_eps=norm_eps, iterations=iterations, qp_iterations=qp_iterations
    )
    return bare(rule, base_weights, guards)


# ----------------------------------------------------------------------------------- PCGrad


def pcgrad_rule(*, seed: int | None = 0) -> Rule:
    """PCGrad: project away conflicts, one gradient after another, and sum.

    For each term ``i``, ``h_i = b_i g_i``, then for each other term ``j`` in turn: if
    ``<h_i, g_j> < 0``, ``h_i -= <h_i, g_j> / ||g_j||^2 g_j``. The aggregate is ``sum_i h_i``;
    tracking each ``h_i`` by its coefficients on the gradients needs only the Gramian, and
    ``w`` are those coefficients summed (TorchJD's scale: the sum, as the authors). The loss
    weight is ``b_i w_i``. Terms with a zero gradient are never projected on.

    With ``seed`` an int, each term visits the others in its own random order at every step,
    as the authors (``random.shuffle``) and TorchJD (``torch.randperm``) do, drawn from a key
    kept in the state: runs are reproducible, resumable from a checkpoint and identical on
    every replica. With ``seed=None`` the order is the terms' leaf order (deterministic, not
    permutation-invariant for three terms or more; the order is irrelevant for two).

    Recommended guards: none needed; ``every=k`` changes the method (the weights of a past
    step then weight the current gradients).

    Args:
      seed: seed of the random orders, or None for the fixed order.

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"gramian"``, with state
      ``PCGradState`` (an empty tuple with ``seed=None``).

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.pcgrad_rule(seed=1), {"seg": 1.0, "depth": 1.0})

    References:
      Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020; TorchJD
      ``PCGradWeighting``.
    """
    if seed is None:
        return _rule("pcgrad_rule", lambda g, m: solvers.pcgrad_from_gramian(g, mask=m))
    config.check_number("seed", seed, integer=True, static=True)

    def init(base_weights: chex.Array) -> PCGradState:
        del base_weights
        return PCGradState(jax.random.key_data(jax.random.key(seed)))

    def propose(signals: Signals, weights, base_weights, state: PCGradState):
        gramian, base, _ = _scaled_gramian(signals, base_weights, "pcgrad_rule")
        key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
        w = solvers.pcgrad_from_gramian(gramian, key=draw, mask=signals.finite)
        return _proposal(signals, weights, base * w), PCGradState(jax.random.key_data(key))

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)


@preset
def pcgrad_weights(base_weights: PyTree, *, seed: int | None = 0, **guards: Any) -> LossWeighting:
    """PCGrad (Yu et al. 2020) as a weighting: gradient surgery, random orders in the state.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``. See :func:`adaptive_optax.pcgrad_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term: the method balances the
        gradients of ``base_i * L_i``.
      seed: seed of the random orders, or None for the fixed leaf order.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.pcgrad_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (2.2222, 1.5789)

    References:
      Yu et al., NeurIPS 2020; TorchJD ``PCGradWeighting``.
    """
    return bare(pcgrad_rule(seed=seed), base_weights, guards)


# ----------------------------------------------------------------------------------- ConFIG


def config_rule() -> Rule:
    """ConFIG: the direction equally aligned with every unit gradient.

    With ``u_i = g_i / ||g_i||`` the unit gradients of the ``k`` finite terms, ConFIG takes
    ``d = pinv(U) 1`` and the aggregate ``(sum_i <b_i g_i, d / ||d||>) d / ||d||``, written
    as weights on the gradients from the Gramian alone (``pinv(U) = U^T pinv(U U^T)``). The
    loss weight is ``b_i w_i``. The direction does not depend on the gradients' scales, so the
    base weights set only its length: the base-weighted sum of the projections. A negative
    weight (possible for three terms or more) is clipped to 0 by the guards, a departure from
    the method.

    Recommended guards: as for :func:`adaptive_optax.imtl_g_rule`.

    Returns:
      A stateless :class:`adaptive_optax.Rule` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.config_rule(), {"pde": 1.0, "bc": 1.0})

    References:
      Liu et al., *ConFIG: Towards Conflict-free Training of Physics Informed Neural
      Networks*, ICLR 2025 (arXiv:2408.11104); TorchJD ``ConFIG``.
    """
    return _rule("config_rule", lambda g, m: solvers.config_from_gramian(g, mask=m))


@preset
def config_weights(base_weights: PyTree, **guards: Any) -> LossWeighting:
    """ConFIG (Liu et al. 2025) as a weighting: conflict-free, equally aligned updates.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``. See :func:`adaptive_optax.config_rule`.

    Args:
      base_weights: a pytree of positive floats, one per loss term.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.config_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> # the aggregate (-4 w_a + 6 w_b, w_a + w_b, w_a + w_b): TorchJD's (0.1588, 2.0706, ...)
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)
      (1.2265, 0.8441)

    References:
      Liu et al., ICLR 2025; TorchJD ``ConFIG``.
    """
    return bare(config_rule(), base_weights, guards)


# --------------------------------------------------------------------------------- Nash-MTL


def nash_mtl_rule(
    *,
    max_norm: float | None = None,
    reg_eps: float = 1e-5,
    iterations: int = solvers.NASH_ITERATIONS,
) -> Rule:
    """Nash-MTL: the Nash bargaining solution, ``alpha > 0`` with ``G alpha = 1 / alpha``.

    The direction ``d = sum_i alpha_i g_i`` maximises ``sum_i log <g_i, d>`` on a ball (up to
    scale); ``alpha`` is the unique minimiser of ``1/2 a^T G a - sum_i log a_i``, found by
    damped Newton (``iterations`` steps) on the unit-diagonal Gramian, warm-started from the
    previous step's ``alpha`` (kept in the state), where the authors run up to 20 cvxpy
    solves. Rescaling a term's gradient rescales its ``alpha`` inversely, so the loss weight
    ``b_i alpha_i(D_b G D_b)`` equals ``alpha_i(G)``: the base weights have no effect on
    Nash-MTL. ``max_norm`` rescales ``alpha`` so that ``||sum_i alpha_i g_i|| <= max_norm``,
    as the authors' gradient clipping (``max_norm=1.0`` there and in TorchJD; default here:
    none). When no solution exists (a zero gradient, or zero in the gradients' conic hull)
    the previous ``alpha`` is kept (ones at first), as TorchJD does; ``reg_eps`` keeps the
    solver bounded there and detects it.

    Recommended guards: ``every=k`` as the authors' ``update_weights_every``; ``max_weight``
    if a vanishing gradient should not get a huge weight (``alpha_i`` grows like
    ``1 / ||g_i||``).

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
      Navon et al., *Multi-Task Learning as a Bargaining Game*, ICML 2022
      (arXiv:2202.01017); TorchJD ``NashMTL``.
    """
    if max_norm is not None:
        config.check_number("max_norm", max_norm, low=0, low_open=True, high=jnp.inf)
    _check_reg_eps(reg_eps)
    _check_iterations("iterations", iterations)

    def init(base_weights: chex.Array) -> NashMTLState:
        return NashMTLState(jnp.ones(base_weights.shape, float_dtype(base_weights)))

    def propose(signals: Signals, weights, base_weights, state: NashMTLState):
        gramian, _, unit = _scaled_gramian(signals, base_weights, "nash_mtl_rule")
        # alpha(D_u G D_u) = alpha(G) / u: warm-start in those units, and back.
        start = state.alpha.astype(unit.dtype) / unit
        scaled = solvers.nash_mtl_from_gramian(
            gramian,
            init=start,
            max_norm=max_norm,
            reg_eps=reg_eps,
            iterations=iterations,
            mask=signals.finite,
        )
        alpha = unit * scaled
        new_state = NashMTLState(jnp.where(signals.finite, alpha, state.alpha))
        return _proposal(signals, weights, alpha), new_state

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)


@preset
def nash_mtl_weights(
    base_weights: PyTree,
    *,
    max_norm: float | None = None,
    reg_eps: float = 1e-5,
    iterations: int = solvers.NASH_ITERATIONS,
    **guards: Any,
) -> LossWeighting:
    """Nash-MTL (Navon et al. 2022) as a weighting: the Nash bargaining solution.

    Runs bare by default; any setting of :func:`adaptive_optax.guarded` can be passed through
    ``guards``, ``every=k`` as the authors' ``update_weights_every``. See
    :func:`adaptive_optax.nash_mtl_rule` (the base weights have no effect on this method).

    Args:
      base_weights: a pytree of positive floats, one per loss term.
      max_norm: optional bound on the aggregate's norm, or None.
      reg_eps: ridge added to the unit-diagonal Gramian.
      iterations: Newton steps.
      **guards: keyword settings of :func:`adaptive_optax.guarded`.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.nash_mtl_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> weights, state = weighting.update(
      ...     {"a": 1.0, "b": 1.0}, weighting.init(), grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)  # G w = 1 / w
      (0.5914, 0.4071)

    References:
      Navon et al., ICML 2022; TorchJD ``NashMTL``.
    """
    rule = nash_mtl_rule(max_norm=max_norm, reg_eps=reg_eps, iterations=iterations)
    return bare(rule, base_weights, guards)
