"""Flax NNX: adaptive loss weights in the optimiser's chain, losses passed to ``update``.

A two-head network fits two regression targets; ``ao.weight_gradients`` weights the per-term
gradients inside ``nnx.Optimizer``, which forwards ``losses=`` to the optax chain. The optimiser
after it is wrapped in ``ao.apply_if_finite``, so that a batch whose loss or gradient is NaN/Inf
changes neither the parameters nor the optimiser state (the guards protect only the weights).

Run it: ``python -m examples.flax_nnx``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import adaptive_optax as ao

BASE_WEIGHTS = {"sine": 1.0, "product": 0.5}


class TwoHeads(nnx.Module):
    """A shared trunk and one linear head per target."""

    def __init__(self, rngs: nnx.Rngs, width: int = 32):
        self.trunk = nnx.Linear(2, width, rngs=rngs)
        self.sine = nnx.Linear(width, 1, rngs=rngs)
        self.product = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.trunk(x))
        return self.sine(h)[:, 0], self.product(h)[:, 0]


def make_data(n: int = 256, seed: int = 0):
    x = jax.random.uniform(jax.random.key(seed), (n, 2), minval=-1.0, maxval=1.0)
    return x, jnp.sin(3.0 * x[:, 0]), x[:, 0] * x[:, 1]


def losses_fn(model: TwoHeads, x, y_sine, y_product) -> dict:
    sine, product = model(x)
    return {
        "sine": jnp.mean((sine - y_sine) ** 2),
        "product": jnp.mean((product - y_product) ** 2),
    }


def make_optimizer(model: TwoHeads, learning_rate: float = 1e-2) -> nnx.Optimizer:
    weighting = ao.stable_weights(
        BASE_WEIGHTS, warmup_steps=20, cooling_period=10, min_stable_steps=2
    )
    tx = optax.chain(
        ao.weight_gradients(weighting),  # per-term gradients in, weighted gradient out
        # a NaN/Inf loss or gradient (one bad batch) reaches neither parameters nor Adam's state
        ao.apply_if_finite(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model: TwoHeads, optimizer: nnx.Optimizer, x, y_sine, y_product):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def per_term(params):
        return losses_fn(nnx.merge(graphdef, params, rest), x, y_sine, y_product)

    losses, grads = ao.per_term_grads(per_term)(params)  # {"sine": grads, ...}
    weights = ao.find_state(nnx.as_pure(optimizer.opt_state)).weights  # this step's weights
    optimizer.update(model, grads, losses=losses)
    return ao.weighted_sum(losses, weights), ao.metrics(nnx.as_pure(optimizer.opt_state))


def train(steps: int = 300, seed: int = 0) -> dict:
    """Trains the two-head model; returns per-step weighted losses and final metrics."""
    model = TwoHeads(nnx.Rngs(seed))
    optimizer = make_optimizer(model)
    x, y_sine, y_product = make_data(seed=seed)
    step = nnx.cached_partial(train_step, model, optimizer)  # skips re-flattening each call
    totals = []
    for _ in range(steps):
        total, metrics = step(x, y_sine, y_product)
        totals.append(float(total))
    return {"totals": totals, "metrics": jax.device_get(metrics)}


if __name__ == "__main__":
    result = train()
    print(f"weighted loss {result['totals'][0]:.4f} -> {result['totals'][-1]:.4f}")
    for name in BASE_WEIGHTS:
        print(f"weight/{name}: {BASE_WEIGHTS[name]} -> {result['metrics'][f'weight/{name}']:.4f}")
