"""ReLoBRaLo, relative loss balancing with random lookback (Bischof & Kraus, 2021)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from adaptive_optax._src import validation
from adaptive_optax._src.balancers._common import (
    bare,
    finite_or,
    float_dtype,
    preset,
    safe_divide,
    scaled_softmax,
)
from adaptive_optax._src.base import LossWeighting, PyTree, Rule, Signals


class ReLoBRaLoState(NamedTuple):
    """State of :func:`relobralo_rule`.

    Attributes:
      lambdas: ``(n,)`` the balancing factors ``lambda_i(t - 1)`` (1 at first).
      key: ``uint32`` raw PRNG key data (``jax.random.key_data``) drawing the lookback.
    """

    lambdas: chex.Array
    key: chex.Array


def relobralo_rule(
    *,
    alpha: float = 0.999,
    temperature: float = 0.1,
    expected_rho: float = 0.999,
    seed: int = 0,
) -> Rule:
    """Relative loss balancing with random lookback to the start of training.

    With ``m`` terms and temperature ``T`` (section IV of the paper)::

        bal_i(t, t') = m * exp(L_i(t) / (T L_i(t'))) / sum_j exp(L_j(t) / (T L_j(t')))
        lambda_i(t)  = alpha * (rho * lambda_i(t - 1) + (1 - rho) * bal_i(t, 0))
                       + (1 - alpha) * bal_i(t, t - 1)

    where ``rho ~ Bernoulli(expected_rho)`` is drawn once per step (the "saudade": with
    probability ``1 - expected_rho`` the history restarts from the balance relative to the
    first losses). The draw uses a key kept in the state, so runs are reproducible, resumable
    from a checkpoint and identical on every replica. The proposed weight is
    ``base_i * lambda_i(t)``. Losses are assumed positive (denominators floored at the dtype's
    tiny); in the softmax a term with a non-finite loss counts as balanced (ratio 1) and keeps
    its ``lambda``.

    Args:
      alpha: the exponential decay ``alpha`` of the history, in ``[0, 1]``.
      temperature: ``T`` (> 0).
      expected_rho: ``E[rho]``, in ``[0, 1]``.
      seed: seed of the lookback draws.

    Returns:
      A :class:`adaptive_optax.Rule` with state :class:`ReLoBRaLoState`.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.guarded(ao.relobralo_rule(seed=1), {"pde": 1.0, "bc": 1.0})

    References:
      Bischof & Kraus, "Multi-Objective Loss Balancing for Physics-Informed Deep Learning",
      2021 (arXiv:2110.09813), section IV.
    """
    alpha = validation.check_number("alpha", alpha, low=0, high=1)
    temperature = validation.check_number("temperature", temperature, low=0, low_open=True)
    expected_rho = validation.check_number("expected_rho", expected_rho, low=0, high=1)
    seed = validation.check_number("seed", seed, integer=True, static=True)

    def init(base_weights: chex.Array) -> ReLoBRaLoState:
        key = jax.random.key_data(jax.random.key(seed))
        return ReLoBRaLoState(jnp.ones(base_weights.shape, float_dtype(base_weights)), key)

    def propose(signals: Signals, weights, base_weights, state: ReLoBRaLoState):
        del weights
        finite = signals.finite
        dtype = state.lambdas.dtype
        losses = signals.losses.astype(dtype)
        initial = signals.first_loss.astype(dtype)
        previous = signals.previous_loss.astype(dtype)

        def balance(reference):
            ratio = finite_or(safe_divide(losses, temperature * reference), 1.0 / temperature)
            return scaled_softmax(jnp.where(finite, ratio, 1.0 / temperature))

        key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
        rho = jax.random.bernoulli(draw, expected_rho).astype(dtype)
        history = rho * state.lambdas + (1 - rho) * balance(initial)
        lambdas = alpha * history + (1 - alpha) * balance(previous)
        new_state = ReLoBRaLoState(
            lambdas=jnp.where(finite, lambdas, state.lambdas), key=jax.random.key_data(key)
        )
        return base_weights.astype(dtype) * new_state.lambdas, new_state

    return Rule(init=init, propose=propose)


@preset
def relobralo_weights(
    base_weights: PyTree,
    *,
    alpha: float = 0.999,
    temperature: float = 0.1,
    expected_rho: float = 0.999,
    seed: int = 0,
    **guards: Any,
) -> LossWeighting:
    """ReLoBRaLo (Bischof & Kraus 2021) as a weighting, its random lookback keyed in the state.

    See :func:`adaptive_optax.relobralo_rule` for the formula; recommended guards:
    ``ao.RECOMMENDED["relobralo"]``.

    Args:
      alpha: decay of the history.
      temperature: softmax temperature ``T``.
      expected_rho: probability of keeping the history at a step.
      seed: seed of the lookback draws.

    Examples:
      >>> import adaptive_optax as ao
      >>> weighting = ao.relobralo_weights({"pde": 1.0, "bc": 1.0}, alpha=0.5, expected_rho=1.0)
      >>> state = weighting.init()
      >>> _, state = weighting.update({"pde": 1.0, "bc": 1.0}, state)
      >>> weights, state = weighting.update({"pde": 1.0, "bc": 0.9}, state)
      >>> round(float(weights["pde"]), 4)  # 0.5 * 1 + 0.5 * 2 / (1 + e^-1)
      1.2311
      >>> safe = ao.relobralo_weights({"pde": 1.0, "bc": 1.0}, **ao.RECOMMENDED["relobralo"])

    References:
      Bischof & Kraus, 2021 (arXiv:2110.09813), section IV.
    """
    rule = relobralo_rule(
        alpha=alpha, temperature=temperature, expected_rho=expected_rho, seed=seed
    )
    return bare(rule, base_weights, guards)
