"""ao.weight_gradients: an optax transform of per-term gradients, under jax.jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import seed_controller

import adaptive_optax as ao

# integration with optax and flax, which promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion

BASE = {"fit": 1.0, "smooth": 0.5}
TARGET = jnp.array([1.0, -2.0, 3.0, 0.5])


def losses_fn(params):
    return {
        "fit": jnp.sum((params["w"] - TARGET) ** 2) + params["b"] ** 2,
        "smooth": jnp.sum(jnp.diff(params["w"]) ** 2),
    }


def init_params():
    return {"w": jnp.zeros(4), "b": jnp.ones([])}


def term_grads(params):
    return jax.jacrev(losses_fn)(params)


def growing(step):
    """Losses that double every step and constant per-term gradients: the rule moves up."""
    losses = {"fit": 2.0**step, "smooth": 2.0 ** (step / 2)}
    grads = {"fit": {"w": jnp.ones(4), "b": jnp.ones([])}, "smooth": {"w": -jnp.ones(4), "b": 0.0}}
    return losses, jax.tree.map(jnp.asarray, grads)


def combine(weights, grads):
    """``sum(weights[t] * grads[t])``, computed here independently of the library."""
    return jax.tree.map(
        lambda f, s: weights["fit"] * f + weights["smooth"] * s, grads["fit"], grads["smooth"]
    )


def spy(needs):
    """A weighting whose state's rule_state holds what update received (for one call)."""
    inner = seed_controller(BASE)

    def update(losses, state, *, grad_norms=None, grad_stats=None, **extra):
        weights, state = inner.update(losses, state, grad_stats=grad_stats)
        return weights, state._replace(rule_state=(grad_norms, grad_stats, extra))

    return ao.LossWeighting(inner.init, update, needs)


def test_output_is_the_weighted_sum_with_this_steps_weights():
    weighting = ao.unguarded_weights(BASE)
    tx = ao.weight_gradients(weighting)
    state = tx.init(init_params())
    update = jax.jit(tx.update)
    for step in range(4):
        losses, grads = growing(step)
        before = state.weighting_state.weights
        updates, state = update(grads, state, losses=losses)
        chex.assert_trees_all_close(updates, combine(before, grads), rtol=1e-6)
        assert int(state.weighting_state.step) == step + 1
    # the weights did move, so the test distinguishes old weights from new ones
    assert float(state.weighting_state.weights["fit"]) > BASE["fit"] * 1.5


def test_state_equals_calling_the_weighting_by_hand():
    weighting = seed_controller(BASE, warmup_steps=3, cooling_period=2, min_stable_steps=1)
    tx = ao.weight_gradients(weighting)

    @jax.jit
    def both(params, opt_state, weight_state):
        losses, grads = losses_fn(params), term_grads(params)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        norms = {name: optax.tree.norm(g) for name, g in grads.items()}
        _, weight_state = weighting.update(losses, weight_state, grad_norms=norms)
        return optax.apply_updates(params, jax.tree.map(lambda u: -0.05 * u, updates)), (
            opt_state,
            weight_state,
        )

    params, opt_state, weight_state = init_params(), tx.init(init_params()), weighting.init()
    for _ in range(40):
        params, (opt_state, weight_state) = both(params, opt_state, weight_state)
    chex.assert_trees_all_equal(opt_state.weighting_state, weight_state)
    assert int(weight_state.counters.adjustments.sum()) > 0


@pytest.mark.parametrize("needs", [(), ("norm", "max_abs")])
def test_computes_only_the_statistics_the_rule_needs(needs):
    tx = ao.weight_gradients(spy(needs))
    params = init_params()
    grads = term_grads(params)
    _, state = jax.jit(tx.update)(grads, tx.init(params), losses=losses_fn(params), other=1.0)
    grad_norms, grad_stats, extra = state.weighting_state.rule_state
    assert grad_norms is None  # the norm is an ordinary statistic, in grad_stats
    assert sorted(grad_stats or ()) == sorted(needs)
    assert extra == {}
    if needs:
        expected = {name: optax.tree.norm(g) for name, g in grads.items()}
        chex.assert_trees_all_close(grad_stats["norm"], expected)
        expected = {name: jnp.max(jnp.abs(g["w"])) for name, g in grads.items()}
        chex.assert_trees_all_close(grad_stats["max_abs"], expected)


