"""M-ConFIG (``ao.m_config``) against the authors' ``PseudoMomentumOperator``, and its properties.

Reference values: the authors' ``conflictfree`` package (github tum-pbs/ConFIG, commit
94862437), ``PseudoMomentumOperator(num_vectors=K, gradient_operator=ConFIGOperator())``,
``calculate_gradient(t % K, g_t)`` in torch 2.13 float64, on the seeded gradients stored here
(``numpy.random.default_rng(seed)``: a conflicting base gradient per term, growing with the
step, plus noise, rounded to 6 decimals). For two terms the authors' operator takes the closed
form ``ConFIG_update_double``, for three ``torch.linalg.lstsq``. Against the unrounded values
ours agreed to 7e-15 in float64 (here the updates are stored to 10 significant digits) and to
1.5e-5 in float32 (the updates are Adam-scaled, of order 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adaptive_optax as ao

REFERENCE = {
    2: (
        [
            [-0.185907, -0.111442, -0.522093, -0.004496, -1.158625],
            [0.10394, 1.423071, 1.073055, -0.709041, -1.123791],
            [0.136901, 0.471864, 0.692079, 0.343595, -0.405336],
            [0.734037, 2.10585, 1.338591, -1.56596, -2.294203],
            [-0.228203, -0.395218, 1.329317, 0.501203, -1.071143],
            [1.081674, 2.933086, 2.302896, -1.36735, -2.416838],
            [-0.277488, 0.387068, 2.466121, 0.684376, -1.367646],
            [0.963983, 4.77141, 3.91608, -1.280762, -3.265255],
            [0.606173, -1.053316, 2.17521, 0.684898, -2.465457],
        ],
        [
            [0, 0, 0, 0, 0],
            [-0.9999999416, 0.9999999897, 0.9999999263, -0.9999999823, -0.9999999959],
            [0.2015921939, 0.9803721663, 0.7954678164, -0.351750581, -0.9866897904],
            [0.6409456964, 0.9850747355, 0.8716438466, -0.6406517971, -0.9701293807],
            [0.3505575671, 0.8337749742, 0.8461591316, -0.5278917936, -0.9731480347],
            [0.5821140926, 0.8908373878, 0.8994402198, -0.3989930137, -0.9856318232],
            [0.6274275731, 0.921216697, 0.91651086, -0.5304200991, -0.9804121879],
            [0.6128028089, 0.9400506699, 0.9381752195, -0.05890444644, -0.9906521963],
            [0.6566408503, 0.8386428021, 0.9578826781, -0.2306285327, -1.003994754],
        ],
    ),
    3: (
        [
            [-0.04537, 0.693022, 0.334508, -1.440959, 1.552388, 0.949737],
            [-2.05362, -0.189053, 0.386558, 0.171277, 0.14377, 0.819388],
            [-0.119407, -0.816666, -0.960193, 1.97954, 0.386907, -0.136399],
            [0.399607, 0.737037, 0.711563, -2.421492, 1.1065, 0.506498],
            [-1.217319, 0.806084, 0.752924, 0.694833, 0.080322, 0.949623],
            [-1.544261, 0.038309, -1.044874, 1.088, 0.465131, -0.981862],
            [1.407216, 1.764637, 1.382457, -3.658872, 1.910622, 1.092899],
            [-1.637504, 1.937862, 0.63908, 0.358124, 0.187901, 1.461435],
            [-2.386191, -0.174134, -2.463599, 2.163271, 0.747379, -1.143116],
            [0.873254, 3.416109, 1.34934, -4.37374, 3.177209, 0.910677],
            [-2.202818, 2.101558, 1.845951, 1.273346, -0.701736, 1.58927],
            [-2.724858, -0.36063, -2.393235, 2.574514, 0.393592, -1.023362],
        ],
        [
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [-0.9999999895, -0.9999999628, -0.9999999859, 0.9999999883, 0.9999999961, 0.9999999924],
            [-0.770762652, -1.001337407, -0.9477944704, 0.5249605081, 0.9853063565, 0.9227584097],
            [-0.7896319761, -0.4293733739, -0.8923719505, 0.6941136924, 0.9835981232, 0.9511769357],
            [-0.7405249397, 0.4714374786, -0.8777647979, -0.1151536171, 0.9931338394, 0.154723465],
            [-0.6852007501, 0.6476963532, -0.8512664858, -0.1493144265, 0.9985808466, 0.1229474767],
            [-0.6993806177, 0.7282951051, -0.8996907332, -0.1599849662, 1.00546728, 0.09190790122],
            [-0.7917906382, 0.8040060225, -0.8885231138, -0.4873558312, 1.013625125, 0.1101439968],
            [
                -0.8548133695,
                0.8368673128,
                -0.9268982355,
                -0.4076323789,
                1.018617951,
                -0.06512212957,
            ],
            [-0.9011844418, 0.887597727, -0.8203252667, -0.2880533823, 1.009628904, 0.1342100037],
            [-0.9353534549, 0.9115512295, -0.8721179791, -0.4286393408, 1.01100086, 0.1422600217],
        ],
    ),
}


def run(tx, grads, dtype, indices):
    """The updates of ``tx`` fed ``grads[t]`` with index ``indices[t]``, jitted."""
    grads = np.asarray(grads)
    state = tx.init(jnp.zeros(grads.shape[1:], dtype))
    update = jax.jit(tx.update)
    out = []
    for t, g in enumerate(grads):
        u, state = update(jnp.asarray(g, dtype), state, index=int(indices[t]))
        out.append(np.asarray(u, np.float64))
    return np.asarray(out), state


@pytest.mark.parametrize("k", sorted(REFERENCE))
@pytest.mark.parametrize("dtype, tol", [("float32", 5e-5), ("float64", 1e-9)])
def test_updates_match_the_authors_pseudo_momentum_operator(k, dtype, tol):
    grads, expected = (np.asarray(x) for x in REFERENCE[k])
    with jax.enable_x64(dtype == "float64"):
        got, state = run(ao.m_config(k), grads, jnp.dtype(dtype), np.arange(len(grads)) % k)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    # the first K - 1 steps only fill the moments
    np.testing.assert_array_equal(got[: k - 1], 0.0)
    assert int(state.count) == len(grads) - k + 1
    np.testing.assert_array_equal(state.counts, np.bincount(np.arange(len(grads)) % k))


@pytest.mark.standard_promotion  # optax's Adam promotes implicitly
@given(
    hnp.arrays(np.float32, (12, 4), elements=st.floats(-10, 10, width=32, allow_subnormal=False)),
    st.sampled_from([0.0, 0.5, 0.9]),
)
@settings(max_examples=25, deadline=None)
def test_one_term_is_adam(grads, b1):
    """With one term, the ConFIG direction of one moment is the moment itself, the
    pseudo-gradient is the gradient, and M-ConFIG is Adam's scaling."""
    tx, adam = ao.m_config(1, b1=b1), optax.scale_by_adam(b1=b1, b2=0.999, eps=1e-8)
    state, adam_state = tx.init(jnp.zeros(4)), adam.init(jnp.zeros(4))
    for g in grads:
        ours, state = tx.update(jnp.asarray(g), state, index=0)
        theirs, adam_state = adam.update(jnp.asarray(g), adam_state)
        scale = np.abs(np.asarray(theirs)).max() + 1.0
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


