"""GradVac (``ao.gramian.gradvac``, ``ao.gradvac_weights``) against TorchJD 0.18.0, and its
properties.

Reference values: ``torchjd.aggregation.GradVacWeighting(beta, eps)`` of torchjd 0.18.0 (torch
2.13, float64), called on ``J @ J.T`` of the seeded Jacobians stored here (``numpy.random.
default_rng(seed)``: a base matrix plus noise at each step, rounded to 6 decimals), one call per
step with its state kept, and ``torch.randperm`` replaced by ``torch.arange`` so that every term
visits the others in index order (``key=None`` here). With ``eps=0`` ours agreed to 4e-16 in
float64; with TorchJD's ``eps=1e-8`` to 2e-7, the documented departure (``eps`` acts on the
trace-normalized Gramian here, on the raw norms in TorchJD).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adaptive_optax as ao

JACOBIANS = {
    "K=2 beta=0.5": [
        [
            [-1.734294, -0.307138, -0.356306, -0.480914, -0.971077, 0.108555],
            [1.633304, 1.781092, -0.806563, -0.172251, -1.15543, 0.322534],
        ],
        [
            [0.848506, -0.056895, 0.045623, -0.63248, -0.90185, 0.537751],
            [0.496305, 0.779741, -0.831115, -0.832745, -0.451547, 0.325624],
        ],
        [
            [-0.397333, -0.235796, 1.267603, 1.299645, -1.542922, 1.572734],
            [2.3807, 1.57213, -0.492171, -1.51656, 0.543142, 1.609533],
        ],
        [
            [1.567038, 0.919978, 0.926327, -0.861755, -0.539233, 0.886775],
            [0.273311, 1.263179, -0.359844, -0.708587, -1.570569, -0.488036],
        ],
        [
            [-0.223418, -1.067946, 2.031917, -0.291828, -0.272494, 0.154737],
            [2.570778, 2.00337, -0.197053, -3.028229, -0.581651, 0.588275],
        ],
    ],
    "K=3 beta=0.5": [
        [
            [0.125102, 1.856869, 1.135817, -3.472087, -0.605855, 0.306557, -0.874706],
            [0.752033, 0.53843, 1.988404, -0.861194, 0.244629, 0.897763, 0.354452],
            [0.048331, 0.187641, -1.278738, -0.158485, -0.694697, -1.239074, -0.538439],
        ],
        [
            [0.287949, 0.065817, 0.251821, -1.226771, 0.933825, 0.041341, -0.061955],
            [1.294052, 0.621251, -0.360452, 0.613744, 0.145561, -0.033126, -1.02034],
            [0.249454, 0.582795, -0.959277, -0.543576, -0.738627, -0.038959, -0.777608],
        ],
        [
            [-0.540314, 0.981286, -0.042963, -1.114753, 1.512971, -0.872655, -0.333443],
            [1.560836, 0.126551, -0.354519, 0.630217, 0.74947, -0.019748, -0.439083],
            [-1.667574, 0.510838, -0.31694, 0.327802, -0.627002, -1.561872, -0.947988],
        ],
        [
            [1.052615, 1.36543, -0.181758, -1.303996, 1.261815, 0.821098, 0.164041],
            [0.786307, 0.28871, 0.087054, 0.873016, -1.25397, -0.847378, -0.13651],
            [-1.622398, 0.865097, -0.481303, 0.397499, -0.882382, 0.27813, 0.983217],
        ],
        [
            [0.651928, 0.121041, -0.881018, 0.09955, 0.816322, -0.104477, -0.421548],
            [0.427989, 1.046286, 0.321275, 0.039422, -0.024951, -0.3608, -0.990003],
            [0.050592, 1.817996, -1.180027, -2.26544, -0.288405, 1.781126, -0.792598],
        ],
    ],
    "K=4 beta=0.1": [
        [
            [1.051727, 0.055196, -0.244606, -2.214237, 1.663899, 1.838934, -1.229196, 0.43632],
            [0.475562, 0.887314, 0.365996, -1.173805, -0.779454, -0.016729, 0.266954, 0.96028],
            [-0.952735, 0.295633, 0.954721, -2.027207, 0.96433, 1.160641, 0.400906, 1.210265],
            [0.889152, 1.002327, 1.832397, -2.255284, -1.21096, -1.662215, 0.698462, 0.044508],
        ],
        [
            [0.708949, -1.37582, -1.636965, -4.388569, 2.758644, 1.203201, 0.882673, 0.766642],
            [-0.312514, -0.171479, 0.916297, -1.313906, -1.036877, 0.621277, 0.738439, 0.233911],
            [0.324047, -1.158961, 0.840152, -0.975975, 0.234178, 0.080732, -0.393914, 0.562541],
            [-0.107375, 0.114313, 3.199538, -2.172538, -1.606682, -2.173941, 0.663671, 0.166639],
        ],
        [
            [-0.158695, -1.085059, -0.955372, -3.098395, 0.543643, 0.93379, -0.004496, 1.500528],
            [0.798893, 1.412046, 1.232513, -0.675624, 1.168484, -1.629921, 1.22974, -0.863314],
            [0.828578, -2.181903, 0.846247, -1.018872, 0.06732, 1.53077, 0.942855, 0.44715],
            [-1.607112, 0.748491, 1.92556, -1.058621, -1.090951, -2.039037, 0.401962, -0.296937],
        ],
        [
            [-0.8904, -0.996008, -0.48699, -1.888706, 2.856011, 0.497489, 0.115358, 0.418241],
            [1.941361, -0.592802, 1.379269, -1.059486, -0.977375, -0.630791, 0.147715, 0.183433],
            [-0.704171, -0.077582, -0.592756, 0.485665, 0.610691, 1.065847, -0.785416, 0.753661],
            [-1.721181, 0.39367, 2.07638, -1.892102, -1.518007, -0.906707, 1.363685, 0.05873],
        ],
        [
            [-0.901691, -1.166465, -0.569669, -4.138928, 2.401372, 0.952455, -0.526478, 1.532508],
            [0.815539, -0.377022, 0.176501, -0.062219, -0.051882, -1.499965, 1.289608, 0.307112],
            [-1.030411, -0.509626, -0.884931, 0.016778, 1.487087, -0.694838, -0.377327, 0.491987],
            [-1.201806, 2.003343, 2.649482, -1.864384, -1.267495, -3.130655, 1.089351, 0.821841],
        ],
    ],
}
# (beta, eps) -> per-step weights of TorchJD's GradVacWeighting(beta, eps), stateful
WEIGHTS = {
    ("K=2 beta=0.5", 1e-08): [
        [1.41956425443, 1.23273917783],
        [1, 1],
        [1.5538277682, 1.34140804355],
        [1, 1],
        [1.77333150589, 1.2074127749],
    ],
    ("K=2 beta=0.5", 0.0): [
        [1.41956425714, 1.23273917905],
        [1, 1],
        [1.55382777194, 1.3414080456],
        [1, 1],
        [1.77333151085, 1.20741277579],
    ],
    ("K=3 beta=0.5", 1e-08): [
        [1.00197684888, 1.57010255723, 1.94307218291],
        [1.48497538606, 1.31025253556, 1],
        [1.10362941601, 1.8012004498, 1.30814620313],
        [1.69935932061, 1.63952277991, 1.43668154954],
        [1, 1, 1],
    ],
    ("K=3 beta=0.5", 0.0): [
        [1.00197684889, 1.57010256057, 1.94307218946],
        [1.48497539003, 1.31025253771, 1],
        [1.10362941649, 1.80120045557, 1.30814620477],
        [1.69935932439, 1.63952278429, 1.43668155228],
        [1, 1, 1],
    ],
    ("K=4 beta=0.1", 1e-08): [
        [1.0269157291, 1, 1, 1.02505327985],
        [1.06324038713, 1, 1, 1.09659320182],
        [1.35725199962, 1.61815726113, 1.45728059251, 1.17582511203],
        [1.25049705207, 1.83460772732, 3.04779686171, 1.26427178774],
        [1.06174786953, 1.38531648099, 1.33980659888, 1.0623211525],
    ],
    ("K=4 beta=0.1", 0.0): [
        [1.02691572919, 1, 1, 1.02505327993],
        [1.06324038726, 1, 1, 1.09659320206],
        [1.35725200082, 1.61815726363, 1.45728059369, 1.17582511164],
        [1.25049705296, 1.83460773133, 3.04779687485, 1.26427178987],
        [1.0617478697, 1.38531648314, 1.3398066007, 1.06232115272],
    ],
}

BETAS = {"K=2 beta=0.5": 0.5, "K=3 beta=0.5": 0.5, "K=4 beta=0.1": 0.1}
GRADVAC = jax.jit(ao.gramian.gradvac, static_argnames=("beta", "eps"))
PCGRAD = jax.jit(ao.gramian.pcgrad)


def well_scaled(jacobian, ratio=1e-3):
    """Whether every gradient's norm is at least ``ratio`` of the longest (``eps`` and
    rounding stay negligible)."""
    norms = np.linalg.norm(jacobian, axis=1)
    return norms.min() >= ratio * max(norms.max(), 1e-3)


@pytest.mark.parametrize("case, eps", sorted(WEIGHTS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_match_torchjd_step_after_step(case, eps, dtype):
    beta = BETAS[case]
    tol = {("float64", 0.0): 1e-9, ("float64", 1e-8): 1e-6}.get((dtype, eps), 2e-5)
    with jax.enable_x64(dtype == "float64"):
        solve = jax.jit(lambda g, t: ao.gramian.gradvac(g, t, beta=beta, eps=eps))
        k = len(JACOBIANS[case][0])
        targets = jnp.zeros((k, k), dtype)
        for jacobian, expected in zip(JACOBIANS[case], WEIGHTS[case, eps], strict=True):
            jacobian = np.asarray(jacobian)
            weights, targets = solve(jnp.asarray(jacobian @ jacobian.T, dtype), targets)
            np.testing.assert_allclose(weights, expected, rtol=0, atol=tol)
        assert solve._cache_size() == 1


GRADIENTS = hnp.arrays(np.float64, (3, 5), elements=st.floats(-10, 10))


@given(GRADIENTS)
@settings(max_examples=40, deadline=None)
def test_first_step_is_pcgrad(jacobian):
    """Targets of 0: a correction only where the cosine is negative, which projects the
    conflict away (PCGrad), up to ``eps``."""
    if not well_scaled(jacobian):
        return
    with jax.enable_x64(True):
        gramian = jnp.asarray(jacobian @ jacobian.T)
        weights, _ = GRADVAC(gramian, jnp.zeros((3, 3)), eps=0.0)
        np.testing.assert_allclose(weights, PCGRAD(gramian), rtol=1e-7, atol=1e-7)


@given(hnp.arrays(np.float64, (2, 4), elements=st.floats(-10, 10)), st.floats(-0.9, 0.9))
@settings(max_examples=40, deadline=None)
def test_a_correction_sets_the_similarity_to_its_target(jacobian, target):
    norms = np.linalg.norm(jacobian, axis=1)
    if not well_scaled(jacobian):
        return  # a (numerically) zero gradient: no similarity to set
    cosine = jacobian[0] @ jacobian[1] / norms.prod()
    if abs(cosine) > 1 - 1e-6:
        return  # parallel gradients: the correction's direction is undefined
    with jax.enable_x64(True):
        targets = jnp.asarray([[0.0, target], [target, 0.0]])
        gramian = jnp.asarray(jacobian @ jacobian.T)
        weights, new = GRADVAC(gramian, targets, beta=0.25, eps=0.0)
    expected = 0.75 * np.asarray(targets) + 0.25 * cosine * (1 - np.eye(2))
    np.testing.assert_allclose(np.asarray(new), expected, atol=1e-9)  # the targets' EMA
    if cosine < target:
        # w = (1 + c_10, 1 + c_01): row 0's corrected gradient is g_0 + (w_1 - 1) g_1
        corrected = jacobian[0] + (float(weights[1]) - 1.0) * jacobian[1]
        got = corrected @ jacobian[1] / np.linalg.norm(corrected) / norms[1]
        np.testing.assert_allclose(got, target, atol=1e-6)


def test_left_out_terms_keep_their_targets_and_weight_zero():
    jacobian = np.array([[1.0, 0.0, 0.5], [-1.0, 1.0, 0.0], [0.2, -1.0, 1.0]])
    gramian = jnp.asarray(jacobian @ jacobian.T, jnp.float32).at[1, 1].set(jnp.nan)
    targets = jnp.full((3, 3), 0.3).at[jnp.diag_indices(3)].set(0.0)
    mask = jnp.array([True, False, True])
    weights, new = ao.gramian.gradvac(gramian, targets, mask=mask)
    assert float(weights[1]) == 0.0
    np.testing.assert_array_equal(new[1], targets[1])
    np.testing.assert_array_equal(new[:, 1], targets[:, 1])
    # the others are GradVac on their own two-term problem
    two = jacobian[[0, 2]]
    w2, t2 = ao.gramian.gradvac(
        jnp.asarray(two @ two.T, jnp.float32), jnp.array([[0.0, 0.3], [0.3, 0.0]])
    )
    np.testing.assert_allclose(weights[jnp.array([0, 2])], w2, rtol=1e-5)
    np.testing.assert_allclose(new[0, 2], t2[0, 1], rtol=1e-5)
    # an invalid Gramian: uniform weights, targets unchanged
    weights, new = ao.gramian.gradvac(jnp.full((3, 3), jnp.inf), targets)
    np.testing.assert_allclose(weights, 1 / 3)
    np.testing.assert_array_equal(new, targets)


def test_the_preset_keeps_targets_and_draws_orders_from_its_key():
    base = {"a": 1.0, "b": 2.0, "c": 0.5}
    rng = np.random.default_rng(0)
    jacobians = rng.normal(size=(6, 3, 4))

    def run(weighting):
        state = weighting.init()
        update = jax.jit(weighting.update)
        out = []
        for jacobian in jacobians:
            stats = {"gramian": jnp.asarray(jacobian @ jacobian.T, jnp.float32)}
            weights, state = update(dict.fromkeys(base, 1.0), state, grad_stats=stats)
            out.append(jax.tree.leaves(weights))
        assert update._cache_size() == 1
        return np.asarray(out), state

    fixed, state = run(ao.gradvac_weights(base, seed=None))
    # the rule is the solver on D_b G D_b (b over its max), targets carried over
    targets = jnp.zeros((3, 3))
    b = np.array(list(base.values()))
    for t, jacobian in enumerate(jacobians):
        scaled = (b / b.max())[:, None] * (jacobian @ jacobian.T) * (b / b.max())[None, :]
        w, targets = ao.gramian.gradvac(jnp.asarray(scaled, jnp.float32), targets)
        np.testing.assert_allclose(fixed[t], b * np.asarray(w), rtol=2e-5)
    np.testing.assert_allclose(state.rule_state.targets, targets, rtol=1e-5, atol=1e-7)
    first, _ = run(ao.gradvac_weights(base, seed=3))
    again, _ = run(ao.gradvac_weights(base, seed=3))
    other, _ = run(ao.gradvac_weights(base, seed=4))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize(
    "setting, value", [("beta", -0.1), ("beta", 1.5), ("beta", np.nan), ("eps", -1.0),
                       ("eps", np.inf), ("seed", 0.5)],
)  # fmt: skip
def test_bad_settings_fail_at_construction_naming_them(setting, value):
    with pytest.raises(ValueError, match=rf"^gradvac_weights: {setting}"):
        ao.gradvac_weights({"a": 1.0, "b": 1.0}, **{setting: value})
    with pytest.raises(ValueError, match=setting):
        ao.gradvac_rule(**{setting: value})


def test_targets_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 2\)"):
        ao.gramian.gradvac(jnp.eye(2), jnp.zeros((3, 3)))
