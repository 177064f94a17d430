"""Integration errors that name their fix (linen, shard_map) and the orbax checkpoint snippet."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import pytest
import test_readme
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adaptive_optax as ao

BASE = {"fit": 1.0, "smooth": 0.5}


def losses_fn(params, x):
    return {"fit": jnp.mean((x @ params - 1.0) ** 2), "smooth": jnp.sum(jnp.diff(params) ** 2)}


def make_tx(**settings):
    return optax.chain(ao.weight_gradients(ao.stable_weights(BASE, **settings)), optax.sgd(0.1))


def test_linen_apply_gradients_with_losses_points_to_ao_apply_gradients():
    """Linen's ``apply_gradients`` calls ``tx.update`` without ``losses=``: our error says why."""
    x = jnp.ones((4, 3))
    state = train_state.TrainState.create(apply_fn=None, params=jnp.ones(3), tx=make_tx())
    grads = jax.jacrev(losses_fn)(state.params, x)
    with pytest.raises(ValueError, match=r"ao\.apply_gradients\(state, grads=grads, losses="):
        state.apply_gradients(grads=grads, losses=losses_fn(state.params, x))
    state = ao.apply_gradients(state, grads=grads, losses=losses_fn(state.params, x))
    assert int(ao.find_state(state).step) == 1


def shard_map_step(tx, mesh):
    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=(P(), P()))
    def step(params, opt_state, x):
        grads = jax.jacrev(losses_fn)(params, x)  # summed over devices (replicated params)
        grads = jax.tree.map(lambda g: g / jax.lax.axis_size("data"), grads)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses_fn(params, x))
        return optax.apply_updates(params, updates), opt_state

    return step


def test_shard_map_without_axis_name_fails_on_replication():
    """Per-device losses vary over the mesh axis; without ``axis_name`` so does the state, and
    ``shard_map`` refuses to return it as replicated (the error the README quotes)."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    x = jax.device_put(jnp.ones((8, 3)), NamedSharding(mesh, P("data")))
    params = jnp.zeros(3)
    without = make_tx()
    with pytest.raises(ValueError, match="out_specs which require replication"):
        shard_map_step(without, mesh)(params, without.init(params), x)
    with_axis = make_tx(axis_name="data")
    _, opt_state = shard_map_step(with_axis, mesh)(params, with_axis.init(params), x)
    assert int(ao.find_state(opt_state).step) == 1


def test_readme_orbax_snippet_leaves_a_checkpoint_when_the_script_ends(tmp_path):
    """The README's save lines, run as a script that exits right after saving, leave a
    checkpoint that restores (orbax saves asynchronously: without ``wait_until_finished`` the
    process ends first and leaves only a temporary folder)."""
    block = next(b for b in test_readme.BLOCKS if "ocp.StandardCheckpointer" in b.code)
    lines = block.code.splitlines()
    end = next(i for i, line in enumerate(lines) if "wait_until_finished" in line)
    script = test_readme.PREAMBLE.read_text() + "\n".join(lines[: end + 1]) + "\n"
    root = pathlib.Path(__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)

    saved = [p for p in tmp_path.rglob("*") if p.is_dir() and (p / "_CHECKPOINT_METADATA").exists()]
    assert len(saved) == 1, sorted(str(p) for p in tmp_path.rglob("*"))
    assert not list(tmp_path.rglob("*orbax-checkpoint-tmp*"))
    restored = ocp.StandardCheckpointer().restore(saved[0])
    assert set(restored) == {"params", "opt_state"}


# Structure mistakes: an error at trace time that names the mistake (and the term) and the fix,
# not a raw pytree error from inside JAX or optax.
PARAMS = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}


def two_head_losses(params):
    e = jnp.ones((8, 4)) @ params["w"] + params["b"] - 1.0
    return {"fit": jnp.mean(e[:, 0] ** 2), "smooth": jnp.mean(e[:, 1] ** 2)}


def chain():
    return optax.chain(ao.weight_gradients(ao.stable_weights(BASE)), optax.adam(1e-3))


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"fit": 1.0}, r"weighted_sum: .*the weights lack terms \['smooth'\]"),
        ({"fit": 1.0, "smooth": 1.0, "kl": 1.0}, r"the weights have extra terms \['kl'\]"),
    ],
)
def test_weighted_sum_names_a_missing_or_extra_weight(weights, match):
    with pytest.raises(ValueError, match=match):
        jax.jit(ao.weighted_sum)({"fit": 1.0, "smooth": 2.0}, weights)


def test_weight_gradients_names_the_term_whose_gradient_lacks_a_leaf():
    losses, grads = ao.per_term_grads(two_head_losses)(PARAMS)
    grads["smooth"] = {"w": grads["smooth"]["w"]}
    tx = chain()
    with pytest.raises(ValueError, match=r"loss term 'smooth' .* it lacks \['b'\].*per_term_grads"):
        jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS, losses=losses)


@pytest.mark.parametrize("wrapper", ["apply_if_finite", "MultiSteps"])
def test_a_wrapper_around_weight_gradients_is_refused_with_the_pattern_to_use(wrapper):
    """The guide: ``ao.apply_if_finite`` and ``optax.MultiSteps`` go after weight_gradients."""
    if wrapper == "apply_if_finite":
        tx = ao.apply_if_finite(chain())
    else:
        tx = optax.MultiSteps(chain(), every_k_schedule=2)
    with pytest.raises(
        ValueError,
        match=rf"{wrapper} is wrapped around ao.weight_gradients.*"
        r"optax.chain\(ao.weight_gradients\(w\)",
    ):
        tx.init(PARAMS)
    if wrapper == "apply_if_finite":  # a state made without its init is refused too
        losses, grads = ao.per_term_grads(two_head_losses)(PARAMS)
        state = optax.ApplyIfFiniteState(
            jnp.zeros([], jnp.int32),
            jnp.array(True),
            jnp.zeros([], jnp.int32),
            chain().init(PARAMS),
        )
        with pytest.raises(ValueError, match="wrapped around ao.weight_gradients"):
            tx.update(grads, state, PARAMS, losses=losses)


def test_weight_gradients_given_another_optimizers_state_says_to_pass_its_own():
    losses, grads = ao.per_term_grads(two_head_losses)(PARAMS)
    tx = chain()
    with pytest.raises(ValueError, match=r"got the optimizer state ScaleByAdamState.*tx.init"):
        tx.update(grads, optax.adam(1e-3).init(PARAMS), PARAMS, losses=losses)
    alone = ao.weight_gradients(ao.stable_weights(BASE))
    with pytest.raises(ValueError, match=r"got the optimizer state None.*tx.init"):
        alone.update(grads, None, PARAMS, losses=losses)
