"""Data parallelism on 8 CPU devices, in a subprocess so the device count is set before JAX starts.

The losses and gradient norms are multiples of 1/64 below 64, so every sum of 8 of them, in
any order, is exact: averaged across devices (pmean) or on one device (mean), they are
bit-identical, and so must be the weighting states. The last check feeds a NaN to one device's
shard: `ao.apply_if_finite(..., axis_name=...)` must skip that step on every replica.
"""

import os
import subprocess
import sys

import pytest

STEPS = 300
N_DEVICES = 8


def test_eight_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        pytest.fail(f"8-device checks failed:\n{result.stdout}\n{result.stderr}")
    assert result.stdout.strip().endswith("all 8-device checks passed"), result.stdout


def main():
    import chex
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adaptive_optax as ao

    assert jax.device_count() == N_DEVICES, jax.devices()
    mesh = jax.make_mesh((N_DEVICES,), ("data",))
    base = {"a": 1.0, "b": 2.0, "c": 0.5}
    settings = dict(warmup_steps=10, cooling_period=5, min_stable_steps=2, variance_threshold=2.0)
    # the original controller: it starts at the base and moves on falling and rising losses
    settings |= dict(ramp_steps=0, spike_prior=None, low_ratio=0.9, toward_base=False)

    # losses[t, d, i]: step t, device d, term i; exact multiples of 1/64 below 64, with a
    # falling, a rising and an oscillating term, and per-device noise.
    rng = np.random.default_rng(0)
    t = np.arange(STEPS)[:, None, None]
    trend = np.concatenate(
        [3000 - 8 * t, 500 + 6 * t, 1500 + 400 * ((t // 25) % 2)], axis=2
    ) + rng.integers(-200, 200, (STEPS, N_DEVICES, 3))
    losses = jnp.asarray(trend / 64, jnp.float32)
    norms = jnp.asarray(rng.integers(64, 256, (STEPS, N_DEVICES, 3)) / 64, jnp.float32)

    def as_terms(vector):
        return {"a": vector[0], "b": vector[1], "c": vector[2]}

    def run(weighting, losses, norms):
        def body(state, inputs):
            step_losses, step_norms = inputs
            _, state = weighting.update(
                as_terms(step_losses), state, grad_norms=as_terms(step_norms)
            )
            return state, None

        return jax.lax.scan(body, weighting.init(), (losses, norms))[0]

    # 1. shard_map: each device sees its own losses; axis_name averages them.
    sharded = ao.stable_weights(base, axis_name="data", **settings)

    @jax.jit
    def replicas(losses, norms):
        def per_device(losses, norms):
            state = run(sharded, losses[:, 0], norms[:, 0])
            return jax.tree.map(lambda leaf: leaf[None], state)

        return jax.shard_map(per_device, mesh=mesh, in_specs=P(None, "data"), out_specs=P("data"))(
            losses, norms
        )

    batch_sharding = NamedSharding(mesh, P(None, "data"))
    global_losses = jax.device_put(losses, batch_sharding)
    global_norms = jax.device_put(norms, batch_sharding)
    stacked = jax.device_get(replicas(global_losses, global_norms))
    single = jax.jit(lambda ls, ns: run(ao.stable_weights(base, **settings), ls, ns))(
        losses.mean(axis=1), norms.mean(axis=1)
    )
    for d in range(N_DEVICES):
        chex.assert_trees_all_equal(jax.tree.map(lambda leaf, d=d: leaf[d], stacked), single)
    chex.assert_trees_all_equal_dtypes(single, sharded.init())
    adjustments = np.asarray(single.counters.adjustments)
    assert (adjustments > 0).all(), adjustments  # decisions were taken, not just held
    assert int(single.step) == STEPS
    print("shard_map: 8 replicas bit-identical to one device on averaged losses", adjustments)

    # 2. plain jit on sharded global arrays: the loss is a mean over a sharded batch; the
    # replicated state keeps its sharding and dtypes and no axis_name is needed.
    plain = ao.stable_weights(base, **settings)
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(plain.init(), replicated)

    @jax.jit
    def step(state, batch_losses, batch_norms):
        _, state = plain.update(
            as_terms(batch_losses.mean(axis=0)), state, grad_norms=as_terms(batch_norms.mean(0))
        )
        return state

    types = jax.tree.map(jax.typeof, state)
    for i in range(3):
        new = step(state, global_losses[i], global_norms[i])
        assert jax.tree.map(jax.typeof, new) == types
        for old_leaf, new_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
            assert new_leaf.sharding.is_equivalent_to(old_leaf.sharding, new_leaf.ndim)
            assert new_leaf.dtype == old_leaf.dtype
        state = new
    final = jax.jit(lambda ls, ns: run(plain, ls.mean(axis=1), ns.mean(axis=1)))(
        global_losses, global_norms
    )
    chex.assert_trees_all_equal(final, single)
    print("plain jit: sharded global arrays give the single-device state, sharding kept")

    # 3. a data-parallel training step in shard_map with weight_gradients: per-device batches,
    # per-term gradients averaged over devices, every replica's parameters and state equal.
    weighting = ao.stable_weights(base, axis_name="data", **settings)
    tx = optax.chain(ao.weight_gradients(weighting), optax.adam(1e-2))
    x = jax.random.normal(jax.random.key(0), (N_DEVICES * 16, 3))
    targets = x @ jnp.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [0.0, 1.0, 1.0]])

    def per_term(params, x, y):
        pred = x @ params
        return as_terms(jnp.mean((pred - y) ** 2, axis=0))

    @jax.jit
    def train(x, targets):
        def per_device(x, targets):
            params = jnp.zeros((3, 3))
            opt_state = tx.init(params)

            def body(carry, _):
                params, opt_state = carry
                losses = per_term(params, x, targets)
                grads = jax.lax.pmean(jax.jacrev(per_term)(params, x, targets), "data")
                updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
                return (optax.apply_updates(params, updates), opt_state), None

            carry, _ = jax.lax.scan(body, (params, opt_state), length=50)
            return jax.tree.map(lambda leaf: leaf[None], carry)

        return jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P("data"))(
            x, targets
        )

    data_sharding = NamedSharding(mesh, P("data"))
    params, opt_state = jax.device_get(
        train(jax.device_put(x, data_sharding), jax.device_put(targets, data_sharding))
    )
    for d in range(1, N_DEVICES):
        chex.assert_trees_all_equal(params[d], params[0])
        chex.assert_trees_all_equal(
            jax.tree.map(lambda leaf, d=d: leaf[d], opt_state),
            jax.tree.map(lambda leaf: leaf[0], opt_state),
        )
    assert int(ao.find_state(opt_state).step[0]) == 50
    print("weight_gradients in shard_map: replicas identical after 50 training steps")

    # 4. the README's shard_map step with ao.apply_if_finite(axis_name=...): a NaN on ONE
    # device's shard skips the step on every device. Term "a" is an L1 loss: a NaN target gives
    # a NaN loss but a finite gradient, which only the loss check (reduced over the axis) sees.
    # NaN inputs make that device's gradients, hence their pmean, NaN.
    weighting = ao.stable_weights(base, axis_name="data")
    tx = optax.chain(
        ao.weight_gradients(weighting), ao.apply_if_finite(optax.adam(1e-2), axis_name="data")
    )

    def l1_terms(params, x, y):
        error = x @ params - y
        squares = jnp.mean(error**2, axis=0)
        return {"a": jnp.mean(jnp.abs(error[:, 0])), "b": squares[1], "c": squares[2]}

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=(P(), P()))
    def guarded_step(params, opt_state, x, y):
        grads = jax.jacrev(l1_terms)(params, x, y)  # summed over devices (replicated params)
        grads = jax.tree.map(lambda g: g / jax.lax.axis_size("data"), grads)
        updates, opt_state = tx.update(grads, opt_state, params, losses=l1_terms(params, x, y))
        return optax.apply_updates(params, updates), opt_state

    def shards(tree):
        """Each device's own copy of every replicated leaf, all 8 equal."""
        copies = [
            jax.tree.map(lambda leaf, d=d: np.asarray(leaf.addressable_shards[d].data), tree)
            for d in range(N_DEVICES)
        ]
        for copy in copies[1:]:
            chex.assert_trees_all_equal(copy, copies[0])
        return copies[0]

    def kept(opt_state):
        """The optimizer state a skipped step must not touch: ao.apply_if_finite's inner state
        (the weighting state and the skip counters are meant to count the step)."""
        return shards(optax.tree.get(opt_state, "inner_state"))

    rows = slice(3 * 16, 4 * 16)  # device 3's shard
    put = lambda a: jax.device_put(a, data_sharding)  # noqa: E731
    good_x, good_y = put(x), put(targets)
    bad = {
        "nan_target": (good_x, put(targets.at[rows, 0].set(jnp.nan))),
        "nan_x": (put(x.at[5 * 16, 0].set(jnp.nan)), good_y),  # device 5's shard
    }
    params = jnp.zeros((3, 3))
    opt_state = tx.init(params)
    for _ in range(3):
        params, opt_state = guarded_step(params, opt_state, good_x, good_y)
    before = shards(params), kept(opt_state)
    for count, name in enumerate(["nan_target", "nan_x", "nan_target", "nan_x"], start=1):
        params, opt_state = guarded_step(params, opt_state, *bad[name])
        chex.assert_trees_all_equal(shards(params), before[0])
        chex.assert_trees_all_equal(kept(opt_state), before[1])
        metrics = shards(ao.metrics(opt_state))
        assert int(metrics["nonfinite/a"]) == count, (name, metrics)
        assert int(shards(optax.tree.get(opt_state, "total_notfinite"))) == count
    losses = []
    for _ in range(6):
        losses.append(float(sum(l1_terms(params, x, targets).values())))
        params, opt_state = guarded_step(params, opt_state, good_x, good_y)
    assert losses[-1] < losses[0], losses
    chex.assert_tree_all_finite(shards(params))
    print("ao.apply_if_finite in shard_map: a NaN on one shard skipped on all 8 replicas", losses)
    print("all 8-device checks passed")


if __name__ == "__main__":
    main()
