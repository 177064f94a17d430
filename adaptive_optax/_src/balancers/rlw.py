"""Random loss weighting (Lin, Ye, Xu, Shi, Liu & Kwok, 2022)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import bare, float_dtype, preset, scaled_softmax
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


class RLWState(NamedTuple):
    """State of :func:`rlw_rule`.

    Attributes:
      lambdas: ``(n,)`` the last draw ``n * softmax(g)`` (1 at first): the factors the guards
        were offered, before any bound or change limit (a term whose loss was not finite keeps
        its previous one).
      key: ``uint32`` raw PRNG key data (``jax.random.key_data``) of the next draw.
    """

    lambdas: chex.Array
    key: chex.Array


def rlw_rule(*, seed: int = 0) -> Rule:
    """Random weights, drawn afresh at every step: a softmax of standard normal samples.

    At each ``update`` (RLW with normal weights, as the authors' LibMTL ``RLW.py``)::

        g ~ N(0, I_n),      lambda = softmax(g)

    and the proposed weight is ``n * lambda_i * base_i`` (the authors' weights sum to 1: a
    constant factor ``n`` on the total loss; by symmetry the expected weight is exactly the
    base weight). The draw uses a key kept in the state, split at every ``update``:
    runs are reproducible from ``seed``, a run resumed from a checkpoint draws what the
    uninterrupted run would have drawn, and every replica under ``axis_name`` draws the same
    weights. The paper also studies other distributions for ``g``; the authors' code (LibMTL)
    offers only the standard normal, and so does this rule. The losses are not read: a term
    whose loss is not finite is held at its weight by the guards.

    Recommended guards (``ao.RECOMMENDED["rlw"]``): bounds, to keep a draw from switching a
    term almost off; ``max_change`` smooths the draws into a random walk, which is no longer
    RLW.

    Args:
      seed: seed of the draws (a whole number).

    Returns:
      A :class:`adaptive_optax.Rule` with state ``RLWState``.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.rlw_rule(seed=1), {"seg": 1.0, "depth": 1.0})

    References:
      Lin, Ye, Xu, Shi, Liu & Kwok, "Reasonable Effectiveness of Random Weighting: A Litmus
      Test for Multi-Task Learning", TMLR 2022 (arXiv:2111.10603); LibMTL
      ``weighting/RLW.py``.
    """
    seed = validation.check_number("seed", seed, integer=True, static=True)

    def init(base_weights: chex.Array) -> RLWState:
        key = jax.random.key_data(jax.random.key(seed))
        return RLWState(jnp.ones(base_weights.shape, float_dtype(base_weights)), key)

    def propose(signals: Signals, weights, base_weights, state: RLWState):
        del weights
        dtype = state.lambdas.dtype
        key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
        lambdas = scaled_softmax(jax.random.normal(draw, state.lambdas.shape, dtype))
        new_state = RLWState(
            lambdas=jnp.where(signals.finite, lambdas, state.lambdas), key=jax.random.key_data(key)
        )
        return base_weights.astype(dtype) * lambdas, new_state

    return Rule(init=init, propose=propose)


@preset
def rlw_weights(base_weights: PyTree, *, seed: int = 0, **guards: Any) -> LossWeighting:
    """Random loss weighting (Lin et al. 2022) as a weighting, its key in the state.

    See :func:`adaptive_optax.rlw_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["rlw"]``.

    Args:
      seed: seed of the draws.

    Examples:
      >>> import adaptive_optax as ao
      >>> import jax, numpy as np
      >>> weighting = ao.rlw_weights({"a": 1.0, "b": 1.0, "c": 1.0}, seed=0)
      >>> weights, state = weighting.update({"a": 1.0, "b": 2.0, "c": 3.0}, weighting.init())
      >>> round(float(sum(jax.tree.leaves(weights))), 4)  # 3 softmax(g): they sum to n
      3.0
      >>> _, draw = jax.random.split(jax.random.key(0))
      >>> g = np.asarray(jax.random.normal(draw, (3,)))
      >>> bool(np.allclose(jax.tree.leaves(weights), 3 * np.exp(g) / np.exp(g).sum()))
      True
      >>> safe = ao.rlw_weights({"a": 1.0, "b": 1.0, "c": 1.0}, **ao.RECOMMENDED["rlw"])

    References:
      Lin et al., TMLR 2022 (arXiv:2111.10603).
    """
    return bare(rlw_rule(seed=seed), base_weights, guards)
