"""What the controller costs: per-step cost of ``update`` and its share of a Flax training step.

Run with ``python -m benchmarks.overhead`` (``--quick`` for a short check). Prints:

1. the step time of a jitted Flax training step (about 1M parameters, 4 loss terms, Adam),
   fixed weights against adaptive ones, as a ratio measured in one run: without clipping
   (``stable_weights`` fed the global norm, or no norm), with ``clip_by_global_norm`` (fed the
   global norm), and per-term gradients with ``weight_gradients``; each timed blocked (the host
   waits for every step) and pipelined (steps dispatched back to back, one wait per block),
   medians over interleaved blocks. This is the cost users pay;
2. the kernels of the compiled ``update``, by kind (each is a launch on a GPU);
3. for information: the per-step cost of ``update`` inside ``jax.lax.scan`` beside an almost
   empty step, ``optax.contrib.reduce_on_plateau`` and one global norm of the gradients; a
   jitted ``update`` called from Python against a trivial jitted function; compile time.
"""

from __future__ import annotations

import argparse
import collections
import re
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

    def make(clip, weighting_mode):
        """A step with fixed weights, or stable_weights fed the global norm, or fed no norm."""
        tx = optax.adam(1e-4)
        if clip:
            tx = optax.chain(optax.clip_by_global_norm(1.0), tx)

        @jax.jit
        def step(params, opt_state, weight_state):
            weights = BASE if weighting_mode == "fixed" else weight_state.weights

            def total(p):
                losses = model_losses(model, p, batch)
                return ao.weighted_sum(losses, weights), losses

            (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
            if weighting_mode != "fixed":
                norm = optax.tree.norm(grads) if weighting_mode == "norm" else None
                _, weight_state = weighting.update(losses, weight_state, grad_norms=norm)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, weight_state

        return step, (params, tx.init(params), weighting.init())

    def make_per_term(adaptive):
        first = ao.weight_gradients(weighting) if adaptive else _fixed_weight_gradients()
        tx = optax.chain(first, optax.clip_by_global_norm(1.0), optax.adam(1e-4))

        @jax.jit
        def step(params, opt_state, unused):
            losses, grads = ao.per_term_grads(lambda p: model_losses(model, p, batch))(params)
            updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
            return optax.apply_updates(params, updates), opt_state, unused

        return step, (params, tx.init(params), weighting.init())

    cases = {
        "Adam, stable_weights fed the global norm": (make(False, "fixed"), make(False, "norm")),
        "Adam, stable_weights fed no norm": (make(False, "fixed"), make(False, "no norm")),
        "clip + Adam, fed the global norm": (make(True, "fixed"), make(True, "norm")),
        "per-term grads, weight_gradients": (make_per_term(False), make_per_term(True)),
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


def interleaved_ratio(baseline, candidate, blocks, steps_per_block=1):
    """Median time per step of each, timed in alternating blocks, and their ratio.

    With ``steps_per_block=1`` every step is blocked on (the host waits for each result);
    with more, the block's steps are dispatched back to back and the host waits once at the
    end (pipelined, as a training loop that logs every few steps runs).
    """
    (f0, s0), (f1, s1) = baseline, candidate
    s0, s1 = f0(*s0), f1(*s1)  # compile
    jax.block_until_ready((s0, s1))
    times0, times1 = [], []
    for _ in range(blocks):
        for which, (f, times) in enumerate(((f0, times0), (f1, times1))):
            state = s0 if which == 0 else s1
            start = time.perf_counter()
            for _ in range(steps_per_block):
                state = f(*state)
            jax.block_until_ready(state)
            times.append((time.perf_counter() - start) / steps_per_block)
            s0, s1 = (state, s1) if which == 0 else (s0, state)
    t0, t1 = statistics.median(times0), statistics.median(times1)
    return t0, t1, t1 / t0


def kernel_count(weighting) -> dict[str, int]:
    """Instructions of the compiled ``update`` (4 terms, a global norm), by kind.

    Parameters, constants and tuples are not kernels; each ``fusion`` or other operation is
    one (on a GPU, one launch).
    """
    losses = losses_at(jnp.float32(1))
    compiled = jax.jit(weighting.update).lower(losses, weighting.init(), grad_norms=1.0).compile()
    text = compiled.as_text()
    entry = text[text.index("\nENTRY") :]
    body = entry[: entry.index("\n}")]
    kinds = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", body))
    for not_kernel in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
        kinds.pop(not_kernel, None)
    return dict(kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    args = parser.parse_args()
    scan_steps = 2_000 if args.quick else 50_000
    blocks = 6 if args.quick else 60
    per_block = 20

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}), "
        f"{jax.device_count()} device(s)"
    )
    fresh = ao.stable_weights(BASE)  # compiled first, before any other update is in a cache
    start = time.perf_counter()
    jax.jit(fresh.update).lower(losses_at(jnp.float32(1)), fresh.init(), grad_norms=1.0).compile()
    compile_seconds = time.perf_counter() - start

    n_params, cases, params = flax_steps(64)
    print(
        f"\n1. Flax training step, {n_params / 1e6:.2f}M parameters, batch 64, 4 loss terms: "
        f"fixed weights vs adaptive, median time per step over {blocks} interleaved blocks; "
        f"blocked: the host waits for every step; pipelined: {per_block} steps dispatched back "
        "to back, one wait"
    )
    for name, (baseline, candidate) in cases.items():
        n_blocks = blocks if "per-term" not in name else max(blocks // 4, 3)  # 4 x slower steps
        for mode, steps in (("blocked", 1), ("pipelined", per_block)):
            t0, t1, ratio = interleaved_ratio(baseline, candidate, n_blocks, steps)
            print(
                f"  {name:<42} {mode:<9} fixed {t0 * 1e3:7.3f} ms, adaptive {t1 * 1e3:7.3f} ms,"
                f" ratio {ratio:6.4f}"
            )

    print("\n2. The compiled update (4 terms, global norm given): kernels by kind")
    for name, weighting in (("stable_weights", fresh), ("legacy_weights", ao.legacy_weights(BASE))):
        kinds = kernel_count(weighting)
        print(f"  {name:<16} {sum(kinds.values()):3d} kernels  {kinds}")

    print("\n3. Per step inside jax.lax.scan, 4 loss terms (information)")
    stable, legacy = fresh, ao.legacy_weights(BASE)
    plateau = optax.contrib.reduce_on_plateau()
    rows = {
        "almost empty step (c + x)": scan_cost(lambda c, x: c + x, jnp.float32(0), scan_steps),
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
    grads = jax.tree.map(jnp.ones_like, params)
    rows[f"optax.tree.norm of {n_params / 1e6:.2f}M gradients"] = scan_cost(
        # the gradients ride in the carry, so XLA can neither fold nor hoist the norm
        lambda c, x: (c[0] + optax.tree.norm(jax.tree.map(lambda g: g * x, c[1])), c[1]),
        (jnp.float32(0), grads),
        max(scan_steps // 100, 50),
    )
    terms = jax.tree.structure(BASE)
    per_term = {name: grads for name in BASE}
    rows[f"Gramian of 4 x {n_params / 1e6:.2f}M per-term gradients"] = scan_cost(
        lambda c, x: (
            c[0]
            + jnp.sum(
                ao.gradient_statistics(jax.tree.map(lambda g: g * x, c[1]), ("gramian",), terms)[
                    "gramian"
                ]
            ),
            c[1],
        ),
        (jnp.float32(0), per_term),
        max(scan_steps // 500, 20),
    )
    rows[f"4 per-term norms of {n_params / 1e6:.2f}M gradients"] = scan_cost(
        lambda c, x: (
            c[0]
            + sum(
                jax.tree.leaves(
                    ao.gradient_statistics(jax.tree.map(lambda g: g * x, c[1]), ("norm",), terms)
                )
            ),
            c[1],
        ),
        (jnp.float32(0), per_term),
        max(scan_steps // 500, 20),
    )
    for name, seconds in rows.items():
        print(f"  {name:<48} {seconds * 1e6:9.3f} us")

    print("\n4. Called from Python, jitted (dispatch included; information)")
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
    print(f"  trivial jitted function (x + 1)           {t_trivial * 1e6:8.2f} us")
    print(
        f"  stable_weights.update                     {t_update * 1e6:8.2f} us "
        f"({t_update / t_trivial:5.2f} x trivial)"
    )
    print(f"\n5. Compile time of stable_weights.update (information): {compile_seconds:6.3f} s")


if __name__ == "__main__":
    main()