@given(
    hnp.arrays(np.float64, (3, 5), elements=st.floats(-5, 5)),
    st.integers(1, 3),
)
@settings(max_examples=30, deadline=None)
def test_direction_is_equally_aligned_with_every_moment(grads, rounds):
    """The direction (``direction_momentum / (1 - b1**t)``) makes the same angle with every
    bias-corrected moment (ConFIG's defining property) when the moments are independent."""
    b1 = 0.9
    with jax.enable_x64(True):
        tx = ao.m_config(3, b1=b1)
        state = tx.init(jnp.zeros(5))
        for r in range(rounds):
            for i in range(3):
                _, state = tx.update(jnp.asarray(grads[i] * (1 + r)), state, index=i)
        moments = np.asarray(state.momenta) / (1 - b1 ** np.asarray(state.counts))[:, None]
        direction = np.asarray(state.direction_momentum) / (1 - b1 ** int(state.count))
    if np.linalg.svd(moments, compute_uv=False)[-1] <= 1e-3 * max(np.abs(moments).max(), 1e-3):
        return  # (nearly) dependent moments: no equally aligned direction need exist
    cosines = moments @ direction / np.linalg.norm(moments, axis=1) / np.linalg.norm(direction)
    np.testing.assert_allclose(cosines, cosines[0], atol=1e-6)
    assert cosines[0] > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_gradient_or_loss_or_index_changes_nothing(bad):
    tx = ao.m_config(2)
    update = jax.jit(tx.update)
    state = tx.init({"w": jnp.zeros(3), "b": jnp.zeros(())})
    good = {"w": jnp.ones(3), "b": jnp.ones(())}
    for i in (0, 1, 0):
        _, state = update(jax.tree.map(lambda x, i=i: x * (i + 1), good), state, index=i)
    poisoned = {"w": jnp.array([1.0, bad, 1.0]), "b": jnp.ones(())}
    cases = [
        (poisoned, dict(index=1)),
        (good, dict(index=1, losses={"pde": jnp.asarray(bad), "bc": 1.0})),
        (good, dict(index=2)),
        (good, dict(index=-1)),
    ]
    for n, (grad, kwargs) in enumerate(cases, start=1):
        out, new = update(grad, state, **kwargs)
        assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(out))
        for before, after in zip(
            jax.tree.leaves(state._replace(skipped=0)),
            jax.tree.leaves(new._replace(skipped=0)),
            strict=True,
        ):
            np.testing.assert_array_equal(before, after)
        assert int(new.skipped) == int(state.skipped) + 1 == n
        state = new
    # huge but finite: the square overflows float32, so the step is skipped too
    out, new = update({"w": jnp.full(3, 3e38), "b": jnp.ones(())}, state, index=1)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((out, new)))
    # and training goes on
    out, new = update(good, new, index=1)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((out, new)))
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(out))


