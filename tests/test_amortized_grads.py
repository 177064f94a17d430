"""ao.amortized_grads: the per-term step on the steps that recompute the weights, one gradient
of the weighted loss with the held weights on the others; one compilation; non-finite inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao

BASE = {"a": 1.0, "b": 0.5, "c": 2.0}

WEIGHTINGS = {
    "upgrad": lambda: ao.upgrad_weights(BASE),
    "mgda": lambda: ao.mgda_weights(BASE),
    "config": lambda: ao.config_weights(BASE),
    "nash_mtl": lambda: ao.nash_mtl_weights(BASE),
    "pcgrad": lambda: ao.pcgrad_weights(BASE),
    "encodec": lambda: ao.encodec_weights(BASE),  # a gradient-norm method
    "gradnorm": lambda: ao.gradnorm_weights(BASE),  # a gradient-norm method
}


def init_params(key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "trunk": {"w": jax.random.normal(k1, (3, 5)) / 2, "b": jnp.zeros(5)},
        "heads": {t: jax.random.normal(k, (5,)) for t, k in zip(BASE, (k2, k3, k1), strict=True)},
    }


def losses_fn(params, x):
    z = jnp.tanh(x @ params["trunk"]["w"] + params["trunk"]["b"])
    targets = {"a": x[:, 0], "b": -x[:, 1], "c": jnp.sin(x[:, 2])}
    return {t: jnp.mean((z @ params["heads"][t] - targets[t]) ** 2) for t in BASE}


X = jax.random.normal(jax.random.key(7), (4, 3))


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), strict=True)


def reference_steps(weighting):
    """The per-term step and the held-weights step, each jitted on its own."""
    combine = ao.weight_gradients(weighting)

    @jax.jit
    def per_term_step(weighting_state, params, x):
        losses, grads = ao.per_term_grads(losses_fn)(params, x)
        state = ao.WeightGradientsState(weighting_state=weighting_state, replicas_differ=0)
        combined, state = combine.update(grads, state, params, losses=losses)
        return losses, combined, state.weighting_state

    @jax.jit
    def held_step(weights, params, x):
        def total(params):
            losses = losses_fn(params, x)
            return ao.weighted_sum(losses, weights), losses

        (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
        return losses, grads

    return per_term_step, held_step


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_recompute_steps_equal_the_per_term_step_and_others_one_grad_of_the_held_weights(name):
    weighting = WEIGHTINGS[name]()
    every = 3
    amortized = ao.amortized_grads(losses_fn, weighting, every=every)
    per_term_step, held_step = reference_steps(weighting)
    update = jax.jit(amortized.update)
    state, params = amortized.init(), init_params()
    for step in range(2 * every + 1):
        losses, grads, new_state = update(state, params, X)
        if step % every == 0:  # steps 1, 1 + every, ...: the K per-term gradients
            ref_losses, ref_grads, ref_inner = per_term_step(state.weighting_state, params, X)
            assert_trees_equal(new_state.weighting_state, ref_inner)
            assert int(new_state.weighting_state.step) == step // every + 1
        else:  # one backward pass of the weighted loss, the weights held
            ref_losses, ref_grads = held_step(state.weighting_state.weights, params, X)
            assert_trees_equal(new_state.weighting_state, state.weighting_state)
        assert_trees_equal(grads, ref_grads)
        assert_trees_equal(losses, ref_losses)
        assert int(new_state.step) == step + 1
        state = new_state
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert update._cache_size() == 1  # one compilation for every step


def test_every_one_is_the_per_term_step_at_every_step():
    weighting = ao.upgrad_weights(BASE)
    amortized = ao.amortized_grads(losses_fn, weighting, every=1)
    per_term_step, _ = reference_steps(weighting)
    update = jax.jit(amortized.update)
    state = amortized.init()
    for _ in range(3):
        _, grads, new_state = update(state, init_params(), X)
        _, ref_grads, ref_inner = per_term_step(state.weighting_state, init_params(), X)
        assert_trees_equal(grads, ref_grads)
        assert_trees_equal(new_state.weighting_state, ref_inner)
        state = new_state


@pytest.mark.standard_promotion  # optax's adam promotes dtypes implicitly
def test_documented_step_compiles_once_and_trains():
    weighting = ao.upgrad_weights(BASE)
    amortized = ao.amortized_grads(losses_fn, weighting, every=4)
    tx = ao.apply_if_finite(optax.adam(1e-2))

    @jax.jit
    def train_step(params, opt_state, amortized_state, x):
        losses, grads, amortized_state = amortized.update(amortized_state, params, x)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        return optax.apply_updates(params, updates), opt_state, amortized_state, losses

    params = init_params()
    opt_state, state = tx.init(params), amortized.init()
    first = None
    for _ in range(12):
        params, opt_state, state, losses = train_step(params, opt_state, state, X)
        first = sum(losses.values()) if first is None else first
    assert train_step._cache_size() == 1
    assert float(sum(losses_fn(params, X).values())) < float(first)
    assert int(state.step) == 12 and int(ao.metrics(state)["step"]) == 3
    chex.assert_tree_all_finite((params, state))


@settings(max_examples=8, deadline=None)
@given(every=st.integers(1, 4), steps=st.integers(1, 9))
def test_weighting_sees_exactly_the_recompute_steps(every, steps):
    """Property: after ``steps`` updates the weighting has been advanced ceil(steps / every)
    times, and its weights changed only on those updates."""
    amortized = ao.amortized_grads(losses_fn, ao.mgda_weights(BASE), every=every)
    update = jax.jit(amortized.update)
    state = amortized.init()
    for step in range(steps):
        _, _, new_state = update(state, init_params(step), X)
        if step % every:
            assert_trees_equal(new_state.weighting_state, state.weighting_state)
        state = new_state
    assert int(state.step) == steps
    assert int(state.weighting_state.step) == -(-steps // every)


@pytest.mark.parametrize("name", ["upgrad", "mgda", "config", "encodec"])
def test_nan_loss_is_counted_on_recompute_steps_and_held_on_the_others(name):
    weighting = WEIGHTINGS[name]()
    amortized = ao.amortized_grads(losses_fn, weighting, every=2)
    update = jax.jit(amortized.update)
    bad = X.at[0, 0].set(jnp.nan)  # NaN losses and gradients for every term
    state = amortized.init()
    _, _, state = update(state, init_params(), X)  # step 1: recompute
    held = state
    losses, grads, state = update(state, init_params(), bad)  # step 2: held weights
    assert not all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert_trees_equal(state.weighting_state, held.weighting_state)
    losses, grads, state = update(state, init_params(), bad)  # step 3: recompute
    assert int(ao.metrics(state)["nonfinite/a"]) == 1  # counted, as weight_gradients does
    assert_trees_equal(state.weighting_state.weights, held.weighting_state.weights)
    chex.assert_tree_all_finite(state)


@pytest.mark.standard_promotion  # optax's adam promotes dtypes implicitly
def test_nan_batch_on_either_kind_of_step_leaves_params_and_adam_untouched():
    amortized = ao.amortized_grads(losses_fn, ao.upgrad_weights(BASE), every=2)
    tx = ao.apply_if_finite(optax.adam(1e-2))

    @jax.jit
    def train_step(params, opt_state, amortized_state, x):
        losses, grads, amortized_state = amortized.update(amortized_state, params, x)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        return optax.apply_updates(params, updates), opt_state, amortized_state

    params = init_params()
    opt_state, state = tx.init(params), amortized.init()
    params, opt_state, state = train_step(params, opt_state, state, X)
    bad = X.at[0, 0].set(jnp.nan)
    for step in (2, 3):  # a held-weights step, then a recompute step
        new_params, new_opt_state, state = train_step(params, opt_state, state, bad)
        assert_trees_equal(new_params, params)
        assert_trees_equal(new_opt_state.inner_state, opt_state.inner_state)
        assert int(new_opt_state.total_notfinite) == step - 1
        params, opt_state = new_params, new_opt_state
    chex.assert_tree_all_finite((params, state))


def test_has_aux_and_argnums_as_in_per_term_grads():
    def with_aux(params, x):
        return losses_fn(params, x), {"mean_x": jnp.mean(x)}

    def two_args(trunk, heads, x):
        return losses_fn({"trunk": trunk, "heads": heads}, x)

    weighting = ao.upgrad_weights(BASE)
    aux = ao.amortized_grads(with_aux, weighting, every=2, has_aux=True)
    pair = ao.amortized_grads(two_args, weighting, every=2, argnums=(0, 1))
    params = init_params()
    aux_update, pair_update = jax.jit(aux.update), jax.jit(pair.update)
    aux_state, pair_state = aux.init(), pair.init()
    for _ in range(2):  # a recompute step, then a held-weights step
        (losses, extra), grads, aux_state = aux_update(aux_state, params, X)
        assert float(extra["mean_x"]) == pytest.approx(float(jnp.mean(X)))
        _, (g_trunk, g_heads), pair_state = pair_update(
            pair_state, params["trunk"], params["heads"], X
        )
        assert_trees_equal({"trunk": g_trunk, "heads": g_heads}, grads)


@pytest.mark.parametrize("every", [0, -1, 2.5, 2.0, True, "3", None, 2**40])
def test_bad_every_fails_at_construction_naming_it(every):
    with pytest.raises(ValueError, match="every"):
        ao.amortized_grads(losses_fn, ao.upgrad_weights(BASE), every=every)


def test_bad_arguments_fail_at_construction():
    weighting = ao.upgrad_weights(BASE)
    with pytest.raises(ValueError, match="fun must be callable"):
        ao.amortized_grads(None, weighting, every=2)
    with pytest.raises(ValueError, match="LossWeighting"):
        ao.amortized_grads(losses_fn, ao.upgrad_rule(), every=2)
    with pytest.raises(ValueError, match="argnums"):
        ao.amortized_grads(losses_fn, weighting, every=2, argnums="0")
    with pytest.raises(ValueError, match="has_aux"):
        ao.amortized_grads(losses_fn, weighting, every=2, has_aux=1)
    with pytest.raises(ValueError, match="AmortizedState"):
        ao.amortized_grads(losses_fn, weighting, every=2).update(weighting.init(), init_params(), X)


def test_checkpoint_resume_equals_the_uninterrupted_run():
    from flax import serialization

    amortized = ao.amortized_grads(losses_fn, ao.upgrad_weights(BASE), every=3)
    update = jax.jit(amortized.update)

    def run(state, params, steps):
        for _ in range(steps):
            _, grads, state = update(state, params, X)
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        return state, params

    straight = run(amortized.init(), init_params(), 5)
    state, params = run(amortized.init(), init_params(), 2)
    saved = serialization.to_bytes(state)
    restored = ao.restore(amortized.init(), serialization.from_bytes(amortized.init(), saved))
    assert_trees_equal(run(restored, params, 3), straight)


def test_runs_in_a_long_lax_scan():
    amortized = ao.amortized_grads(losses_fn, ao.mgda_weights(BASE), every=4)

    def body(carry, _):
        state, params = carry
        losses, grads, state = amortized.update(state, params, X)
        return (state, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)), losses

    (state, params), losses = jax.jit(lambda c: jax.lax.scan(body, c, length=50))(
        (amortized.init(), init_params())
    )
    assert int(state.step) == 50 and int(state.weighting_state.step) == 13
    chex.assert_tree_all_finite((state, params, losses))
