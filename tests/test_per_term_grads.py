"""ao.per_term_grads and ao.representation_grads: the values of the slow paths, under jit and
vmap, in the documented training steps, and every state donated to a jitted step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao

# integration with optax, which promotes dtypes implicitly
pytestmark = pytest.mark.standard_promotion

BASE = {"a": 1.0, "b": 0.5, "c": 2.0}
TERMS = jax.tree.structure(BASE)


def init_params(key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "trunk": {"w": jax.random.normal(k1, (3, 5)) / 2, "b": jnp.zeros(5)},
        "heads": {t: jax.random.normal(k, (5,)) for t, k in zip(BASE, (k2, k3, k1), strict=True)},
    }


def encode(params, x):
    return jnp.tanh(x @ params["trunk"]["w"] + params["trunk"]["b"])


def decode(params, z, x):
    targets = {"a": x[:, 0], "b": -x[:, 1], "c": jnp.sin(x[:, 2])}
    return {t: jnp.mean((z @ params["heads"][t] - targets[t]) ** 2) for t in BASE}


def losses_fn(params, x):
    return decode(params, encode(params, x), x)


X = jax.random.normal(jax.random.key(7), (4, 3))


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ per_term_grads


def test_equals_jacrev_and_value_under_jit():
    losses, grads = jax.jit(ao.per_term_grads(losses_fn))(init_params(), X)
    assert_trees_close(grads, jax.jacrev(losses_fn)(init_params(), X))
    assert_trees_close(losses, losses_fn(init_params(), X))


def test_has_aux_and_argnums_as_in_value_and_grad():
    def fun(params, x, scale):
        losses = jax.tree.map(lambda v: scale * v, losses_fn(params, x))
        return losses, {"sum": sum(losses.values())}

    (losses, aux), grads = jax.jit(ao.per_term_grads(fun, argnums=(0, 2), has_aux=True))(
        init_params(), X, 2.0
    )
    expected = jax.jacrev(fun, argnums=(0, 2), has_aux=True)(init_params(), X, 2.0)[0]
    assert_trees_close(grads, expected)
    np.testing.assert_allclose(aux["sum"], sum(losses.values()), rtol=1e-6)
    for term in BASE:  # d(scale * L) / d scale = L
        np.testing.assert_allclose(grads[term][1], losses[term] / 2.0, rtol=1e-6)


def test_vmap_gives_per_example_per_term_grads():
    per_example = jax.vmap(ao.per_term_grads(losses_fn), in_axes=(None, 0))
    _, grads = jax.jit(per_example)(init_params(), X[:, None, :])
    assert grads["a"]["trunk"]["w"].shape == (4, 3, 5)
    expected = jax.jacrev(losses_fn)(init_params(), X[1:2])
    assert_trees_close(jax.tree.map(lambda g: g[1], grads), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(argnums=1.0), "argnums must be an int"),
        (dict(argnums=()), "argnums must be an int"),
        (dict(has_aux=1), "has_aux must be True or False"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ao.per_term_grads(losses_fn, **kwargs)


def test_bad_losses_and_argnums_fail_when_called():
    with pytest.raises(ValueError, match="floating scalar, got 'v' with shape"):
        ao.per_term_grads(lambda p: {"v": p * 2.0})(jnp.ones(2))
    with pytest.raises(ValueError, match="positional argument 3"):
        ao.per_term_grads(losses_fn, argnums=3)(init_params(), X)


# ------------------------------------------------------------------------ representation_grads


def test_representation_backward_is_the_weighted_gradient():
    weights = {"a": 0.3, "b": 1.5, "c": -0.2}
    out = jax.jit(lambda p, x: ao.representation_grads(encode, decode)(p, x)[:2])(init_params(), X)
    assert_trees_close(out[0], losses_fn(init_params(), X))
    grads = jax.jit(lambda p, x, w: ao.representation_grads(encode, decode)(p, x).backward(w))(
        init_params(), X, weights
    )
    expected = jax.grad(lambda p: ao.weighted_sum(losses_fn(p, X), weights))(init_params())
    assert_trees_close(grads, expected)
    z = encode(init_params(), X)
    at_z = jax.jacrev(lambda z: decode(init_params(), z, X))(z)
    assert_trees_close(out[1], at_z)


def test_representation_grads_has_aux():
    def decode_aux(params, z, x):
        losses = decode(params, z, x)
        return losses, z.mean()

    (losses, aux), grads, _ = jax.jit(
        lambda p, x: ao.representation_grads(encode, decode_aux, has_aux=True)(p, x)[:2] + (None,)
    )(init_params(), X)
    np.testing.assert_allclose(aux, encode(init_params(), X).mean(), rtol=1e-6)
    assert jax.tree.structure(grads) == TERMS


def encode_shared(params, x):
    return params["shared"]


def decode_free(params, z, x):
    return {"a": jnp.sum((z - x) ** 2), "b": jnp.sum(jnp.sin(z) * x), "c": jnp.sum(z**2 * x)}


def rep_step(weighting):
    def step(params, x):
        losses, grads, backward = ao.representation_grads(encode_shared, decode_free)(params, x)
        stats = ao.gradient_statistics(grads, weighting.needs, TERMS)
        weights, _ = weighting.update(losses, weighting.init(), grad_stats=stats)
        return backward(weights)

    return jax.jit(step)


def full_step(weighting):
    tx = ao.weight_gradients(weighting)

    def step(params, x):
        full = lambda p, x: decode_free(p, encode_shared(p, x), x)  # noqa: E731
        losses, grads = ao.per_term_grads(full)(params, x)
        return tx.update(grads, tx.init(params), params, losses=losses)[0]

    return jax.jit(step)


EXACT_CASES = {
    name: (rep_step(weighting), full_step(weighting))
    for name, weighting in (("upgrad", ao.upgrad_weights(BASE)), ("mgda", ao.mgda_weights(BASE)))
}


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_exact_when_the_representation_is_the_shared_parameter(seed):
    """With the shared parameters as the representation and parameter-free heads, the
    representation path gives the full path's weights and update (UPGrad, MGDA)."""
    params = {"shared": jax.random.normal(jax.random.key(seed), (6,))}
    x = jax.random.normal(jax.random.key(seed + 1), (6,))
    for via_rep, via_full in EXACT_CASES.values():
        assert_trees_close(via_rep(params, x), via_full(params, x), rtol=2e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ donation

REQUIRED = {"lr_annealing_weights": dict(main="a"), "metabalance_weights": dict(main="a")}


def all_weightings():
    # every weighting factory (distilled_weights reads a state: not a factory)
    names = sorted(n for n in ao.__all__ if n.endswith("_weights") and n != "distilled_weights")
    return {n: getattr(ao, n)(BASE, **REQUIRED.get(n, {})) for n in names}


def test_every_init_leaf_is_its_own_buffer():
    for name, weighting in all_weightings().items():
        for state in (weighting.init(), weighting.init()):
            pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state)]
            assert len(set(pointers)) == len(pointers), name