def test_gradient_filter_restricts_statistics_not_the_sum():
    tx = ao.weight_gradients(spy(("norm", "mean_abs")), gradient_filter=lambda g: g["w"])
    params = init_params()
    grads = term_grads(params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), losses=losses_fn(params))
    _, grad_stats, _ = state.weighting_state.rule_state
    chex.assert_trees_all_close(
        grad_stats["norm"], {name: jnp.linalg.norm(g["w"]) for name, g in grads.items()}
    )
    chex.assert_trees_all_close(
        grad_stats["mean_abs"],
        {name: jnp.mean(jnp.abs(g["w"])) for name, g in grads.items()},
    )
    # the bias gradient, outside the filter, is still in the weighted sum
    assert float(updates["b"]) == pytest.approx(float(grads["fit"]["b"]) * BASE["fit"])


def test_clear_errors():
    tx = ao.weight_gradients(seed_controller(BASE))
    params = init_params()
    state = tx.init(params)
    grads, losses = term_grads(params), losses_fn(params)
    with pytest.raises(ValueError, match="losses=losses"):
        tx.update(grads, state, params)
    with pytest.raises(ValueError, match="losses must have the structure"):
        tx.update(grads, state, params, losses={"fit": 1.0})
    with pytest.raises(ValueError, match="per-term gradients keyed like the base weights"):
        tx.update(params, state, params, losses=losses)
    with pytest.raises(ValueError, match="per-term gradients"):
        tx.update({**grads, "extra": grads["fit"]}, state, params, losses=losses)
    with pytest.raises(ValueError, match="gradient_filter"):
        ao.weight_gradients(seed_controller(BASE), gradient_filter="w")


def test_chain_with_clipping_and_adam_trains_without_recompiling():
    weighting = seed_controller(BASE, warmup_steps=20, cooling_period=10, min_stable_steps=2)
    tx = optax.chain(
        ao.weight_gradients(weighting), optax.clip_by_global_norm(1.0), optax.adam(0.1)
    )

    @jax.jit
    def step(params, opt_state):
        losses, grads = losses_fn(params), term_grads(params)
        total = ao.weighted_sum(losses, ao.find_state(opt_state).weights)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses, unused=0)
        return optax.apply_updates(params, updates), opt_state, total

    params = init_params()
    opt_state = tx.init(params)
    totals = []
    for _ in range(150):
        params, opt_state, total = step(params, opt_state)
        totals.append(float(total))
    assert step._cache_size() == 1
    assert totals[-1] < 0.5 * totals[0]
    assert totals[-1] <= min(totals[:10])
    found = optax.tree.get(opt_state, "weighting_state")
    assert isinstance(found, ao.AdaptiveState)
    assert found is ao.find_state(opt_state)
    metrics = ao.metrics(opt_state)
    assert int(metrics["step"]) == 150
    assert float(metrics["weight/fit"]) == float(found.weights["fit"])
    chex.assert_tree_all_finite(opt_state)


@pytest.mark.parametrize("skip_nonfinite", [False, True])
def test_apply_if_finite_skips_the_step(skip_nonfinite):
    weighting = seed_controller(BASE, warmup_steps=0, cooling_period=0, min_stable_steps=0)
    tx = optax.chain(
        ao.weight_gradients(weighting, skip_nonfinite=skip_nonfinite),
        optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)), 3),
    )

    @jax.jit
    def step(params, opt_state, poison):
        losses, grads = losses_fn(params), term_grads(params)
        grads["smooth"] = jax.tree.map(lambda g: g * poison, grads["smooth"])
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        return optax.apply_updates(params, updates), opt_state

    params = init_params()
    opt_state = tx.init(params)
    for _ in range(5):
        params, opt_state = step(params, opt_state, 1.0)
    new_params, new_state = step(params, opt_state, jnp.nan)
    chex.assert_trees_all_equal(new_params, params)
    chex.assert_trees_all_equal(new_state[1].inner_state, opt_state[1].inner_state)
    assert int(new_state[1].total_notfinite) == 1
    old, new = opt_state[0].weighting_state, new_state[0].weighting_state
    if skip_nonfinite:
        chex.assert_trees_all_equal(new, old)
    else:
        # the weighting saw the step: it counted the non-finite term and kept its weight and
        # statistics (no adjustment to undo here)
        assert int(new.step) == int(old.step) + 1
        np.testing.assert_array_equal(new.counters.nonfinite, [0, 1])
        assert float(new.weights["smooth"]) == float(old.weights["smooth"])
        assert int(new.stats.loss_count[1]) == int(old.stats.loss_count[1])
    params, opt_state = step(new_params, new_state, 1.0)
    assert not np.array_equal(params["w"], new_params["w"])


