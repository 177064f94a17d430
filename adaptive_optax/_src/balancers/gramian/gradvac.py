"""GradVac: each gradient moved toward a running target of its similarity to the others;
solver, rule and preset."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, preset
from adaptive_optax._src.balancers.gramian._shared import (
    NEEDS,
    Array,
    finish,
    normalize,
    proposal,
    scaled_gramian,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals

#: TorchJD's defaults (``GradVacWeighting``) and LibMTL's.
BETA = 0.5
EPS = 1e-8
#: The default seed of the random orders.
SEED = 0


class GradVacState(NamedTuple):
    """State of :func:`gradvac_rule`.

    Attributes:
      targets: ``(n, n)`` the running targets ``phi_hat_ij`` of the cosine similarity of term
        ``i``'s (corrected) gradient with term ``j``'s (0 until seen).
      key: ``uint32`` raw PRNG key data (``jax.random.key_data``) drawing the orders; an empty
        array with ``seed=None``.
    """

    targets: chex.Array
    key: chex.Array


def _check_settings(beta, eps) -> None:
    validation.check_number("beta", beta, low=0, high=1)
    validation.check_number("eps", eps, low=0)


def gradvac_from_gramian(
    gramian,
    targets,
    *,
    beta: float = BETA,
    eps: float = EPS,
    key: Array | None = None,
    mask=None,
) -> tuple[Array, Array]:
    """GradVac: raise each gradient's similarity to every other toward a running target.

    For each term ``i``, start from ``g_i^PC = g_i`` and visit the other terms ``j`` in turn:
    with ``phi_ij`` the cosine similarity of ``g_i^PC`` and ``g_j`` and ``phi_hat_ij`` its
    target, if ``phi_ij < phi_hat_ij``::

        g_i^PC += ||g_i^PC|| (phi_hat sqrt(1 - phi**2) - phi sqrt(1 - phi_hat**2))
                  / (||g_j|| sqrt(1 - phi_hat**2) + eps) g_j

    (which sets the similarity to the target), and in every case
    ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij``, with ``eps`` also added to
    ``||g_i^PC|| ||g_j||`` in ``phi`` (clipped to ``[-1, 1]`` here, against rounding). The
    aggregate is ``sum_i g_i^PC`` (TorchJD's ``GradVacWeighting``, the authors' Algorithm 1
    on the whole model); tracking ``g_i^PC`` by its coefficients, only the Gramian is
    needed. Targets start at 0, where GradVac is
    PCGrad on its first step.

    Order convention: as :func:`adaptive_optax.gramian.pcgrad`: index order with
    ``key=None``, a random order per term with a key (TorchJD: ``torch.randperm``).
    Departure: the loop runs on the trace-normalized Gramian, so ``eps`` is relative to the
    gradients' scale (TorchJD adds it to the raw norms); the two agree unless the gradients'
    norms are near ``sqrt(eps)``. The rows and columns of the terms left out by ``mask``, and
    all targets for an invalid Gramian, keep their targets.

    Args:
      gramian: ``(K, K)`` Gramian ``J J^T``.
      targets: ``(K, K)`` the targets ``phi_hat`` (zeros at the start).
      beta: the targets' update rate, in ``[0, 1]``.
      eps: added to the denominators (``>= 0``).
      key: optional PRNG key for random orders.
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(weights, targets)``: the ``(K,)`` GradVac weights (uniform for invalid input) and the
      new ``(K, K)`` targets.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w, targets = ao.gramian.gradvac(J @ J.T, jnp.zeros((2, 2)))
      >>> np.asarray(w, np.float64).round(4).tolist()  # PCGrad's on the first step
      [2.2222, 1.5789]
      >>> np.asarray(targets, np.float64).round(4).tolist()  # beta * the cosines
      [[0.0, -0.4206], [-0.4206, 0.0]]
      >>> w, targets = ao.gramian.gradvac(J @ J.T, targets)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [1.858, 1.4064]

    References:
      Wang, Tsvetkov, Firat & Cao, *Gradient Vaccine: Investigating and Improving Multi-task
      Optimization in Massively Multilingual Models*, ICLR 2021 (arXiv:2010.05874); TorchJD
      ``GradVacWeighting``; LibMTL ``GradVac``.
    """
    _check_settings(beta, eps)
    n = normalize(gramian, mask)
    g = n.gramian
    k = g.shape[0]
    old = jnp.asarray(targets)
    if old.shape != (k, k):
        raise ValueError(f"targets must have shape ({k}, {k}), got {old.shape}")
    old = old.astype(g.dtype)
    terms = jnp.arange(k)
    if key is None:
        order = jnp.broadcast_to(terms, (k, k))
    else:
        order = jnp.argsort(jax.random.uniform(key, (k, k), g.dtype), axis=1)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))

    def row(i, order_i, phi_hats):
        def visit(t, carry):
            c, cg, phi_hats = carry
            j = order_i[t]
            live = (j != i) & n.active[i] & n.active[j]
            norm_i = jnp.sqrt(jnp.maximum(cg @ c, 0.0))
            # a cosine, clipped to [-1, 1] against the rounding of vanishing gradients
            phi = jnp.clip(cg[j] / (norm_i * norms[j] + eps), -1.0, 1.0)
            phi_hat = phi_hats[j]
            root_hat = jnp.sqrt(jnp.maximum(1.0 - phi_hat**2, 0.0))
            step = (
                norm_i
                * (phi_hat * jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0)) - phi * root_hat)
                / (norms[j] * root_hat + eps)
            )
            step = jnp.where(live & (phi < phi_hat), step, 0.0)
            c = c.at[j].add(step)
            cg = cg + step * g[j]
            phi_hats = phi_hats.at[j].set(
                jnp.where(live, (1.0 - beta) * phi_hat + beta * phi, phi_hat)
            )
            return c, cg, phi_hats

        c = jax.nn.one_hot(i, k, dtype=g.dtype)
        c, _, phi_hats = jax.lax.fori_loop(0, k, visit, (c, g[i], phi_hats))
        return c, phi_hats

    rows, new = jax.vmap(row)(terms, order, old)
    new = jnp.where(n.ok & jnp.all(jnp.isfinite(new)), new, old)
    return finish(jnp.sum(rows, axis=0), n), new


def gradvac_rule(*, beta: float = BETA, eps: float = EPS, seed: int | None = SEED) -> Rule:
    """GradVac: each gradient moved toward a running target of its similarity to the others.

    ``ao.gramian.gradvac`` on the base-scaled gradients ``h_i = b_i g_i`` (the ``k`` finite
    terms), its targets kept in the state; the loss weight is ``b_i w_i`` (the sum of the
    corrected gradients, TorchJD's and the authors' scale). With ``seed`` an int, each term
    visits the others in its own random order at every step, drawn from a key in the state
    (reproducible and resumable); with ``seed=None``, in leaf order. A term left out (not
    finite) keeps its targets.

    Recommended guards (``ao.RECOMMENDED["gradvac"]``): none, as the other Gramian methods.

    Args:
      beta: the targets' update rate, in ``[0, 1]``; the authors use 0.01 to 0.5.
      eps: added to the denominators (``>= 0``).
      seed: seed of the random orders, or None for the fixed order.

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"gramian"``, with state ``GradVacState``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.gradvac_rule(beta=0.1), {"en": 1.0, "de": 1.0})

    References:
      See ``ao.gramian.gradvac``.
    """
    _check_settings(beta, eps)
    if seed is not None:
        validation.check_number("seed", seed, integer=True, static=True)

    def init(base_weights: chex.Array) -> GradVacState:
        k = base_weights.shape[0]
        key = (
            jnp.zeros((0,), jnp.uint32)
            if seed is None
            else jax.random.key_data(jax.random.key(seed))
        )
        return GradVacState(jnp.zeros((k, k), jnp.float32), key)

    def propose(signals: Signals, weights, base_weights, state: GradVacState):
        gramian, base, _ = scaled_gramian(signals, base_weights, "gradvac_rule")
        if seed is None:
            key, draw = state.key, None
        else:
            key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
            key = jax.random.key_data(key)
        w, targets = gradvac_from_gramian(
            gramian, state.targets, beta=beta, eps=eps, key=draw, mask=signals.finite
        )
        new_state = GradVacState(targets.astype(state.targets.dtype), key)
        return proposal(signals, weights, base * w), new_state

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)


@preset
def gradvac_weights(
    base_weights: PyTree,
    *,
    beta: float = BETA,
    eps: float = EPS,
    seed: int | None = SEED,
    **guards: Any,
) -> LossWeighting:
    """GradVac (Wang et al. 2021) as a weighting: gradient vaccine, targets in the state.

    See :func:`adaptive_optax.gradvac_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["gradvac"]`` (none: run it bare).

    Args:
      beta: the targets' update rate.
      eps: added to the denominators.
      seed: seed of the random orders, or None for the fixed leaf order.

    Returns:
      A :class:`adaptive_optax.LossWeighting` needing ``"gramian"``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.gradvac_weights({"a": 1.0, "b": 1.0})
      >>> G = [[18.0, -22.0], [-22.0, 38.0]]  # gradients (-4, 1, 1) and (6, 1, 1)
      >>> state = weighting.init()
      >>> weights, state = weighting.update({"a": 1.0, "b": 1.0}, state, grad_stats={"gramian": G})
      >>> round(float(weights["a"]), 4), round(float(weights["b"]), 4)  # PCGrad's at first
      (2.2222, 1.5789)

    References:
      See ``ao.gramian.gradvac``.
    """
    return bare(gradvac_rule(beta=beta, eps=eps, seed=seed), base_weights, guards)
