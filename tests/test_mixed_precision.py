"""Mixed precision: bf16 compute with float32 master weights, and fp16 with dynamic loss
scaling (``flax.training.dynamic_scale.DynamicScale``) where the scale overflows on purpose:
the scaler's overflows are not the terms' fault (``ao.loss_scaled``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.dynamic_scale import DynamicScale
from helpers import seed_controller

import adaptive_optax as ao

# integration with optax and flax, which promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion

BASE = {"fit": 1.0, "reg": 0.1}
FAST = dict(warmup_steps=0, cooling_period=0, min_stable_steps=0)
X = jax.random.normal(jax.random.key(0), (32, 4))
Y = X @ jnp.arange(1.0, 5.0)


def losses_fn(params, dtype):
    """Two terms computed in ``dtype`` from float32 master parameters."""
    p = params.astype(dtype)
    pred = X.astype(dtype) @ p
    return {"fit": jnp.mean((pred - Y.astype(dtype)) ** 2), "reg": jnp.sum(p**2)}


WEIGHTING = ao.loss_scaled(seed_controller(BASE, **FAST))


def fp16_run(ignore_verdict, steps=25, scale=2.0**20):
    """Training in float16 with a dynamic loss scale that starts far too high; with
    ``ignore_verdict`` the weighting is not told of the overflows (one compiled step)."""
    weighting, opt = WEIGHTING, optax.adam(1e-2)

    def total(params, weights):
        losses = losses_fn(params, jnp.float16)
        return ao.weighted_sum(losses, weights), losses

    @jax.jit
    def step(params, opt_state, w_state, dyn, ignore_verdict):
        grad_fn = dyn.value_and_grad(total, has_aux=True)
        dyn, finite, (_, losses), grads = grad_fn(params, w_state.weights)
        updates, new_opt = opt.update(grads, opt_state, params)
        params = optax.tree.where(finite, optax.apply_updates(params, updates), params)
        opt_state = optax.tree.where(finite, new_opt, opt_state)
        _, w_state = weighting.update(
            losses, w_state, grad_norms=optax.tree.norm(grads), grads_finite=finite | ignore_verdict
        )
        return params, opt_state, w_state, dyn, finite, losses

    params = jnp.zeros(4)
    opt_state, w_state, dyn = opt.init(params), weighting.init(), DynamicScale(scale=scale)
    finite, seen = [], []
    for _ in range(steps):
        params, opt_state, w_state, dyn, ok, losses = step(
            params, opt_state, w_state, dyn, ignore_verdict
        )
        finite.append(bool(ok))
        seen.append(np.asarray([losses["fit"], losses["reg"]], np.float32))
    return w_state, np.array(finite), np.array(seen), float(dyn.scale)


def test_fp16_overflows_of_the_loss_scale_are_not_the_terms_fault():
    state, finite, seen, scale = fp16_run(ignore_verdict=False)
    overflows = int((~finite).sum())
    assert overflows >= 3 and finite[-10:].all()  # the scale overflowed, then backed off
    assert scale < 2.0**16
    counters = ao.metrics(state)
    for term in BASE:
        assert int(counters[f"nonfinite/{term}"]) == 0
        assert int(counters[f"first_nonfinite_step/{term}"]) == 0
        assert int(counters[f"spikes/{term}"]) == 0
        assert int(counters[f"rollbacks/{term}"]) == 0
    assert int(state.step) == int(finite.sum())  # overflow steps are not steps of the weighting
    assert int(state.counters.adjustments.sum()) > 0
    # the weights saw the unscaled losses: the last one, as the model computed it
    np.testing.assert_allclose(state.stats.previous_loss, seen[-1], rtol=1e-6)
    assert float(state.stats.loss_mean[0]) < 100.0  # not ~1e9 x a loss
    # the same run without the scaler's verdict counts every overflow against every term
    plain, finite, _, _ = fp16_run(ignore_verdict=True)
    np.testing.assert_array_equal(plain.counters.nonfinite, [int((~finite).sum())] * 2)


def test_a_nan_loss_is_a_terms_fault_and_only_its_term_is_named():
    weighting = ao.loss_scaled(seed_controller(BASE))
    update = jax.jit(weighting.update)
    state = weighting.init()
    losses = {"fit": jnp.float16(2.0), "reg": jnp.float16(0.5)}
    _, state = update(losses, state, grad_norms=jnp.float32(1.0), grads_finite=True)
    bad = dict(losses, fit=jnp.float16(jnp.nan))
    # the total gradient is NaN too: its norm is not passed on, only the loss names the term
    _, state = update(bad, state, grad_norms=jnp.float32(jnp.nan), grads_finite=False)
    m = ao.metrics(state)
    assert int(m["step"]) == 2
    assert (int(m["first_nonfinite_step/fit"]), int(m["nonfinite/reg"])) == (2, 0)
    assert update._cache_size() == 1


def test_bf16_compute_end_to_end_with_float32_master_weights():
    weighting = seed_controller(BASE, **FAST)
    tx = optax.chain(ao.weight_gradients(weighting), ao.apply_if_finite(optax.adam(0.1)))

    @jax.jit
    def step(params, opt_state):
        losses = losses_fn(params, jnp.bfloat16)
        grads = jax.jacrev(losses_fn)(params, jnp.bfloat16)  # float32: the master weights'
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        return optax.apply_updates(params, updates), opt_state, losses

    params = jnp.zeros(4)
    opt_state = tx.init(params)
    first = None
    for _ in range(60):
        params, opt_state, losses = step(params, opt_state)
        first = losses if first is None else first
    assert step._cache_size() == 1
    assert losses["fit"].dtype == jnp.bfloat16 and params.dtype == jnp.float32
    assert float(losses["fit"]) < 0.2 * float(first["fit"])
    state = ao.find_state(opt_state)
    assert state.weights["fit"].dtype == jnp.float32
    assert state.stats.loss_mean.dtype == jnp.float32
    assert int(state.counters.nonfinite.sum()) == 0
    for leaf in jax.tree.leaves(state):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


def fp16_per_term_run(pass_verdict, steps=25, scale=2.0**20):
    """fp16 per-term gradients through ``ao.weight_gradients(ao.loss_scaled(...))``, with a
    loss scale that starts far too high and halves on each overflow (the guide's example)."""
    tx = optax.chain(
        ao.weight_gradients(ao.loss_scaled(seed_controller(BASE, **FAST))),
        ao.apply_if_finite(optax.adam(1e-2)),
    )

    def scaled_losses(params, scale):
        return {k: v.astype(jnp.float32) * scale for k, v in losses_fn(params, jnp.float16).items()}

    @jax.jit
    def step(params, opt_state, scale):
        scaled, grads = ao.per_term_grads(scaled_losses)(params, scale)
        losses = jax.tree.map(lambda v: v / scale, scaled)
        grads = jax.tree.map(lambda g: g / scale, grads)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        verdict = {"grads_finite": finite} if pass_verdict else {}
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses, **verdict)
        return (
            optax.apply_updates(params, updates),
            opt_state,
            jnp.where(finite, scale, scale / 2),
            finite,
        )

    params, opt_state, scale = jnp.zeros(4), tx.init(jnp.zeros(4)), jnp.float32(scale)
    finite = []
    for _ in range(steps):
        params, opt_state, scale, ok = step(params, opt_state, scale)
        finite.append(bool(ok))
    return ao.find_state(opt_state), np.array(finite)


