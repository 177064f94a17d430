"""Flax linen: a ``TrainState`` whose optimiser state carries the weighting state.

Linen's ``TrainState.apply_gradients`` does not forward extra arguments to ``tx.update``, so
the step calls ``ao.apply_gradients(state, grads=..., losses=...)``, which does the same update
and passes ``losses=`` on to ``ao.weight_gradients`` and ``ao.apply_if_finite``. The latter wraps
the optimiser so that a batch whose loss or gradient is NaN/Inf changes neither ``params`` nor
``opt_state`` (the guards protect only the weights); ``step`` still counts it.

Do not write ``state.apply_gradients(grads=grads, losses=losses)``: linen calls ``tx.update``
without ``losses=`` (it hands its keyword arguments to ``.replace`` afterwards), and
``ao.weight_gradients`` raises ``ValueError: weight_gradients needs this step's losses ...
With a Flax linen TrainState, call ao.apply_gradients(state, grads=grads, losses=losses)``.

Run it: ``python -m examples.flax_linen``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import adaptive_optax as ao

BASE_WEIGHTS = {"sine": 1.0, "product": 0.5}


class TwoHeads(nn.Module):
    """A shared trunk and one linear head per target."""

    width: int = 32

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(self.width, name="trunk")(x))
        return nn.Dense(1, name="sine")(h)[:, 0], nn.Dense(1, name="product")(h)[:, 0]


def make_data(n: int = 256, seed: int = 0):
    x = jax.random.uniform(jax.random.key(seed), (n, 2), minval=-1.0, maxval=1.0)
    return x, jnp.sin(3.0 * x[:, 0]), x[:, 0] * x[:, 1]


def create_state(seed: int = 0, learning_rate: float = 1e-2) -> train_state.TrainState:
    model = TwoHeads()
    params = model.init(jax.random.key(seed), jnp.zeros((1, 2)))
    weighting = ao.stable_weights(
        BASE_WEIGHTS, warmup_steps=20, cooling_period=10, min_stable_steps=2
    )
    tx = optax.chain(
        ao.weight_gradients(weighting),  # per-term gradients in, weighted gradient out
        # a NaN/Inf loss or gradient (one bad batch) reaches neither parameters nor Adam's state
        ao.apply_if_finite(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))),
    )
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


@jax.jit
def train_step(state: train_state.TrainState, x, y_sine, y_product):
    def per_term(params):
        sine, product = state.apply_fn(params, x)
        return {
            "sine": jnp.mean((sine - y_sine) ** 2),
            "product": jnp.mean((product - y_product) ** 2),
        }

    losses, grads = ao.per_term_grads(per_term)(state.params)  # {"sine": grads, ...}
    total = ao.weighted_sum(losses, ao.find_state(state).weights)  # this step's weights
    state = ao.apply_gradients(state, grads=grads, losses=losses)  # not state.apply_gradients
    return state, total, ao.metrics(state)


def train(steps: int = 300, seed: int = 0) -> dict:
    """Trains the two-head model; returns per-step weighted losses, final metrics and state."""
    state = create_state(seed)
    x, y_sine, y_product = make_data(seed=seed)
    totals = []
    for _ in range(steps):
        state, total, metrics = train_step(state, x, y_sine, y_product)
        totals.append(float(total))
    return {"totals": totals, "metrics": jax.device_get(metrics), "state": state}


if __name__ == "__main__":
    result = train()
    print(f"weighted loss {result['totals'][0]:.4f} -> {result['totals'][-1]:.4f}")
    for name in BASE_WEIGHTS:
        print(f"weight/{name}: {BASE_WEIGHTS[name]} -> {result['metrics'][f'weight/{name}']:.4f}")