def test_multisteps_weighting_sees_every_micro_batch():
    """Under MultiSteps after weight_gradients, the weighting steps once per micro-batch and
    the emitted update is the mean of the micro-batches' gradients, each weighted with the
    weights of its own micro-batch."""
    k, lr = 3, 0.1
    weighting = ao.unguarded_weights(BASE)
    tx = optax.chain(ao.weight_gradients(weighting), optax.MultiSteps(optax.sgd(lr), k))
    params = init_params()
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    weighted = []
    for step in range(2 * k):
        losses, grads = growing(step)
        weights = ao.find_state(opt_state).weights
        weighted.append(combine(weights, grads))
        updates, opt_state = update(grads, opt_state, params, losses=losses)
        if step % k < k - 1:
            chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
        else:
            mean = jax.tree.map(lambda *g: sum(g) / k, *weighted[-k:])
            chex.assert_trees_all_close(updates, jax.tree.map(lambda m: -lr * m, mean), rtol=1e-5)
    assert int(ao.metrics(opt_state)["step"]) == 2 * k
    assert int(ao.find_state(opt_state).counters.adjustments.sum()) > 0


def test_inject_hyperparams_changes_max_change_without_recompiling():
    def factory(max_change):
        return ao.weight_gradients(ao.unguarded_weights(BASE, max_change=max_change))

    tx = optax.inject_hyperparams(factory)(max_change=0.05)
    opt_state = tx.init(init_params())
    update = jax.jit(tx.update)
    ratios = []
    for step in range(6):
        if step == 3:
            opt_state.hyperparams["max_change"] = jnp.asarray(0.2, jnp.float32)
        before = float(ao.find_state(opt_state).weights["fit"])
        losses, grads = growing(step)
        _, opt_state = update(grads, opt_state, losses=losses)
        ratios.append(float(ao.find_state(opt_state).weights["fit"]) / before)
    # step 0 has no history (hold), then +5 % per step, then +20 % after the change
    np.testing.assert_allclose(ratios, [1.0, 1.05, 1.05, 1.2, 1.2, 1.2], rtol=1e-6)
    assert update._cache_size() == 1


def test_long_scan_and_dtypes_kept():
    weighting = seed_controller(BASE, warmup_steps=5, cooling_period=3, min_stable_steps=1)
    tx = optax.chain(ao.weight_gradients(weighting), optax.adam(1e-2))
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), init_params())
    opt_state = tx.init(params)

    def body(carry, _):
        params, opt_state = carry
        losses, grads = losses_fn(params), term_grads(params)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        chex.assert_trees_all_equal_dtypes(updates, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, new_state), _ = jax.jit(lambda c: jax.lax.scan(body, c, length=100))(
        (params, opt_state)
    )
    chex.assert_trees_all_equal_dtypes(new_state, opt_state)
    chex.assert_trees_all_equal_shapes(new_state, opt_state)
    chex.assert_tree_all_finite(new_state)
    assert int(ao.metrics(new_state)["step"]) == 100


@pytest.mark.parametrize(
    "wrap",
    [
        lambda tx: optax.apply_if_finite(tx, 3),
        lambda tx: ao.apply_if_finite(tx),
        lambda tx: optax.MultiSteps(tx, 2),
    ],
    ids=["apply_if_finite", "ao.apply_if_finite", "MultiSteps"],
)
def test_wrapping_the_whole_chain_fails_at_trace_time(wrap):
    """These wrappers must go after weight_gradients: around it they mix per-term and
    parameter-shaped trees, and fail loudly rather than silently."""
    tx = wrap(optax.chain(ao.weight_gradients(seed_controller(BASE)), optax.sgd(0.1)))
    params = init_params()
    with pytest.raises((TypeError, ValueError)):
        jax.jit(tx.update)(term_grads(params), tx.init(params), params, losses=losses_fn(params))


