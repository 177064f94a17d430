"""The controller as JAX users run it: jit, scan, cond, vmap, no recompilation, no transfers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TTS_BASE, falling, rising, run, seed_controller, tts_losses

import adaptive_optax as ao

SETTINGS = dict(warmup_steps=10, cooling_period=5, min_stable_steps=2)


def step_inputs(losses, t):
    return {name: jnp.asarray(seq[t]) for name, seq in losses.items()}


def test_jit_and_eager_agree():
    weighting = seed_controller(TTS_BASE, **SETTINGS)
    losses = tts_losses(rising(60))
    losses["stop"] = falling(60)
    eager, jitted = weighting.init(), weighting.init()
    update = jax.jit(weighting.update)
    for t in range(60):
        _, eager = weighting.update(step_inputs(losses, t), eager, grad_norms=1.0)
        _, jitted = update(step_inputs(losses, t), jitted, grad_norms=1.0)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-12)
    assert int(jitted.counters.adjustments.sum()) > 0


def test_second_update_does_not_recompile():
    weighting = seed_controller(TTS_BASE)
    update = jax.jit(chex.assert_max_traces(weighting.update, n=1))
    state = weighting.init()
    for value in (1.0, 2.0, jnp.nan):
        losses = {name: jnp.float32(value) for name in TTS_BASE}
        _, state = update(losses, state, grad_norms=jnp.float32(1.0))
    # a state switched off and on again has the same types: still no retrace
    _, state = update(losses, ao.enable(ao.disable(state)), grad_norms=jnp.float32(1.0))
    _, state = update(losses, ao.rollback(state), grad_norms=jnp.float32(1.0))


def test_state_keeps_dtypes_and_shapes():
    weighting = seed_controller(TTS_BASE)
    state = weighting.init()
    _, new_state = jax.jit(weighting.update)({n: 1.0 for n in TTS_BASE}, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
    assert new_state.step.dtype == jnp.int32 and new_state.enabled.dtype == jnp.bool_


def test_a_hundred_thousand_steps_in_scan():
    weighting = seed_controller(TTS_BASE)
    n = 100_000
    t = np.arange(n, dtype=np.float32)
    losses = tts_losses(1.0 + 0.5 * np.sin(t / 300.0))

    @jax.jit
    def go(state, xs):
        return jax.lax.scan(lambda s, x: (weighting.update(x, s)[1], None), state, xs)[0]

    state = go(weighting.init(), losses)
    chex.assert_tree_all_finite(state)
    assert int(state.step) == n
    assert int(state.counters.adjustments[1]) > 10  # the oscillating mel loss keeps adapting


def test_update_inside_a_cond_branch():
    weighting = seed_controller(TTS_BASE)
    losses = {n: jnp.float32(1.0) for n in TTS_BASE}

    @jax.jit
    def maybe_update(state, flag):
        return jax.lax.cond(
            flag,
            lambda s: weighting.update(losses, s)[1],
            lambda s: s,
            state,
        )

    state = weighting.init()
    assert int(maybe_update(state, True).step) == 1
    assert int(maybe_update(state, False).step) == 0


def test_vmap_over_independent_controllers():
    weighting = seed_controller(TTS_BASE, **SETTINGS)
    batch = 3
    states = jax.vmap(lambda _: weighting.init())(jnp.arange(batch))
    mels = np.stack([rising(40), falling(40), np.ones(40, np.float32)])
    update = jax.jit(jax.vmap(weighting.update))
    for t in range(40):
        losses = {"mel": mels[:, t], "stop": np.full(batch, 0.3), "attention": np.full(batch, 0.1)}
        _, states = update(losses, states)
    for i in range(batch):
        alone, _ = run(weighting, tts_losses(mels[i]))
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], states), alone, rtol=1e-5, atol=1e-12
        )
    mel = np.asarray(states.weights["mel"])
    assert mel[0] > 2.5 > mel[1] and mel[2] == 2.5


def test_no_device_to_host_transfer_inside_update():
    weighting = seed_controller(TTS_BASE)
    update = jax.jit(weighting.update)
    losses = jax.device_put({n: np.float32(1.0) for n in TTS_BASE})
    state, grad = jax.device_put(weighting.init()), jax.device_put(np.float32(1.0))
    _, state = update(losses, state, grad_norms=grad)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        weights, state = update(losses, state, grad_norms=grad)
        weights, state = update(losses, state, grad_norms=grad)
    assert int(state.step) == 3


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_low_precision_losses(dtype):
    weighting = seed_controller(TTS_BASE, **SETTINGS)
    losses = {k: np.asarray(v).astype(dtype) for k, v in tts_losses(rising(40)).items()}
    state, trace = run(weighting, losses, grad_norms=np.ones(40, dtype))
    chex.assert_tree_all_finite(state)
    assert trace["weights"]["mel"].dtype == np.float32
    assert float(state.weights["mel"]) > 2.5


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_weights(dtype):
    weighting = seed_controller(TTS_BASE, dtype=dtype, **SETTINGS)
    state, trace = run(weighting, tts_losses(rising(40)))
    assert trace["weights"]["mel"].dtype == dtype
    assert state.stats.loss_mean.dtype == jnp.float32
    assert float(state.weights["mel"]) > 2.5


def test_checked_mode_names_the_non_finite_field():
    weighting = ao.checked(seed_controller(TTS_BASE))
    state = weighting.init()
    losses = {n: 1.0 for n in TTS_BASE}
    _, state = weighting.update(losses, state)
    bad = state._replace(stats=state.stats._replace(loss_mean=np.array([1.0, np.nan, 1.0])))
    with pytest.raises(AssertionError, match=r"AdaptiveState\.stats\.loss_mean"):
        weighting.update(losses, bad)
    # every float field is checked, derived from the NamedTuples (spike_stats included)
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.spike_stats)
    with pytest.raises(AssertionError, match=r"AdaptiveState\.spike_stats\."):
        weighting.update(losses, state._replace(spike_stats=nan))
    # it keeps what the weighting needs and passes gradient statistics through
    assert weighting.needs == ("norm",)
    _, state = weighting.update(losses, state, grad_norms=2.0)
    assert float(ao.metrics(state)["grad_norm_avg/mel"]) == 2.0
