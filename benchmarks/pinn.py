"""A physics-informed network on 1-D Poisson: fixed weights vs learning-rate annealing.

The problem of Wang, Teng & Perdikaris (2021, section 2.3): ``u''(x) = -C**2 sin(C x)`` on
``[0, 1]`` with ``u(0) = 0`` and ``u(1) = sin(C)``, exact solution ``u = sin(C x)``. The residual
loss is about ``C**4`` times larger than the boundary loss, so with fixed weights the residual
dominates the gradient and the boundary values (which fix the solution up to ``a + b x``) are
learned slowly. Three runs share the network, data, optimiser and seed:

- ``fixed``: weights 1 and 1;
- ``annealing``: :func:`adaptive_optax.lr_annealing_weights`, bare (the paper's algorithm);
- ``annealing+guards``: the same rule under the guards its docstring recommends (a maximum
  weight, a cooling period and rollback; see ``python -m benchmarks.failures``).

Each prints the relative L2 error of ``u`` on a fine grid. Run::

    python -m benchmarks.pinn            # the README table
    python -m benchmarks.pinn --steps 200 --seeds 1 --width 16   # a quick look
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao

BASE = {"boundary": 1.0, "residual": 1.0}


def init_mlp(key: jax.Array, width: int, depth: int) -> list[tuple[jax.Array, jax.Array]]:
    """Glorot-initialised tanh MLP from 1 input to 1 output with ``depth`` hidden layers."""
    sizes = [1] + [width] * depth + [1]
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        scale = jnp.sqrt(2.0 / (n_in + n_out))
        params.append((scale * jax.random.normal(sub, (n_in, n_out)), jnp.zeros((n_out,))))
    return params


def mlp(params, x: jax.Array) -> jax.Array:
    """The network's ``u(x)`` for a scalar ``x``."""
    h = jnp.reshape(x, (1,))
    for w, b in params[:-1]:
        h = jnp.tanh(h @ w + b)
    w, b = params[-1]
    return (h @ w + b)[0]


def losses_fn(params, x: jax.Array, c: float) -> dict[str, jax.Array]:
    """The residual and boundary losses (mean squared errors)."""
    u_xx = jax.vmap(jax.grad(jax.grad(lambda z: mlp(params, z))))(x)
    residual = jnp.mean((u_xx + c**2 * jnp.sin(c * x)) ** 2)
    ends = jnp.array([0.0, 1.0])
    u_ends = jax.vmap(lambda z: mlp(params, z))(ends)
    boundary = jnp.mean((u_ends - jnp.sin(c * ends)) ** 2)
    return {"boundary": boundary, "residual": residual}


def relative_l2(params, c: float) -> jax.Array:
    """``||u - u_exact|| / ||u_exact||`` on 1001 points of ``[0, 1]``."""
    x = jnp.linspace(0.0, 1.0, 1001)
    u = jax.vmap(lambda z: mlp(params, z))(x)
    exact = jnp.sin(c * x)
    return jnp.linalg.norm(u - exact) / jnp.linalg.norm(exact)


def weightings(interval: int) -> dict[str, ao.LossWeighting | None]:
    """The three weightings compared (``None``: fixed base weights)."""
    return {
        "fixed": None,
        "annealing": ao.lr_annealing_weights(BASE, main="residual", interval=interval),
        "annealing+guards": ao.lr_annealing_weights(
            BASE,
            main="residual",
            interval=interval,
            max_weight=1e3,
            cooling_period=interval,
            auto_rollback=True,
        ),
    }


def train(
    weighting: ao.LossWeighting | None,
    *,
    seed: int,
    steps: int,
    c: float,
    width: int,
    depth: int,
    points: int,
    learning_rate: float,
) -> tuple[float, dict[str, float]]:
    """Trains one network; returns its relative L2 error and final weights."""
    params = init_mlp(jax.random.key(seed), width, depth)
    x = jnp.linspace(0.0, 1.0, points + 2)[1:-1]
    tx = optax.adam(learning_rate)
    weight_state = (weighting or ao.legacy_weights(BASE, adapt=())).init()
    names = ("max_abs", "mean_abs")
    treedef = jax.tree.structure(BASE)

    def step(carry, _):
        params, opt_state, weight_state = carry
        term_grads, losses = jax.jacrev(lambda p: (losses_fn(p, x, c),) * 2, has_aux=True)(params)
        weights = weight_state.weights
        grads = jax.tree.map(
            lambda gb, gr: weights["boundary"] * gb + weights["residual"] * gr,
            term_grads["boundary"],
            term_grads["residual"],
        )
        if weighting is not None:
            stats = ao.gradient_statistics(term_grads, names, treedef)
            _, weight_state = weighting.update(losses, weight_state, grad_stats=stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, weight_state), None

    @jax.jit
    def run(params):
        carry = (params, tx.init(params), weight_state)
        (params, _, final_state), _ = jax.lax.scan(step, carry, None, length=steps)
        return relative_l2(params, c), final_state.weights

    error, weights = run(params)
    return float(error), {k: float(v) for k, v in weights.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--c", type=float, default=4 * np.pi, help="frequency C of sin(C x)")
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--points", type=int, default=128, help="collocation points")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--interval", type=int, default=10, help="annealing update interval")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the rows")
    args = parser.parse_args(argv)

    results: dict[str, list[float]] = {}
    print(
        f"1-D Poisson, u = sin({args.c:.4g} x); MLP {args.depth}x{args.width} tanh, Adam "
        f"{args.lr:g}, {args.steps} steps, {args.points} collocation points, "
        f"seeds 0..{args.seeds - 1}"
    )
    print(f"| {'weighting':<17} | rel. L2 error (mean over seeds) | per seed | final w_bc | time |")
    print("|---|---|---|---|---|")
    chosen = weightings(args.interval)
    if args.methods:
        chosen = {name: chosen[name] for name in args.methods.split(",")}
    for name, weighting in chosen.items():
        start = time.perf_counter()
        errors, w_bc = [], []
        for seed in range(args.seeds):
            error, weights = train(
                weighting,
                seed=seed,
                steps=args.steps,
                c=args.c,
                width=args.width,
                depth=args.depth,
                points=args.points,
                learning_rate=args.lr,
            )
            errors.append(error)
            w_bc.append(weights["boundary"])
        results[name] = errors
        per_seed = ", ".join(f"{e:.2e}" for e in errors)
        print(
            f"| {name:<17} | {np.mean(errors):.2e} | {per_seed} | {np.mean(w_bc):.3g} | "
            f"{time.perf_counter() - start:.0f} s |"
        )
    return results


if __name__ == "__main__":
    main()
