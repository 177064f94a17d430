"""UW-SO and MetaBalance against numpy transcriptions of their authors' updates."""

import jax
import numpy as np
import pytest

import adaptive_optax as ao

NAMES = ("a", "b", "c")  # leaf order (sorted keys); "a" is the main task


def run_steps(weighting, losses, norms=None):
    update = jax.jit(weighting.update)
    state = weighting.init()
    out = []
    for t in range(len(losses)):
        kwargs = {}
        if norms is not None:
            kwargs["grad_norms"] = dict(zip(NAMES, map(float, norms[t]), strict=True))
        weights, state = update(
            dict(zip(NAMES, map(float, losses[t]), strict=True)), state, **kwargs
        )
        out.append(np.asarray(jax.tree.leaves(weights), np.float64))
    return np.asarray(out), state


def uw_so_reference(losses, temperature, eps=1e-8):
    """``UW_SO.backward``: ``F.softmax((1 / (losses + E)) / T, dim=-1)`` on detached losses."""
    logits = (1.0 / (np.asarray(losses, np.float64) + eps)) / temperature
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 10.0])
def test_uw_so_is_the_authors_softmax_of_inverse_losses(temperature):
    losses = np.random.default_rng(0).uniform(0.2, 3.0, (5, 3))
    weighting = ao.uw_so_weights(dict.fromkeys(NAMES, 1.0), temperature=temperature)
    out, _ = run_steps(weighting, losses)
    # the weights returned by update at step t weight step t + 1: they are step t's softmax
    np.testing.assert_allclose(out, uw_so_reference(losses, temperature), rtol=1e-5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)


def test_uw_so_base_weights_are_prior_factors_and_a_nonfinite_term_holds():
    base = {"a": 2.0, "b": 1.0, "c": 0.5}
    weighting = ao.uw_so_weights(base)
    out, _ = run_steps(weighting, [[1.0, 2.0, np.nan]])
    soft = uw_so_reference([1.0, 2.0], 1.0)
    np.testing.assert_allclose(out[0], [2.0 * soft[0], 1.0 * soft[1], 0.5], rtol=1e-5)


def metabalance_reference(norms, relax_factor=0.7, beta=0.9):
    """``MetaBalance.balance_GradMagnitudes`` for one parameter tensor, on gradient norms.

    Each task's gradient ``g_i`` (norm ``|g_i|``) is replaced by
    ``(m_0 g_i / m_i) r + g_i (1 - r)``, with ``m_i <- m_i beta + (1 - beta) |g_i|`` started at
    zero: the factor on ``g_i`` is the weight.
    """
    m = np.zeros(norms.shape[1])
    out = []
    for g in norms:
        factors = []
        for i, gi in enumerate(g):
            m[i] = m[i] * beta + (1 - beta) * gi  # the main task (index 0) is updated first
            factors.append((m[0] / m[i]) * relax_factor + (1.0 - relax_factor))
        out.append(factors)
    return np.asarray(out)


@pytest.mark.parametrize("relax_factor, beta", [(0.7, 0.9), (0.3, 0.5)])
def test_metabalance_matches_the_authors_update(relax_factor, beta):
    rng = np.random.default_rng(1)
    norms = rng.uniform(0.1, 5.0, (6, 3))
    losses = rng.uniform(0.5, 1.0, (6, 3))
    weighting = ao.metabalance_weights(
        dict.fromkeys(NAMES, 1.0), main="a", relax_factor=relax_factor, beta=beta
    )
    out, state = run_steps(weighting, losses, norms)
    np.testing.assert_allclose(out, metabalance_reference(norms, relax_factor, beta), rtol=1e-5)
    assert list(np.asarray(state.rule_state.count)) == [6, 6, 6]


def test_metabalance_main_by_index_zero_norm_and_nonfinite_main():
    base = {"a": 1.0, "b": 2.0, "c": 1.0}
    weighting = ao.metabalance_weights(base, main=0)
    out, _ = run_steps(weighting, [[1.0, 1.0, 1.0]] * 2, [[2.0, 1.0, 0.0], [np.inf, 1.0, 1.0]])
    # c has no gradient: factor 1; b: 0.7 * 2 / 1 + 0.3 = 1.7, times its base 2
    np.testing.assert_allclose(out[0], [1.0, 3.4, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out[1], out[0], rtol=1e-6)  # the main term not finite: hold
    with pytest.raises(ValueError, match="main"):
        ao.metabalance_weights(base, main="buy")
    with pytest.raises(ValueError, match="relax_factor"):
        ao.metabalance_weights(base, main=0, relax_factor=1.0)
    with pytest.raises(ValueError, match="temperature"):
        ao.uw_so_weights(base, temperature=0.0)
