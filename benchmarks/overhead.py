"""What the controller costs: per-step cost of ``update`` and its share of a Flax training step.

Run with ``python -m benchmarks.overhead`` (``--quick`` for a short check). Prints:

1. the per-step cost of ``update`` for 4 terms inside ``jax.lax.scan``, beside an almost empty
   scan step, ``optax.contrib.reduce_on_plateau`` (a peer transform of the same kind) and one
   global norm of the model's gradients (the floor of any gradient-aware weighting);
2. a jitted ``update`` called from Python, against a trivial jitted function (dispatch);
3. compile time of ``update``;
4. the step time of a jitted Flax training step (about 1M parameters, 4 loss terms, Adam):
   with and without gradient clipping by global norm, fixed weights vs ``stable_weights`` fed
   the global norm; and per-term gradients with fixed weights vs ``weight_gradients``.
   Steps are interleaved and the median of many is reported, as a ratio measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import adaptive_optax as ao

BASE = {"mel": 2.5, "stop": 1.0, "attention": 0.1, "duration": 0.1}


def best_time(fn, *args, repeats=5):
    """Best wall time of ``fn(*args)`` over ``repeats`` calls, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def scan_cost(body, carry, steps):
    """Seconds per step of ``body`` (carry, x) -> carry inside a jitted scan of ``steps``."""
    xs = 1.0 + 0.1 * jnp.sin(jnp.arange(steps, dtype=jnp.float32))
    run = jax.jit(lambda c, xs: jax.lax.scan(lambda c, x: (body(c, x), None), c, xs)[0])
    return best_time(run, carry, xs) / steps


def losses_at(x):
    return {name: x * (i + 1.0) for i, name in enumerate(BASE)}


