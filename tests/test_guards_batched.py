"""A state batched with ``jax.vmap`` (one weighting per seed): every control and view gives
exactly what ``jax.vmap`` of it gives."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TTS_BASE, seed_controller

import adaptive_optax as ao

# 3 is the number of terms, 9 the old packed row count: both once read the wrong axis
BATCHES = [1, 2, 3, 5, 9]
STEPS = 40


@functools.cache
def weighting():
    return seed_controller(TTS_BASE, warmup_steps=5, cooling_period=3, min_stable_steps=1)


@functools.cache
def _batched_run(batch):
    """A batch of states that differ per seed: different losses, some adjusted, some not."""
    w = weighting()

    def one(seed):
        def step(state, t):
            mel = jnp.exp(0.02 * (seed % 3 - 1.0) * t) * (1.0 + 0.01 * seed)
            losses = {"mel": mel, "stop": 0.3 + 0.01 * seed, "attention": jnp.float32(0.1)}
            return w.update(losses, state, grad_norms=1.0 + seed)[1], None

        return jax.lax.scan(step, w.init(), jnp.arange(STEPS, dtype=jnp.float32))[0]

    return jax.jit(jax.vmap(one))(jnp.arange(batch, dtype=jnp.float32))


def states(batch):
    states = _batched_run(batch)
    # the seeds' weights really differ, so mixing seeds up would show
    assert batch == 1 or np.unique(np.asarray(states.weights["mel"])).size > 1
    return states


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("control", [ao.disable, ao.enable, ao.rollback, ao.metrics])
def test_controls_and_metrics_equal_their_vmap(batch, control):
    batched = states(batch)
    chex.assert_trees_all_equal(control(batched), jax.vmap(control)(batched))


@pytest.mark.parametrize("batch", [3, 9])
def test_controls_inside_a_larger_pytree(batch):
    tree = {"opt": (states(batch),), "step": jnp.zeros(batch)}
    chex.assert_trees_all_equal(ao.rollback(tree), jax.vmap(ao.rollback)(tree))
    chex.assert_trees_all_equal(ao.metrics(tree), jax.vmap(ao.metrics)(tree))


@pytest.mark.parametrize("batch", [3, 9])
def test_views_read_the_right_seed(batch):
    batched = states(batch)
    for seed in range(batch):
        one = jax.tree.map(lambda leaf, seed=seed: leaf[seed], batched)
        for field in ("weights", "previous_weights", "base_weights", "stable_steps"):
            chex.assert_trees_all_equal(
                jax.tree.map(lambda leaf, seed=seed: leaf[seed], getattr(batched, field)),
                getattr(one, field),
            )
        assert ao.metrics(batched)["weight/mel"][seed] == one.weights["mel"]


def test_two_batch_axes():
    batched = jax.tree.map(lambda leaf: leaf.reshape(3, 3, *leaf.shape[1:]), states(9))
    twice = jax.vmap(jax.vmap(ao.rollback))
    chex.assert_trees_all_equal(ao.rollback(batched), twice(batched))
    chex.assert_trees_all_equal(ao.metrics(batched), jax.vmap(jax.vmap(ao.metrics))(batched))


def test_update_and_checked_update_ask_for_vmap_on_a_batched_state():
    batched = states(3)
    losses = {name: jnp.ones(3) for name in TTS_BASE}
    for w in (weighting(), ao.checked(weighting())):
        with pytest.raises(ValueError, match=r"batch axes.*jax\.vmap"):
            w.update(losses, batched)


def test_checked_mode_on_one_seed_of_a_batch_names_the_field():
    checked = ao.checked(weighting())
    loss_mean = states(3).stats.loss_mean.at[2, 1].set(jnp.nan)
    bad = states(3)._replace(stats=states(3).stats._replace(loss_mean=loss_mean))
    losses = {name: 1.0 for name in TTS_BASE}
    _, new = checked.update(losses, jax.tree.map(lambda leaf: leaf[0], bad))
    assert int(new.step) == STEPS + 1
    with pytest.raises(AssertionError, match=r"AdaptiveState\.stats\.loss_mean"):
        checked.update(losses, jax.tree.map(lambda leaf: leaf[2], bad))
