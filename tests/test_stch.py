"""STCH (``ao.stch_weights``) against the authors' code, and its properties.

Reference values: the authors' ``STCH_MTL/LibMTL/weighting/STCH.py`` (github Xi-L/STCH, commit
a510c1e6), its base class stubbed, run in torch 2.13 float64 on the seeded losses stored here
(``numpy.random.default_rng(seed)``: scales from 1e-2 to 1e2, falling, with noise), one step
per ``backward`` call with ``self.epoch`` set from the step; the weights are the gradient of
the loss it back-propagates with respect to the losses. ``log_steps`` is
``STCH_warmup_epoch`` times the steps per epoch and ``nadir_steps`` the steps per epoch. Ours
(float32, unit base weights) agreed to a relative 3e-6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_optax as ao

REFERENCE = {
    "K=2 mu=1 warmup=2x1": (
        dict(mu=1.0, log_steps=2, nadir_steps=1),
        [
            [4.27844897, 0.12382665],
            [2.72035652, 0.12101216],
            [4.27448562, 0.13052135],
            [2.11772667, 0.06081194],
            [1.96301473, 0.08143542],
            [1.06604392, 0.06815435],
            [1.33334454, 0.05286452],
            [1.48912107, 0.05419142],
            [1.79490648, 0.07371207],
            [1.38113187, 0.07350487],
        ],
        [
            [0.2337295611, 8.075805976],
            [0.3675988763, 8.263632349],
            [0.2339462777, 7.661581803],
            [0.4867036898, 15.93921549],
            [0.4319682921, 14.14666836],
            [0.6064184624, 19.85979303],
            [0.6526090995, 21.37250505],
            [0.6127726405, 20.06788805],
            [0.4751805207, 15.56183952],
            [0.5279320297, 17.28941563],
        ],
    ),
    "K=3 mu=0.5 warmup=1x3": (
        dict(mu=0.5, log_steps=3, nadir_steps=3),
        [
            [0.75422392, 83.14039862, 0.04313163],
            [0.85881239, 68.25559438, 0.03808102],
            [0.99712508, 52.3237637, 0.03639233],
            [0.66228782, 44.7034636, 0.02418441],
            [0.89452274, 42.98454363, 0.02316418],
            [0.5348915, 35.57938141, 0.02293781],
            [0.5633807, 51.27191379, 0.0280044],
            [0.24549774, 17.8538647, 0.01777713],
            [0.44141229, 30.35668836, 0.01809328],
            [0.8557584, 18.45467525, 0.01369544],
            [0.75707926, 28.30206775, 0.01693298],
            [0.31812187, 12.86488385, 0.01320484],
            [0.34700552, 13.20662176, 0.00925696],
            [0.29738374, 13.00714057, 0.0099828],
            [0.28295316, 15.79352174, 0.00799213],
        ],
        [
            [1.325866196, 0.01202784707, 23.18484138],
            [1.164398665, 0.01465081374, 26.25980081],
            [1.002883209, 0.01911177502, 27.47831755],
            [1.509917546, 0.02236963133, 41.34895166],
            [1.117914565, 0.02326417627, 43.17010142],
            [1.869538028, 0.028106166, 43.59614104],
            [0.9554768665, 0.02503807849, 42.0631248],
            [1.705087109, 0.03570545474, 109.3497438],
            [1.765367875, 0.03495815047, 64.08629304],
            [2.576284551, 0.0159975075, 36.51536926],
            [2.147240268, 0.02311323405, 42.53336453],
            [3.146769175, 0.03664211108, 115.6808717],
            [4.222752185, 0.04627582908, 99.76647959],
            [3.957866983, 0.04984585683, 117.6666514],
            [4.072155585, 0.06544734806, 101.8660351],
        ],
    ),
    "K=4 mu=0.1 warmup=0x2": (
        dict(mu=0.1, log_steps=0, nadir_steps=2),
        [
            [0.1909543, 0.22031093, 16.38717757, 0.0294091],
            [0.1095614, 0.11977839, 21.91992981, 0.01922084],
            [0.08255582, 0.10090163, 16.95585914, 0.01853022],
            [0.09709681, 0.09650882, 13.90396955, 0.01321668],
            [0.09602047, 0.11085252, 13.37379676, 0.01767787],
            [0.04984383, 0.11991035, 20.31047718, 0.00865061],
            [0.03635379, 0.05461675, 12.76317016, 0.01330017],
            [0.07637265, 0.09640127, 9.55722648, 0.01260853],
            [0.04752205, 0.09113375, 5.78466954, 0.00923134],
            [0.04866712, 0.10909471, 5.84032701, 0.00685819],
            [0.03457517, 0.07690507, 6.19426815, 0.01276193],
            [0.02112301, 0.0729918, 8.20370512, 0.00507112],
        ],
        [
            [5.236855101, 4.539039438, 0.06102332117, 34.00308068],
            [9.127302134, 8.34875139, 0.04562058404, 52.02686251],
            [0.3286151088, 0.580475145, 0.1886750777, 38.5938203],
            [8.857532317, 2.433956774, 0.1979681978, 11.53994627],
            [5.03160048, 5.319656114, 0.08761979714, 99.29684472],
            [0.0007082520116, 0.5548005967, 0.1936619826, 0.008217506962],
            [0.003843968698, 0.04350177724, 0.275003169, 36.65908715],
            [8.681727132, 20.49518823, 0.05768067836, 64.23619655],
            [0.4144537597, 42.19630997, 0.002146864516, 13.25673654],
            [0.08821924966, 36.59464114, 0.0004020268808, 0.1570227134],
            [0.02459718419, 9.513557439, 0.004128521626, 254.031763],
            [0.001358037436, 27.68967671, 0.2410337969, 0.2921990577],
        ],
    ),
}


def trajectory(weighting, losses, names):
    state = weighting.init()
    update = jax.jit(weighting.update)
    out = []
    for row in losses:
        weights, state = update(dict(zip(names, row, strict=True)), state)
        out.append([float(weights[n]) for n in names])
    assert update._cache_size() == 1
    return np.asarray(out), state


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_weights_match_the_authors_code(case):
    settings_, losses, expected = REFERENCE[case]
    names = [f"t{i}" for i in range(len(losses[0]))]
    weighting = ao.stch_weights(dict.fromkeys(names, 1.0), **settings_)
    got, state = trajectory(weighting, losses, names)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    nadir_steps = settings_["nadir_steps"]
    np.testing.assert_array_equal(state.rule_state.nadir_count, nadir_steps)
    start = settings_["log_steps"]
    np.testing.assert_allclose(
        state.rule_state.nadir_sum, np.sum(losses[start : start + nadir_steps], 0), rtol=1e-6
    )


def scalarization(losses, nadir, prefs, mu):
    """The authors' loss with the paper's preferences: ``K mu logsumexp(lambda l / mu)``."""
    logs = jnp.log(losses / nadir + 1e-20)
    return len(prefs) * mu * jax.nn.logsumexp(prefs * logs / mu)


POSITIVE = st.floats(1e-3, 1e3)


@given(
    st.lists(st.tuples(POSITIVE, POSITIVE, st.floats(0.1, 3.0)), min_size=2, max_size=4),
    st.sampled_from([0.05, 0.5, 1.0, 5.0]),
)
@settings(max_examples=40, deadline=None)
def test_weights_are_the_gradient_of_the_smooth_tchebycheff_scalarization(terms, mu):
    """With base weights as preferences, the STCH weights are the gradient of
    ``K mu log sum_i exp(lambda_i log(L_i / z_i) / mu)`` with respect to the losses."""
    first, later, prefs = (np.asarray(x, np.float32) for x in zip(*terms, strict=True))
    names = [f"t{i}" for i in range(len(prefs))]
    weighting = ao.stch_weights(dict(zip(names, prefs.tolist(), strict=True)), mu=mu)
    state = weighting.init()
    weights, state = weighting.update(dict(zip(names, first.tolist(), strict=True)), state)
    np.testing.assert_allclose([weights[n] for n in names], prefs / first, rtol=1e-5)  # 1 / L
    weights, state = weighting.update(dict(zip(names, later.tolist(), strict=True)), state)
    expected = jax.grad(scalarization)(later, first, prefs, np.float32(mu))
    np.testing.assert_allclose([weights[n] for n in names], expected, rtol=2e-4, atol=1e-30)


def test_mu_to_infinity_gives_the_log_losses_and_to_zero_the_worst_term():
    names = ("a", "b", "c")
    first, later = [1.0, 2.0, 4.0], [0.5, 1.8, 1.0]  # ratios to the nadir: 0.5, 0.9, 0.25
    for mu, expected in ((1e6, [2.0, 1 / 1.8, 1.0]), (1e-3, [0.0, 3 / 1.8, 0.0])):
        weighting = ao.stch_weights(dict.fromkeys(names, 1.0), mu=mu)
        state = weighting.init()
        _, state = weighting.update(dict(zip(names, first, strict=True)), state)
        weights, _ = weighting.update(dict(zip(names, later, strict=True)), state)
        np.testing.assert_allclose([weights[n] for n in names], expected, rtol=1e-4, atol=1e-6)


def test_a_non_finite_loss_is_left_out_of_the_softmax_and_of_the_nadir():
    names = ("a", "b", "c")
    weighting = ao.stch_weights(dict.fromkeys(names, 1.0), nadir_steps=2)
    update = jax.jit(weighting.update)
    state = weighting.init()
    _, state = update({"a": 1.0, "b": np.nan, "c": 2.0}, state)
    np.testing.assert_array_equal(state.rule_state.nadir_count, [1, 0, 1])
    _, state = update({"a": 3.0, "b": 4.0, "c": np.inf}, state)
    np.testing.assert_array_equal(state.rule_state.nadir_count, [2, 1, 1])
    _, state = update({"a": 9.0, "b": 2.0, "c": 6.0}, state)  # the last nadir losses
    np.testing.assert_allclose(state.rule_state.nadir_sum, [4.0, 6.0, 8.0])
    ready_state = state
    weights, state = update({"a": 2.0, "b": -np.inf, "c": 4.0}, ready_state)
    # b is left out: a and c share the softmax; b keeps its weight
    two = ao.stch_weights({"a": 1.0, "c": 1.0})
    two_state = two.init()
    _, two_state = two.update({"a": 2.0, "c": 4.0}, two_state)
    expected, _ = two.update({"a": 2.0, "c": 4.0}, two_state)
    # K = 3 here, 2 there: the same softmax over a and c
    np.testing.assert_allclose(weights["a"] / 3, expected["a"] / 2, rtol=1e-6)
    np.testing.assert_allclose(weights["c"] / 3, expected["c"] / 2, rtol=1e-6)
    assert float(weights["b"]) == float(ready_state.weights["b"])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("losses", [[0.0, 1.0], [-1.0, 1.0], [0.0, 0.0], [1e-30, 3e38]])
def test_zero_negative_tiny_and_huge_losses_give_finite_weights_and_state(losses):
    weighting = ao.stch_weights({"a": 1.0, "b": 1.0})
    state = weighting.init()
    for _ in range(3):
        weights, state = weighting.update(dict(zip("ab", losses, strict=True)), state)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((weights, state)))
        assert all(float(w) >= 0 for w in jax.tree.leaves(weights))


@pytest.mark.parametrize(
    "setting, value", [("mu", 0.0), ("mu", np.nan), ("log_steps", -1), ("log_steps", 1.5),
                       ("nadir_steps", 0), ("nadir_steps", np.inf)],
)  # fmt: skip
def test_bad_settings_fail_at_construction_naming_them(setting, value):
    with pytest.raises(ValueError, match=rf"^stch_weights: {setting}"):
        ao.stch_weights({"a": 1.0}, **{setting: value})
    with pytest.raises(ValueError, match=setting):
        ao.stch_rule(**{setting: value})
