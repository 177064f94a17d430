"""CAGrad against TorchJD 0.18.0 on rank-deficient and stationary Jacobians (issue 27).

Where 0 is in the convex hull of the gradients (a rank-deficient pair of opposite gradients,
strongly stationary sets, zero gradients beside parallel ones), TorchJD returns a zero
aggregate for ``c >= 1`` (and for any ``c`` when every non-zero gradient points along the
mean), and the aggregate never conflicts with a gradient for ``c >= 1``. Ours returned a
small non-zero aggregate there, which conflicted with a term.

Reference values: the Jacobians were sampled as TorchJD's own test matrices are
(``tests/unit/aggregation/_matrix_samplers.py``: ``NormalSampler``, ``StrongSampler``,
``StrictlyWeakSampler``, ``NonWeakSampler``; torch 2.14.1, ``torch.Generator`` seeded 0,
float64, rounded to float32 as stored here), and the aggregates are
``torchjd.aggregation.CAGrad(c=c)(J)`` of torchjd 0.18.0 (cvxpy 1.9.3, Clarabel 0.11.1) on
those float32 values in float64. torch is not a test dependency, so the values are recorded.
Over the 86 such Jacobians with 2 to 5 rows, our aggregates are within 1e-4 of TorchJD's
norm on all but four full-rank ones (at most 3.2e-4), where TorchJD's own answer is 1.2e-4 to
1.5e-4 away from a float64 SLSQP solution of its problem.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import adaptive_optax as ao

CASES = {
    "normal 2x6 r1": (
        [
            [0.102656163, -0.0958660617, 0.199802086, 0.1374612, 0.177089542, -0.087764442],
            [-0.0590065122, 0.0551035814, -0.114845753, -0.0790123567, -0.101790637, 0.050446786],
        ],
        {
            0.5: [
                0.01091241265,
                -0.01019061865,
                0.02123908243,
                0.01461221329,
                0.0188247261,
                -0.009329414369,
            ],
            1.0: [0, 0, 0, 0, 0, 0],
            2.0: [0, 0, 0, 0, 0, 0],
        },
    ),
    "strong 2x6 r1": (
        [
            [0.125977069, 0.116472051, -0.225433081, -0.450214446, -0.149680883, -0.0461353995],
            [-0.0670132041, -0.0619570352, 0.1199186, 0.239490524, 0.0796223953, 0.0245416183],
        ],
        {
            0.5: [
                0.01474096789,
                0.01362875379,
                -0.02637862095,
                -0.05268097965,
                -0.01751462205,
                -0.005398445133,
            ],
            1.0: [0, 0, 0, 0, 0, 0],
            2.0: [0, 0, 0, 0, 0, 0],
        },
    ),
    "weak 3x3 r1": (
        [[-0.309811831, -0.291371584, -0.379837722], [-0, -0, -0], [-0, -0, -0]],
        {
            0.5: [0, 0, 0],
            1.0: [0, 0, 0],
            2.0: [0, 0, 0],
        },
    ),
    "strong 4x3 r3": (
        [
            [0.151521385, -0.521838069, 0.982058108],
            [-0.865827739, 0.477035195, 0.356515288],
            [0.225905418, -0.0942561254, -0.200957507],
            [0.628516018, 0.929060996, 0.279899448],
        ],
        {
            0.5: [0.1802595831, 0.1369048138, 0.2251866169],
            1.0: [0, 0, 0],
            2.0: [0, 0, 0],
        },
    ),
    "normal 5x3 r2": (
        [
            [-0.0154168718, -0.036022339, 0.0417912975],
            [0.223611921, 0.180857837, -0.108855546],
            [-0.0773216709, -0.0876486525, 0.0741942599],
            [0.0793771148, -0.00911434088, 0.0680829659],
            [-0.102298878, -0.0438016094, -0.00688228384],
        ],
        {
            0.5: [0.00986147466, -0.004167796172, 0.01287706599],
            1.0: [0, 0, 0],
            2.0: [0, 0, 0],
        },
    ),
    "strong 5x6 r2": (
        [
            [0.78762722, 0.286637187, 0.675438702, 0.877233267, -0.0965432599, 0.438873053],
            [-0.193023428, -0.0624316968, -0.161191359, -0.208337992, 0.0310798753, -0.0987950191],
            [0.497735023, 0.193575472, 0.433742881, 0.564937234, -0.0492000245, 0.291283906],
            [-0.25203079, -0.0833325163, -0.211475447, -0.273570806, 0.0388571806, -0.131031677],
            [-1.1375525, -0.478729248, -1.01146436, -1.32202661, 0.0779565573, -0.706430316],
        ],
        {
            0.5: [
                -0.02715450933,
                -0.01710342825,
                -0.0272954976,
                -0.03638455819,
                -0.003528412532,
                -0.0232252854,
            ],
            1.0: [0, 0, 0, 0, 0, 0],
            2.0: [0, 0, 0, 0, 0, 0],
        },
    ),
    "normal 3x3 r2": (
        [
            [-0.73334527, -0.615430534, -0.189124987],
            [0.134116575, -0.237406746, 0.362540692],
            [0.306990921, 0.2515769, 0.0848432183],
        ],
        {
            0.5: [-0.007067819946, -0.1263832223, 0.1110549332],
            1.0: [0.07930526267, -0.1723879534, 0.2443686184],
            2.0: [0.1528915191, -0.3323142601, 0.4710862552],
        },
    ),
    "nonweak 4x6 r3": (
        [
            [0.0402114429, 0.0262802485, 0.115539022, 0.0819319487, -0.0782668442, -0.0467100106],
            [0.423155785, -0.0795683563, 0.130541086, 0.380939871, -0.0897188485, -0.391751021],
            [-0.217310354, -0.0456434153, -0.444565505, 0.100231022, 0.227560923, -0.120838501],
            [-0.231374025, 0.0340909772, -0.22568354, 0.234207198, 0.0720049366, -0.165039569],
        ],
        {
            0.5: [
                0.03716291235,
                0.005678742205,
                -0.009809523664,
                0.2675688194,
                -0.0322935895,
                -0.2199896522,
            ],
            1.0: [
                0.02348296365,
                0.02605247433,
                0.005579730151,
                0.4048526833,
                -0.06510112324,
                -0.3176295378,
            ],
            2.0: [
                -0.007055686726,
                0.06016322906,
                0.01871798514,
                0.6472568362,
                -0.1152854003,
                -0.4915594956,
            ],
        },
    ),
    "normal 5x6 r3": (
        [
            [0.183355033, -0.176455706, 0.0917245075, 0.387479872, -0.150625959, -0.0556043386],
            [-0.00575550599, 0.108678378, 0.217743129, 0.734485805, -0.297905326, -0.488107741],
            [0.756131887, -0.649469197, 0.0206141137, 0.127797335, 0.00819857419, 0.507141292],
            [-0.832161903, 0.813459754, 0.0263565965, -0.0548541881, -0.0334589854, -0.684821963],
            [
                -0.0783620104,
                -0.0601391755,
                -0.00031658588,
                0.128707126,
                -0.0758932382,
                -0.0264627561,
            ],
        ],
        {
            0.5: [
                0.115074027,
                0.00640407965,
                0.120971681,
                0.3651458144,
                -0.13202624,
                -0.1962315389,
            ],
            1.0: [
                0.1966721352,
                0.04163448482,
                0.1755358161,
                0.4704963451,
                -0.1572198006,
                -0.2767045428,
            ],
            2.0: [
                0.3562455618,
                0.1105621855,
                0.2822569809,
                0.6765470536,
                -0.2064960687,
                -0.4341175735,
            ],
        },
    ),
}

ROWS, COLUMNS = 5, 6


@jax.jit
def _padded(jacobian, mask, c):
    return ao.gramian.cagrad(jacobian @ jacobian.T, c=c, mask=mask)


def aggregate(jacobian, c):
    """Our aggregate in float32, the Jacobian padded to 5 x 6 with masked-out terms (one
    compilation for every case and ``c``)."""
    jacobian = np.asarray(jacobian, np.float32)
    k, n = jacobian.shape
    padded = np.zeros((ROWS, COLUMNS), np.float32)
    padded[:k, :n] = jacobian
    weights = np.asarray(_padded(padded, np.arange(ROWS) < k, np.float32(c)))[:k]
    return weights.astype(np.float64) @ jacobian.astype(np.float64)


PAIRS = [(name, c) for name in CASES for c in (0.5, 1.0, 2.0)]
STATIONARY = [
    (name, c)
    for name, c in PAIRS
    if np.linalg.norm(CASES[name][1][c]) < 1e-4 * np.linalg.norm(CASES[name][0])
]


def test_the_cases_cover_zero_and_moving_aggregates():
    assert {name for name, c in STATIONARY if c == 1.0} >= {
        "normal 2x6 r1",
        "strong 2x6 r1",
        "strong 4x3 r3",
        "normal 5x3 r2",
        "strong 5x6 r2",
    }
    assert len(STATIONARY) < len(PAIRS) - 5


@pytest.mark.parametrize("name, c", STATIONARY)
def test_stationary_gradients_give_a_zero_aggregate_as_torchjd(name, c):
    np.testing.assert_array_equal(aggregate(CASES[name][0], c), 0.0)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("c", [1.0, 2.0])
def test_aggregate_conflicts_with_no_gradient_for_c_at_least_one(name, c):
    jacobian = np.asarray(CASES[name][0], np.float64)
    products = jacobian @ aggregate(jacobian, c)
    assert np.all(products >= -1e-6 * np.linalg.norm(products)), products


@pytest.mark.parametrize("name, c", PAIRS)
def test_aggregate_matches_torchjd(name, c):
    jacobian, expected = CASES[name]
    expected = np.asarray(expected[c])
    scale = max(np.linalg.norm(expected), 1e-4 * np.linalg.norm(jacobian))
    assert np.linalg.norm(aggregate(jacobian, c) - expected) <= 1e-4 * scale