def test_weight_gradients_passes_the_scalers_verdict_to_loss_scaled():
    """``tx.update(..., grads_finite=finite)`` reaches ``ao.loss_scaled`` inside
    ``ao.weight_gradients``: an fp16 overflow counts against no term and does not advance
    ``step`` (it drives the schedules)."""
    state, finite = fp16_per_term_run(pass_verdict=True)
    assert (~finite).sum() >= 3 and finite[-10:].all()
    assert int(state.step) == int(finite.sum())
    m = ao.metrics(state)
    assert all(int(m[f"nonfinite/{term}"]) == 0 for term in BASE)
    assert int(state.counters.adjustments.sum()) > 0
    # without the verdict the overflows are counted against the terms and are steps
    plain, finite = fp16_per_term_run(pass_verdict=False)
    assert int(plain.counters.nonfinite.max()) == int((~finite).sum())
    assert int(plain.step) == len(finite)


def test_loss_scaled_reads_no_loss_of_an_absent_scheduled_term():
    """A scheduled term whose base is 0 is absent: a NaN fed for it on an overflow step is
    the scaler's overflow, not a loss fault, so ``step`` (which drives the schedules) stays."""
    weighting = ao.loss_scaled(
        seed_controller({"mel": 1.0, "adv": lambda count: jnp.where(count >= 10, 1.0, 0.0)})
    )
    update = jax.jit(weighting.update)
    state = weighting.init()
    losses = {"mel": jnp.float16(0.8), "adv": jnp.float16(jnp.nan)}  # adv is not run yet
    for _ in range(3):
        _, state = update(losses, state, grad_norms=jnp.float32(1.0), grads_finite=True)
    _, state = update(losses, state, grad_norms=jnp.float32(jnp.inf), grads_finite=False)
    m = ao.metrics(state)
    assert int(m["step"]) == 3
    assert int(m["nonfinite/mel"]) == int(m["nonfinite/adv"]) == 0
    # a NaN loss of a present term on such a step is its fault, and is a step
    _, state = update(dict(losses, mel=jnp.float16(jnp.nan)), state, grads_finite=False)
    assert int(ao.metrics(state)["nonfinite/mel"]) == 1 and int(state.step) == 4