class Model(nn.Module):
    """An MLP trunk with four heads, about 1M parameters: one loss term per head."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(1024)(x))
        x = nn.relu(nn.Dense(640)(x))
        return {name: nn.Dense(64, name=name)(x) for name in BASE}


def model_losses(model, params, batch):
    outputs = model.apply(params, batch["x"])
    return {name: jnp.mean((outputs[name] - batch["y"][name]) ** 2) for name in BASE}


def flax_steps(batch_size):
    """Jitted training steps that differ only in how the loss weights are chosen."""
    model = Model()
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch_size, 256))
    batch = {
        "x": x,
        "y": {
            n: jax.random.normal(jax.random.key(i), (batch_size, 64)) for i, n in enumerate(BASE)
        },
    }
    params = model.init(key, x)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    weighting = ao.stable_weights(BASE)

    def make(clip, adaptive):
        tx = (
            optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
            if clip
            else (optax.adam(1e-4))
        )

        @jax.jit
        def step(params, opt_state, weight_state):
            weights = weight_state.weights if adaptive else BASE

            def total(p):
                losses = model_losses(model, p, batch)
                return ao.weighted_sum(losses, weights), losses

            (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
            if adaptive:
                _, weight_state = weighting.update(
                    losses, weight_state, grad_norms=optax.tree.norm(grads)
                )
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, weight_state

        return step, (params, tx.init(params), weighting.init())

    def make_per_term(adaptive):
        first = ao.weight_gradients(weighting) if adaptive else _fixed_weight_gradients()
        tx = optax.chain(first, optax.clip_by_global_norm(1.0), optax.adam(1e-4))

        @jax.jit
        def step(params, opt_state, unused):
            losses = model_losses(model, params, batch)
            grads = jax.jacrev(lambda p: model_losses(model, p, batch))(params)
            updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
            return optax.apply_updates(params, updates), opt_state, unused

        return step, (params, tx.init(params), weighting.init())

    cases = {
        "Adam, no clipping": (make(False, False), make(False, True)),
        "Adam + clip_by_global_norm": (make(True, False), make(True, True)),
        "per-term grads (jacrev) + clip + Adam": (make_per_term(False), make_per_term(True)),
    }
    return n_params, cases, params


def _fixed_weight_gradients():
    """The weighted sum of per-term gradients with the base weights: the fixed baseline."""

    def update(updates, state, params=None, **extra):
        del params, extra
        summed = jax.tree.map(
            lambda *g: sum(BASE[n] * gi for n, gi in zip(BASE, g, strict=True)),
            *[updates[n] for n in BASE],
        )
        return summed, state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def interleaved_ratio(baseline, candidate, steps):
    """Median step time of each, timed alternately, and their ratio."""
    (f0, s0), (f1, s1) = baseline, candidate
    s0, s1 = f0(*s0), f1(*s1)  # compile
    jax.block_until_ready((s0, s1))
    times0, times1 = [], []
    for _ in range(steps):
        for f, state, times in ((f0, s0, times0), (f1, s1, times1)):
            start = time.perf_counter()
            jax.block_until_ready(f(*state))
            times.append(time.perf_counter() - start)
    t0, t1 = statistics.median(times0), statistics.median(times1)
    return t0, t1, t1 / t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    args = parser.parse_args()
    scan_steps = 2_000 if args.quick else 50_000
    flax_steps_n = 10 if args.quick else 200

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    fresh = ao.stable_weights(BASE)  # compiled first, before any other update is in a cache
    start = time.perf_counter()
    jax.jit(fresh.update).lower(losses_at(jnp.float32(1)), fresh.init(), grad_norms=1.0).compile()
    compile_seconds = time.perf_counter() - start
    print("\n1. Per step inside jax.lax.scan, 4 loss terms")
    stable, legacy = ao.stable_weights(BASE), ao.legacy_weights(BASE)
    plateau = optax.contrib.reduce_on_plateau()
    empty = scan_cost(lambda c, x: c + x, jnp.float32(0), scan_steps)
    rows = {
        "almost empty step (c + x)": empty,
        "stable_weights.update, grad norm given": scan_cost(
            lambda s, x: stable.update(losses_at(x), s, grad_norms=x)[1], stable.init(), scan_steps
        ),
        "stable_weights.update, no grad norm": scan_cost(
            lambda s, x: stable.update(losses_at(x), s)[1], stable.init(), scan_steps
        ),
        "legacy_weights.update": scan_cost(
            lambda s, x: legacy.update(losses_at(x), s)[1], legacy.init(), scan_steps
        ),
        "optax.contrib.reduce_on_plateau update": scan_cost(
            lambda s, x: plateau.update(jnp.zeros(4), s, value=x)[1],
            plateau.init(jnp.zeros(4)),
            scan_steps,
        ),
    }
    n_params, cases, params = flax_steps(64)
    grads = jax.tree.map(jnp.ones_like, params)
    rows[f"optax.tree.norm of {n_params / 1e6:.2f}M gradients"] = scan_cost(
        # the gradients ride in the carry, so XLA can neither fold nor hoist the norm
        lambda c, x: (c[0] + optax.tree.norm(jax.tree.map(lambda g: g * x, c[1])), c[1]),
        (jnp.float32(0), grads),
        max(scan_steps // 100, 50),
    )
    base_cost = rows["stable_weights.update, grad norm given"]
    for name, seconds in rows.items():
        print(f"  {name:<44} {seconds * 1e6:9.3f} us  ({seconds / base_cost:6.2f} x update)")

    print("\n2. Called from Python, jitted (dispatch included)")
    update = jax.jit(stable.update)
    trivial = jax.jit(lambda x: x + 1)
    state, losses = stable.init(), losses_at(jnp.float32(1.0))

    def many_updates(state):
        for _ in range(200):
            _, state = update(losses, state, grad_norms=1.0)
        return state

    def many_trivial(x):
        for _ in range(200):
            x = trivial(x)
        return x

    t_update = best_time(many_updates, state) / 200
    t_trivial = best_time(many_trivial, jnp.float32(0)) / 200
    # the same inputs and outputs (4 losses, the state, the weights) passed through unchanged
    passthrough = jax.jit(lambda losses, state, g: (state.weights, state))

    def many_passthrough(state):
        for _ in range(200):
            _, state = passthrough(losses, state, 1.0)
        return state

    t_passthrough = best_time(many_passthrough, state) / 200
    print(f"  trivial jitted function (x + 1)           {t_trivial * 1e6:8.2f} us")
    print(
        f"  identity on update's inputs and outputs   {t_passthrough * 1e6:8.2f} us "
        f"({t_passthrough / t_trivial:5.2f} x trivial)"
    )
    print(
        f"  stable_weights.update                     {t_update * 1e6:8.2f} us "
        f"({t_update / t_trivial:5.2f} x trivial)"
    )

    print("\n3. Compile time")
    print(f"  stable_weights.update, trace + lower + compile: {compile_seconds:6.3f} s")

    print(
        f"\n4. Flax training step, {n_params / 1e6:.2f}M parameters, batch 64, 4 loss terms, "
        f"median of {flax_steps_n} interleaved steps"
    )
    for name, (baseline, candidate) in cases.items():
        t0, t1, ratio = interleaved_ratio(baseline, candidate, flax_steps_n)
        print(
            f"  {name:<40} fixed {t0 * 1e3:7.3f} ms, adaptive {t1 * 1e3:7.3f} ms, "
            f"ratio {ratio:6.4f}"
        )


if __name__ == "__main__":
    main()
