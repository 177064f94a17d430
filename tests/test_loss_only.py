"""Loss-only balancers (FAMO, IMTL-L, RLW, GLS, SoftAdapt's finite differences): values computed
by hand from the papers and the authors' code, and SoftAdapt's published README vectors.

The contract every weighting meets (any input, guards, jit / scan / vmap, checkpoints,
``axis_name``) is in ``tests/test_balancers.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_optax as ao
from adaptive_optax._src.balancers.softadapt import forward_difference

UNIT = {"a": 1.0, "b": 1.0, "c": 1.0}


def run_steps_raw(weighting, rows, state=None):
    """``lax.scan`` of ``update`` over rows of losses, one row per step in the terms' leaf
    order, from ``state`` (default: ``init()``); traced: call it inside a jit. Returns the
    weight vectors and the final state."""
    treedef = jax.tree.structure(weighting.init().weights)

    def step(state, row):
        weights, state = weighting.update(jax.tree.unflatten(treedef, list(row)), state)
        return state, jnp.stack(jax.tree.leaves(weights))

    state, weights = jax.lax.scan(step, weighting.init() if state is None else state, rows)
    return weights, state


_run = jax.jit(run_steps_raw, static_argnums=0)


def run_rows(weighting, rows, state=None):
    """:func:`run_steps_raw` under one jit (compiled once per weighting and shape); the weights
    as float64 NumPy."""
    weights, state = _run(weighting, jnp.asarray(rows, jnp.float32), state)
    return np.asarray(weights, np.float64), state


def softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


# ---------------------------------------------------------------- FAMO


def famo_reference(losses, lr, gamma, floor, eps=1e-8):
    """The authors' ``famo.py``, transcribed: ``update`` with the next step's losses.

    ``torch.optim.Adam`` (betas 0.9 / 0.999, eps 1e-8, L2 ``weight_decay``) on the logits,
    fed ``autograd.grad(softmax(w), w, grad_outputs=delta)``; the weights of the loss
    ``sum(log(D) z / c)`` with respect to the raw losses are ``z / (c D)``.
    """
    k = losses.shape[1]
    w, m, v, t = np.zeros(k), np.zeros(k), np.zeros(k), 0
    weights, logits = [], []
    for step, loss in enumerate(losses):
        if step > 0:
            delta = np.log(losses[step - 1] - floor + eps) - np.log(loss - floor + eps)
            z = softmax(w)
            grad = z * delta - z * (z @ delta) + gamma * w  # J_softmax^T delta + L2
            t += 1
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            w = w - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        z = softmax(w)
        share = (z / (loss - floor + eps)) / (z / (loss - floor + eps)).sum()
        weights.append(k * share)
        logits.append(w)
    return np.array(weights), np.array(logits)


def test_famo_follows_the_authors_code_for_four_steps():
    losses = np.array([[2.0, 1.0, 4.0], [1.0, 0.9, 3.0], [0.5, 0.8, 3.5], [0.45, 0.5, 2.0]])
    weighting = ao.famo_weights(UNIT, lr=0.025, weight_decay=0.01)
    out, state = run_rows(weighting, losses)
    weights, logits = famo_reference(losses, 0.025, 0.01, 0.0)
    np.testing.assert_allclose(out, weights, rtol=2e-5)
    np.testing.assert_allclose(state.rule_state.logits, logits[-1], rtol=1e-4, atol=1e-7)
    # by hand, step 1: no previous loss, z uniform: weights 3 (1/L) / sum(1/L)
    np.testing.assert_allclose(out[0], 3 * np.array([0.5, 1, 0.25]) / 1.75, rtol=1e-6)
    # step 2: Adam's first step moves each logit by lr against the sign of its gradient
    # z (delta - z.delta) with delta = log(L1 / L2) = (log 2, log(1/0.9), log(4/3))
    delta = np.log([2.0, 1 / 0.9, 4 / 3])
    first = -0.025 * np.sign(delta - delta.mean())
    np.testing.assert_allclose(logits[1], first, rtol=1e-6)
    np.testing.assert_allclose(out[1], 3 * softmax(first - np.log([1.0, 0.9, 3.0])), rtol=1e-5)
    assert int(state.rule_state.adam_count[0]) == 3


def test_famo_floor_takes_the_log_above_min_losses():
    # log-likelihood-like losses, negative: FAMO takes log(L - floor)
    floors = {"a": -5.0, "b": 0.0, "c": -1.0}
    losses = np.array([[-3.0, 1.0, 0.0], [-4.2, 0.6, -0.5], [-4.5, 0.5, -0.9]])
    weighting = ao.famo_weights(UNIT, min_losses=floors, weight_decay=0.0)
    out, _ = run_rows(weighting, losses)
    expected, _ = famo_reference(losses, 0.025, 0.0, np.array([-5.0, 0.0, -1.0]))
    np.testing.assert_allclose(out, expected, rtol=2e-5)
    # a loss at or below its floor counts as D = eps: finite, and the largest weight
    out, state = run_rows(
        weighting, np.array([[1.0, 1.0, 1.0], [1.0, -2.0, 1.0], [1.0, -9.0, 1.0]])
    )
    assert np.all(np.isfinite(out)) and np.all(np.argmax(out[1:], axis=1) == 1)
    np.testing.assert_allclose(out.sum(axis=1), 3.0, rtol=1e-6)


def test_famo_nonfinite_term_keeps_its_logit_and_moments():
    weighting = ao.famo_weights(UNIT)
    out, state = run_rows(
        weighting, np.array([[1.0, 2.0, 3.0], [0.5, math.nan, 2.0], [0.4, 1.0, 2.0]])
    )
    rule = state.rule_state
    assert list(np.asarray(rule.adam_count)) == [2, 1, 2]
    assert np.all(np.isfinite(out))


def test_famo_min_losses_is_validated():
    with pytest.raises(ValueError, match="min_losses"):
        ao.famo_weights(UNIT, min_losses={"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="min_losses"):
        ao.famo_weights(UNIT, min_losses=math.inf)
    with pytest.raises(ValueError, match="min_losses"):
        ao.guarded(ao.famo_rule(min_losses=[0.0, 1.0]), UNIT).init()


# ---------------------------------------------------------------- IMTL-L


def test_imtl_l_steps_on_its_objective_and_equals_uncertainty_with_s_negated():
    rows = np.array([[3.0, 1.0, 0.5], [2.0, math.nan, 0.0], [1.0, 0.8, -1.0], [1e30, 0.5, 2.0]])
    imtl = ao.imtl_l_weights({"a": 2.0, "b": 1.0, "c": 1.0}, lr=0.5, init_log_scale=0.3)
    uw = ao.uncertainty_weights({"a": 2.0, "b": 1.0, "c": 1.0}, lr=0.5, init_log_variance=-0.3)
    both = jax.jit(lambda rows: (run_steps_raw(imtl, rows), run_steps_raw(uw, rows)))
    (out, state), (w2, s2) = both(jnp.asarray(rows, jnp.float32))
    s = np.full(3, 0.3)
    for t, loss in enumerate(rows[:3]):
        stepped = s - 0.5 * (np.exp(s) * loss - 1)  # d/ds (e^s L - s) = e^s L - 1
        s = np.where(np.isfinite(loss), stepped, s)
        np.testing.assert_allclose(out[t], [2.0, 1.0, 1.0] * np.exp(s), rtol=1e-6)
    assert out[0][1] == pytest.approx(math.exp(0.3 - 0.5 * (math.exp(0.3) - 1)))
    # the same weights, to float rounding, as uncertainty weighting at s -> -s
    np.testing.assert_allclose(out, w2, rtol=1e-6)
    np.testing.assert_allclose(state.rule_state.log_scales, -s2.rule_state.log_variances, rtol=1e-6)


# ---------------------------------------------------------------- RLW


def test_rlw_draws_a_softmax_of_normal_samples_from_its_key():
    base = np.array([2.0, 1.0, 0.5])
    weighting = ao.rlw_weights(dict(zip("abc", base, strict=True)), seed=7)
    rows = np.ones((2000, 3)) * [1.0, 2.0, 3.0]
    out, state = run_rows(weighting, rows)
    key = jax.random.key(7)
    for t in range(3):
        key, draw = jax.random.split(key)
        g = np.asarray(jax.random.normal(draw, (3,)))
        np.testing.assert_allclose(out[t], base * 3 * softmax(g), rtol=1e-6)
    np.testing.assert_allclose((out / base).sum(axis=1), 3.0, rtol=1e-5)
    # E[n softmax(g)_i] = 1 by symmetry; the standard error of the mean here is about 0.02
    np.testing.assert_allclose(out.mean(axis=0), base, rtol=0.1)
    # another key, another sequence (the same compiled function: the key is state)
    start = weighting.init()
    start = start._replace(rule_state=start.rule_state._replace(key=state.rule_state.key))
    other, _ = run_rows(weighting, rows, start)
    assert not np.allclose(out[:10], other[:10])


# ---------------------------------------------------------------- GLS


def test_gls_weights_are_the_gradient_of_the_geometric_mean():
    rows = np.array([[1.0, 2.0, 4.0], [0.5, math.nan, 8.0], [0.0, 1.0, -3.0]])
    weighting = ao.gls_weights({"a": 1.0, "b": 2.0, "c": 1.0}, min_loss=1e-4)
    out, _ = run_rows(weighting, rows)
    base = np.array([1.0, 2.0, 1.0])
    # G = (1 * 2 * 4)^(1/3) = 2: w = base * G / L, and sum(w L / base) = K G
    np.testing.assert_allclose(out[0], base * 2 / np.array([1.0, 2.0, 4.0]), rtol=1e-6)
    np.testing.assert_allclose(np.sum(out[0] / base * rows[0]), 3 * 2.0, rtol=1e-6)
    # a non-finite loss enters G through its last finite loss (2), and keeps its weight
    g = (0.5 * 2.0 * 8.0) ** (1 / 3)
    np.testing.assert_allclose(out[1], [g / 0.5, 2.0 * 2 / 2.0, g / 8.0], rtol=1e-6)
    # losses at or below the floor count as the floor
    g = (1e-4 * 1.0 * 1e-4) ** (1 / 3)
    np.testing.assert_allclose(out[2], base * g / np.array([1e-4, 1.0, 1e-4]), rtol=1e-5)


# ---------------------------------------------------------------- SoftAdapt as its authors run it

# The README of github.com/dr-aheydari/SoftAdapt (commit 66e7bd6, "Example 1" and "Example 2"):
# five losses per component, SoftAdapt / NormalizedSoftAdapt / LossWeightedSoftAdapt(beta=0.1),
# accuracy_order=None (the order is the number of losses minus 1: fourth order).
README_LOSSES = np.array(
    [
        [1, 2, 3, 4, 5],
        [150, 100, 50, 10, 0.1],
        [1500, 1000, 500, 100, 1],
        [10, 20, 30, 40, 50],
    ]
).T  # rows: steps; columns: components 1-4
README = {
    # Example 1: components 1-3
    ("original", 3): [9.9343e-01, 6.5666e-03, 3.8908e-22],
    ("normalized", 3): [0.3221, 0.3251, 0.3528],
    ("loss_weighted", 3): [8.7978e-01, 1.2022e-01, 7.1234e-20],
    # Example 2: components 1-4
    ("original", 4): [2.8850e-01, 1.9070e-03, 1.1299e-22, 7.0959e-01],
    ("normalized", 4): [0.2436, 0.2459, 0.2673, 0.2432],
    ("loss_weighted", 4): [3.8861e-02, 5.3104e-03, 3.1465e-21, 9.5583e-01],
}


@pytest.mark.parametrize("n_terms", [3, 4])
def test_softadapt_reproduces_the_readme_vectors(n_terms):
    base = {f"l{i}": 1.0 for i in range(n_terms)}
    rows = jnp.asarray(README_LOSSES[:, :n_terms], jnp.float32)
    variants = ("original", "loss_weighted", "normalized")
    weightings = [ao.softadapt_weights(base, variant=v, beta=0.1) for v in variants]
    runs = jax.jit(lambda rows: [run_steps_raw(w, rows)[0][-1] for w in weightings])(rows)
    got = {v: np.asarray(w, np.float64) / n_terms for v, w in zip(variants, runs, strict=True)}
    for variant in ("original", "loss_weighted"):
        np.testing.assert_allclose(got[variant], README[variant, n_terms], rtol=1e-4)
    # The README's normalized vectors come from the authors' division by the signed sum of the
    # slopes (reproduced here from their formula); ours divides by the L1 norm (see the
    # docstring), which reverses the order: the term that rises fastest gets the most weight.
    slopes = forward_difference(4) @ README_LOSSES[:, :n_terms]
    authors = softmax(0.1 * slopes / slopes.sum())
    np.testing.assert_allclose(authors, README["normalized", n_terms], rtol=5e-4)
    np.testing.assert_allclose(
        got["normalized"], softmax(0.1 * slopes / np.abs(slopes).sum()), rtol=1e-5
    )
    assert np.argmax(got["normalized"]) == np.argmax(slopes)
    assert np.argmin(README["normalized", n_terms]) == np.argmax(slopes)


def test_forward_differences_are_the_authors_constants():
    # softadapt/constants/_finite_difference_constants.py (orders 1, 3, 5) and findiff's
    # forward coefficients (orders 2, 4), which their code uses for even orders
    expected = {
        1: [-1, 1],
        2: [-3 / 2, 2, -1 / 2],
        3: [-11 / 6, 3, -3 / 2, 1 / 3],
        4: [-25 / 12, 4, -3, 4 / 3, -1 / 4],
        5: [-137 / 60, 5, -5, 10 / 3, -5 / 4, 1 / 5],
    }
    for order, coefficients in expected.items():
        np.testing.assert_allclose(forward_difference(order), coefficients, atol=1e-12)
    # exact on polynomials of degree order: the slope at the oldest point
    for order in range(1, 11):
        nodes = np.arange(order + 1.0)
        c = forward_difference(order)
        for degree in range(order + 1):
            exact = 1.0 if degree == 1 else 0.0
            scale = np.sum(np.abs(c) * nodes**degree)
            assert abs(c @ nodes**degree - exact) <= 1e-14 * scale


def test_softadapt_order_grows_with_the_history_and_order_1_is_the_first_difference():
    rows = np.array([[1.0, 2.0], [2.0, 1.0], [4.0, 1.5], [8.0, math.nan], [9.0, 1.0], [7.0, 3.0]])
    order4 = ao.softadapt_weights({"a": 1.0, "b": 1.0}, beta=0.5)
    order1 = ao.softadapt_weights({"a": 1.0, "b": 1.0}, beta=0.5, order=1)
    both = jax.jit(lambda rows: (run_steps_raw(order4, rows), run_steps_raw(order1, rows)[0]))
    (out4, state), out1 = both(jnp.asarray(rows, jnp.float32))
    a, b = rows[:, 0], np.array([2.0, 1.0, 1.5, 1.0, 3.0])  # b's finite losses

    def expected(slope_a, slope_b):
        return 2 * softmax(0.5 * np.array([slope_a, slope_b]))

    c = forward_difference
    np.testing.assert_allclose(out4[0], [1.0, 1.0])  # one loss: slopes 0
    np.testing.assert_allclose(out4[1], expected(c(1) @ a[:2], c(1) @ b[:2]), rtol=1e-6)
    np.testing.assert_allclose(out4[2], expected(c(2) @ a[:3], c(2) @ b[:3]), rtol=1e-6)
    # step 4: b's loss is NaN: b keeps its history and slope; its weight is held by the guards
    np.testing.assert_allclose(out4[4], expected(c(4) @ a[:5], c(3) @ b[:4]), rtol=1e-6)
    np.testing.assert_allclose(out4[5], expected(c(4) @ a[1:6], c(4) @ b), rtol=1e-6)
    assert list(np.asarray(state.rule_state.count)) == [5, 5]
    np.testing.assert_allclose(out1[5], expected(a[5] - a[4], b[4] - b[3]), rtol=1e-6)


# ---------------------------------------------------------------- metrics and settings


def test_rule_state_vectors_show_in_metrics():
    rows = np.array([[1.0, 2.0, 3.0], [0.5, 2.0, 3.0]])
    expected = {
        "famo": (ao.famo_weights(UNIT), ["logits", "adam_mu", "adam_nu", "adam_count"]),
        "imtl_l": (ao.imtl_l_weights(UNIT), ["log_scales"]),
        "rlw": (ao.rlw_weights(UNIT), ["lambdas"]),
        "softadapt": (ao.softadapt_weights(UNIT), ["count", "slopes", "averages"]),
    }
    states = jax.jit(lambda rows: [run_steps_raw(w, rows)[1] for w, _ in expected.values()])(
        jnp.asarray(rows, jnp.float32)
    )
    for (name, (_, fields)), state in zip(expected.items(), states, strict=True):
        logs = ao.metrics(state)
        for field in fields:
            for term in UNIT:
                assert f"rule/{field}/{term}" in logs
        assert not any(key.startswith("rule/history") for key in logs)
        if name == "imtl_l":
            np.testing.assert_allclose(
                [logs[f"rule/log_scales/{t}"] for t in UNIT],
                np.log([logs[f"weight/{t}"] for t in UNIT]),
                atol=1e-7,
            )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ao.famo_weights(UNIT, lr=0.0), "lr"),
        (lambda: ao.famo_weights(UNIT, weight_decay=-1.0), "weight_decay"),
        (lambda: ao.famo_weights(UNIT, eps=0.0), "eps"),
        (lambda: ao.imtl_l_weights(UNIT, max_log_scale=0.0), "max_log_scale"),
        (lambda: ao.imtl_l_weights(UNIT, init_log_scale=40.0), "init_log_scale"),
        (lambda: ao.rlw_weights(UNIT, seed=1.5), "seed"),
        (lambda: ao.gls_weights(UNIT, min_loss=0.0), "min_loss"),
        (lambda: ao.softadapt_weights(UNIT, order=0), "order"),
        (lambda: ao.softadapt_weights(UNIT, order=11), "order"),
        (lambda: ao.softadapt_weights(UNIT, order=2.5), "order"),
    ],
)
def test_bad_settings_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()
