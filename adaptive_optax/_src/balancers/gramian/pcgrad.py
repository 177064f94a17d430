"""PCGrad: gradient surgery, conflicts projected away in turn; solver, rule and preset."""

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
    divide_where,
    finish,
    gramian_rule,
    normalize,
    proposal,
    scaled_gramian,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals

#: The default seed of the random orders.
SEED = 0


class PCGradState(NamedTuple):
    """State of :func:`pcgrad_rule` with random orders.

    Attributes:
      key: ``uint32`` raw PRNG key data (``jax.random.key_data``) drawing the orders.
    """

    key: chex.Array


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
      mask: optional ``(K,)`` bools, the terms to solve for (see ``ao.gramian``).

    Returns:
      ``(K,)`` PCGrad weights; uniform for invalid input.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> import adaptive_optax as ao
      >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = ao.gramian.pcgrad(J @ J.T)
      >>> np.asarray(w, np.float64).round(4).tolist()
      [2.2222, 1.5789]

    References:
      Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020; TorchJD
      ``PCGradWeighting``.
    """
    n = normalize(gramian, mask)
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
        return w.at[terms, j].add(divide_where(conflict, -inner, diag[j]))

    w = jax.lax.fori_loop(0, k, project, jnp.eye(k, dtype=g.dtype))
    return finish(jnp.sum(w, axis=0), n)


def pcgrad_rule(*, seed: int | None = SEED) -> Rule:
    """PCGrad: project away conflicts, one gradient after another, and sum.

    ``ao.gramian.pcgrad`` on the base-scaled gradients ``h_i = b_i g_i``: each loses its
    conflicting components with the other gradients, one after another, and the results are
    summed (TorchJD's scale, as the authors). The loss weight is ``b_i w_i``.

    With ``seed`` an int, each term visits the others in its own random order at every step,
    as the authors (``random.shuffle``) and TorchJD (``torch.randperm``) do, drawn from a key
    kept in the state: runs are reproducible, resumable from a checkpoint and identical on
    every replica. With ``seed=None`` the order is the terms' leaf order (deterministic, not
    permutation-invariant for three terms or more; the order is irrelevant for two).

    Recommended guards (``ao.RECOMMENDED["pcgrad"]``): none; ``every=k`` changes the method
    (the weights of a past step then weight the current gradients).

    Args:
      seed: seed of the random orders, or None for the fixed order.

    Returns:
      A :class:`adaptive_optax.Rule` needing ``"gramian"``, with state
      ``PCGradState`` (an empty tuple with ``seed=None``).

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.pcgrad_rule(seed=1), {"seg": 1.0, "depth": 1.0})

    References:
      See ``ao.gramian.pcgrad``.
    """
    if seed is None:
        return gramian_rule("pcgrad_rule", pcgrad_from_gramian)
    seed = validation.check_number("seed", seed, integer=True, static=True)

    def init(base_weights: chex.Array) -> PCGradState:
        del base_weights
        return PCGradState(jax.random.key_data(jax.random.key(seed)))

    def propose(signals: Signals, weights, base_weights, state: PCGradState):
        gramian, base, _ = scaled_gramian(signals, base_weights, "pcgrad_rule")
        key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
        w = pcgrad_from_gramian(gramian, key=draw, mask=signals.finite)
        return proposal(signals, weights, base * w), PCGradState(jax.random.key_data(key))

    return Rule(init=init, propose=propose, needs=NEEDS, per_term_base=True)


@preset
def pcgrad_weights(
    base_weights: PyTree, *, seed: int | None = SEED, **guards: Any
) -> LossWeighting:
    """PCGrad (Yu et al. 2020) as a weighting: gradient surgery, random orders in the state.

    See :func:`adaptive_optax.pcgrad_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["pcgrad"]`` (none: run it bare).

    Args:
      seed: seed of the random orders, or None for the fixed leaf order.

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
      See ``ao.gramian.pcgrad``.
    """
    return bare(pcgrad_rule(seed=seed), base_weights, guards)