def test_the_gramian_is_computed_in_one_pass_and_checked_per_term():
    tx = ao.weight_gradients(spy(("gramian", "norm")))
    params = init_params()
    grads = term_grads(params)
    _, state = jax.jit(tx.update)(grads, tx.init(params), losses=losses_fn(params))
    _, grad_stats, _ = state.weighting_state.rule_state
    flat = {
        name: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g)])
        for name, g in grads.items()
    }
    names = sorted(flat)
    expected = jnp.array([[flat[i] @ flat[j] for j in names] for i in names])
    chex.assert_trees_all_close(grad_stats["gramian"], expected, rtol=1e-6)
    # passed by hand: a non-finite row marks that term's step non-finite
    weighting = seed_controller(BASE)
    gramian = np.array([[1.0, np.nan], [np.nan, np.nan]], np.float32)  # g_smooth has a NaN
    _, weight_state = weighting.update(
        {"fit": 1.0, "smooth": 1.0}, weighting.init(), grad_stats={"gramian": gramian}
    )
    np.testing.assert_array_equal(weight_state.counters.nonfinite, [0, 1])
    with pytest.raises(ValueError, match=r"grad_stats\['gramian'\] must be an \(2, 2\) matrix"):
        weighting.update({"fit": 1.0, "smooth": 1.0}, weighting.init(), grad_stats={"gramian": 1.0})


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_large_leaf_is_reduced_block_by_block(dtype):
    # Leaves above BLOCK_BYTES across the terms take the loop over blocks (one of them with a
    # partial last block); the small one the single product: both match float64 inner products.
    from adaptive_optax._src import gradients

    k = 3
    chunk = gradients.BLOCK_BYTES // (k * 4)
    rng = np.random.default_rng(0)
    shapes = {"big": (2 * chunk + 5,), "exact": (chunk, 2), "small": (7, 3)}
    grads = [
        {name: jnp.asarray(rng.standard_normal(shape), dtype) for name, shape in shapes.items()}
        for _ in range(k)
    ]
    out = jax.jit(gradients.gramian)(grads)
    assert out.dtype == jnp.float32
    rows = np.stack(
        [
            np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(g)])
            for g in grads
        ]
    )
    np.testing.assert_allclose(np.asarray(out), rows @ rows.T, rtol=2e-5)
    hlo = jax.jit(gradients.gramian).lower(grads).as_text()
    assert "while" in hlo  # the large leaves are looped over, not stacked whole
    assert f"{k}x{2 * chunk + 5}x" not in hlo and f"{k}x{2 * chunk}x" not in hlo


def test_gramian_rules_weight_the_gradients_with_the_weights_computed_from_them():
    params = init_params()
    losses, grads = losses_fn(params), term_grads(params)
    tx = ao.weight_gradients(ao.mgda_weights(BASE))
    updates, state = jax.jit(tx.update)(grads, tx.init(params), losses=losses)
    assert float(state.weighting_state.weights["fit"]) != BASE["fit"]  # the solve moved them
    chex.assert_trees_all_close(updates, combine(state.weighting_state.weights, grads), rtol=1e-5)
    # every other weighting uses the state's weights, one step old, unless asked
    weighting = ao.unguarded_weights(BASE)
    for this_step in (False, True):
        tx = ao.weight_gradients(weighting, this_steps_weights=this_step)
        state = tx.init(params)
        _, state = tx.update(grads, state, losses=losses)
        before = state.weighting_state.weights
        updates, state = tx.update(grads, state, losses=losses)
        used = state.weighting_state.weights if this_step else before
        chex.assert_trees_all_close(updates, combine(used, grads), rtol=1e-6)


def test_the_registry_of_gradient_statistics_is_read_only():
    with pytest.raises(TypeError):
        ao.GRADIENT_STATISTICS["norm"] = lambda grads: 0.0  # type: ignore[index]
    assert set(ao.GRADIENT_STATISTICS) >= {"norm", "max_abs", "mean_abs"}
