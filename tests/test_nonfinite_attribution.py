"""NaN attribution: for each term, the first and the last step whose loss or gradient
statistic was not finite, in the state and in ``ao.metrics``; ``ao.checked`` names the term and
the step (StyleTTS2 254: a NaN from a corrupted checkpoint that a silent guard would hide)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TTS_BASE, run

import adaptive_optax as ao

STEPS = 12


def poisoned():
    """Attention goes NaN at steps 4 and 9 (1-based update steps 5 and 10), stop's gradient
    norm Inf at step 7 (update 8); mel stays finite."""
    ones = np.ones(STEPS, np.float32)
    attention = ones.copy()
    attention[[4, 9]] = np.nan
    norms = {"mel": ones, "stop": ones.copy(), "attention": ones}
    norms["stop"][7] = np.inf
    return {"mel": ones, "stop": ones, "attention": attention}, norms


def test_first_and_last_nonfinite_step_per_term_in_state_and_metrics():
    losses, norms = poisoned()
    state, trace = run(ao.stable_weights(TTS_BASE), losses, grad_norms=norms)
    m = ao.metrics(state)
    assert (int(m["first_nonfinite_step/attention"]), int(m["last_nonfinite_step/attention"])) == (
        5,
        10,
    )
    assert (int(m["first_nonfinite_step/stop"]), int(m["last_nonfinite_step/stop"])) == (8, 8)
    assert (int(m["first_nonfinite_step/mel"]), int(m["last_nonfinite_step/mel"])) == (0, 0)
    assert int(m["nonfinite/attention"]) == 2
    # the record grows step by step: the first step stays, the last moves
    first = trace["metrics"]["first_nonfinite_step/attention"]
    last = trace["metrics"]["last_nonfinite_step/attention"]
    np.testing.assert_array_equal(first, [0] * 4 + [5] * 8)
    np.testing.assert_array_equal(last, [0] * 4 + [5] * 5 + [10] * 3)


def test_attribution_inside_an_optax_chain_and_over_a_batch_of_seeds():
    weighting = ao.stable_weights({"fit": 1.0, "reg": 0.1})
    tx = optax.chain(ao.weight_gradients(weighting), ao.apply_if_finite(optax.sgd(0.1)))

    def losses_fn(params, target):
        return {"fit": jnp.mean(jnp.abs(params - target)), "reg": jnp.sum(params**2)}

    @jax.jit
    @jax.vmap
    def step(params, opt_state, target):
        losses = losses_fn(params, target)
        grads = jax.jacrev(losses_fn)(params, target)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        return optax.apply_updates(params, updates), opt_state

    params = jnp.zeros((3, 2))
    opt_state = jax.vmap(tx.init)(params)
    targets = jnp.ones((3, 2))
    for k in range(4):
        bad = targets.at[1].set(jnp.nan) if k == 2 else targets  # seed 1, third step
        params, opt_state = step(params, opt_state, bad)
    m = ao.metrics(opt_state)
    np.testing.assert_array_equal(m["first_nonfinite_step/fit"], [0, 3, 0])
    np.testing.assert_array_equal(m["first_nonfinite_step/reg"], [0, 0, 0])
    assert np.all(np.isfinite(np.asarray(params)))


def test_checked_names_the_term_and_the_step():
    weighting = ao.checked(ao.stable_weights(TTS_BASE))
    state = weighting.init()
    finite = {"mel": 1.0, "stop": 0.5, "attention": 0.2}
    norms = {"mel": 1.0, "stop": 1.0, "attention": 1.0}
    for _ in range(2):
        _, state = weighting.update(finite, state, grad_norms=norms)
    bad = dict(finite, stop=float("nan"))
    with pytest.raises(Exception, match=r"loss term 'stop'.*at step 3 \(first at step 3\)"):
        weighting.update(bad, state, grad_norms=norms)
    with pytest.raises(Exception, match=r"loss term 'mel'.*at step 3"):
        weighting.update(finite, state, grad_norms=dict(norms, mel=float("inf")))
    # check_inputs=False checks the state only: the guards skip the input and count it
    quiet = ao.checked(ao.stable_weights(TTS_BASE), check_inputs=False)
    _, state = quiet.update(bad, state, grad_norms=norms)
    assert int(ao.metrics(state)["last_nonfinite_step/stop"]) == 3
    with pytest.raises(ValueError, match="check_inputs must be True or False"):
        ao.checked(ao.stable_weights(TTS_BASE), check_inputs="yes")