def test_traced_index_does_not_recompile_and_scans():
    tx = ao.m_config(3)
    grads = jnp.asarray(np.random.default_rng(0).normal(size=(300, 3, 4)), jnp.float32)

    def step(state, inputs):
        t, g = inputs
        index = t % 3
        out, state = tx.update(g[index], state, index=index)
        return state, out

    final, outs = jax.jit(lambda s: jax.lax.scan(step, s, (jnp.arange(300), grads)))(
        tx.init(jnp.zeros(4))
    )
    assert np.all(np.isfinite(outs)) and int(final.count) == 298
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(4))
    for t in range(4):
        _, state = update(grads[t, t % 3], state, index=jnp.int32(t % 3))
    assert update._cache_size() == 1


def test_a_dict_of_terms_with_a_chain_and_apply_if_finite():
    """The pattern of the guide: the term is chosen by index from a dict-valued loss function
    (``lax.switch`` computes that term only); ``apply_if_finite`` keeps a NaN loss away. Both
    losses fall and the parameters reach the Pareto front ``x + y = 1``."""
    names = ("pde", "bc")

    def losses_fn(p):
        return {"pde": (p[0] - 1.0) ** 2 + p[1] ** 2, "bc": p[0] ** 2 + (p[1] - 1.0) ** 2}

    tx = optax.chain(ao.m_config(len(names)), ao.apply_if_finite(optax.sgd(1e-2)))
    start = jnp.array([2.0, 1.5])
    params, opt_state = start, tx.init(start)

    @jax.jit
    def step(params, opt_state, index, poison):
        branches = [lambda p, n=n: losses_fn(p)[n] for n in names]
        loss, grad = jax.value_and_grad(lambda p: jax.lax.switch(index, branches, p))(params)
        loss = jnp.where(poison, jnp.nan, loss)
        updates, opt_state = tx.update(grad, opt_state, params, index=index, losses=loss)
        return optax.apply_updates(params, updates), opt_state

    for t in range(400):
        params, opt_state = step(params, opt_state, t % 2, t == 100)
    assert int(ao.m_config(2).init(start).skipped) == 0
    assert int(optax.tree.get(opt_state, "skipped")) == 1
    before, after = losses_fn(start), losses_fn(params)
    assert all(float(after[n]) < float(before[n]) for n in names)
    np.testing.assert_allclose(float(params[0] + params[1]), 1.0, atol=0.05)


@pytest.mark.parametrize(
    "setting, value",
    [("num_terms", 0), ("num_terms", 2.0), ("num_terms", True), ("b1", 1.0), ("b1", -0.1),
     ("b2", 1.0), ("b2", np.nan), ("eps", -1.0), ("eps", np.inf)],
)  # fmt: skip
def test_bad_settings_fail_at_construction_naming_them(setting, value):
    kwargs = {"num_terms": 2, setting: value}
    with pytest.raises(ValueError, match=setting):
        ao.m_config(**kwargs)


def test_update_without_an_index_or_with_a_vector_says_how():
    tx = ao.m_config(2)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="index=i"):
        tx.update(jnp.ones(2), state)
    with pytest.raises(ValueError, match="index must be one integer"):
        tx.update(jnp.ones(2), state, index=jnp.array([0, 1]))
    with pytest.raises(ValueError, match="index must be one integer"):
        tx.update(jnp.ones(2), state, index=0.0)