def test_documented_steps_donate_params_optimizer_and_weighting_state():
    for weighting in (ao.upgrad_weights(BASE), ao.stable_weights(BASE)):
        tx = optax.chain(ao.weight_gradients(weighting), ao.apply_if_finite(optax.adam(1e-2)))

        def chained(params, opt_state, x, tx=tx):
            losses, grads = ao.per_term_grads(losses_fn)(params, x)
            updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
            return optax.apply_updates(params, updates), opt_state

        step = jax.jit(chained, donate_argnums=(0, 1))
        params, opt_state = init_params(), tx.init(init_params())
        for _ in range(2):
            params, opt_state = step(params, opt_state, X)
        assert int(ao.metrics(opt_state)["step"]) == 2
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))

    weighting, adam = ao.upgrad_weights(BASE), optax.adam(1e-2)

    def by_hand(params, opt_state, weight_state, x):
        losses, grads, backward = ao.representation_grads(encode, decode)(params, x)
        stats = ao.gradient_statistics(grads, weighting.needs, TERMS)
        weights, weight_state = weighting.update(losses, weight_state, grad_stats=stats)
        updates, opt_state = adam.update(backward(weights), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, weight_state

    step = jax.jit(by_hand, donate_argnums=(0, 1, 2))
    state = (init_params(), adam.init(init_params()), weighting.init())
    for _ in range(2):
        state = step(*state, X)
    assert int(state[2].step) == 2
