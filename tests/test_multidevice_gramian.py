"""A Gramian method under data parallelism on 4 CPU devices: what each documented path computes.

In a subprocess, so that the device count is set before JAX starts (as tests/test_multidevice.py).

1. Per-term gradients averaged over the axis before ``weight_gradients``: the weights are those
   of the Gramian of the mean gradients (one device on the global batch), every replica's
   parameters stay equal, and ``replicas_differ`` stays 0.
2. The weighting built with ``axis_name`` alone, local per-term gradients: the weights agree
   across replicas (they come from the mean of the local Gramians), but the combined updates
   differ, the parameters drift apart, and ``weight_gradients(..., axis_name=...)`` counts
   every such step in ``replicas_differ``.
"""

import os
import subprocess
import sys

import pytest

N_DEVICES = 4
STEPS = 5


def test_gramian_paths_on_four_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        pytest.fail(f"4-device checks failed:\n{result.stdout}\n{result.stderr}")
    assert result.stdout.strip().endswith("all Gramian device checks passed"), result.stdout


def main():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adaptive_optax as ao

    assert jax.device_count() == N_DEVICES, jax.devices()
    mesh = jax.make_mesh((N_DEVICES,), ("data",))
    base = {"a": 1.0, "b": 1.0, "c": 1.0}
    x = jax.random.normal(jax.random.key(0), (N_DEVICES * 8, 3))
    # Device-dependent targets: the local gradients differ between devices.
    targets = x @ jnp.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [0.0, 1.0, 1.0]])
    targets = targets + jnp.repeat(jnp.arange(N_DEVICES, dtype=jnp.float32), 8)[:, None]

    def per_term(params, x, y):
        return dict(zip("abc", jnp.mean((x @ params - y) ** 2, axis=0), strict=True))

    def run(average_grads):
        weighting = ao.upgrad_weights(base, axis_name=None if average_grads else "data")
        tx = optax.chain(ao.weight_gradients(weighting, axis_name="data"), optax.sgd(1e-2))

        def per_device(x, targets):
            # Varying parameters, so that jacrev gives each replica its local gradients, as
            # pmap and a multi-process step do (for unvarying parameters, shard_map's
            # transpose already sums the gradients over the axis).
            params = jax.lax.pcast(jnp.zeros((3, 3)), "data", to="varying")
            opt_state = tx.init(params)

            def body(carry, _):
                params, opt_state = carry
                losses = per_term(params, x, targets)
                grads = jax.jacrev(per_term)(params, x, targets)
                if average_grads:
                    grads = jax.lax.pmean(grads, "data")
                    losses = jax.lax.pmean(losses, "data")
                updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
                weights = ao.find_state(opt_state).weights
                return (optax.apply_updates(params, updates), opt_state), weights

            (params, opt_state), weights = jax.lax.scan(body, (params, opt_state), length=STEPS)
            differ = optax.tree.get(opt_state, "replicas_differ")
            return params[None], weights["a"][None], differ[None]

        sharding = NamedSharding(mesh, P("data"))
        return jax.device_get(
            jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P("data")))(
                jax.device_put(x, sharding), jax.device_put(targets, sharding)
            )
        )

    # One device on the global batch: the reference of path 1.
    weighting = ao.upgrad_weights(base)
    tx = optax.chain(ao.weight_gradients(weighting), optax.sgd(1e-2))
    params, opt_state = jnp.zeros((3, 3)), tx.init(jnp.zeros((3, 3)))
    single = []
    for _ in range(STEPS):
        losses, grads = per_term(params, x, targets), jax.jacrev(per_term)(params, x, targets)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        params = optax.apply_updates(params, updates)
        single.append(ao.find_state(opt_state).weights["a"])

    params_1, weights_1, differ_1 = run(average_grads=True)
    for d in range(N_DEVICES):
        np.testing.assert_array_equal(params_1[d], params_1[0])
        np.testing.assert_allclose(weights_1[d], single, rtol=1e-5)
    np.testing.assert_allclose(params_1[0], params, rtol=1e-5, atol=1e-6)
    assert np.all(differ_1 == 0), differ_1
    print("averaged per-term gradients: the global Gramian's weights, replicas equal, 0 counted")

    params_2, weights_2, differ_2 = run(average_grads=False)
    for d in range(N_DEVICES):
        np.testing.assert_array_equal(weights_2[d], weights_2[0])  # the weights agree ...
    assert np.abs(params_2[1] - params_2[0]).max() > 1e-3  # ... the parameters drift apart
    assert np.all(differ_2 == STEPS), differ_2  # ... and every step is counted
    print("axis_name alone: weights agree, parameters drift, every step counted")
    print("all Gramian device checks passed")


if __name__ == "__main__":
    main()
