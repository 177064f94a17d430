"""Nash-MTL against TorchJD 0.18.0 on rank-deficient Jacobians (issue 27).

On rank-deficient Gramians the Nash solution ``G alpha = 1 / alpha`` has large ``alpha``
(in units of ``1 / ||g_i||``), where the ridge ``reg_eps`` that detects a missing solution
biased ours: the aggregate came out as TorchJD's direction times a constant (0.97 to 0.99
here; the issue's trial saw other constants). Ours now refines the ridge's solution on the
Gramian itself once a solution is known to exist.

Reference values: Jacobians sampled as TorchJD's own test matrices are
(``tests/unit/aggregation/_matrix_samplers.py``: ``NormalSampler``, ``NonWeakSampler``;
torch 2.14.1, ``torch.Generator`` seeded 0, float64, rounded to float32 as stored here), and
the aggregates of a fresh ``torchjd.aggregation.NashMTL(n_tasks=K, max_norm=m)`` (torchjd
0.18.0, cvxpy 1.9.3, ECOS 2.0.14) on those float32 values in float64, for ``m = 0`` (no
clipping) and ``m = 1``. TorchJD's alphas satisfy ``G alpha = 1 / alpha`` to 1e-8 on these.
torch is not a test dependency, so the values are recorded.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import adaptive_optax as ao

CASES = {
    "normal 3x3 r2": (
        [
            [-0.73334527, -0.615430534, -0.189124987],
            [0.134116575, -0.237406746, 0.362540692],
            [0.306990921, 0.2515769, 0.0848432183],
        ],
        [0.4388017893, -0.9693694648, 1.366666058],
        [0.2533423192, -0.5596656949, 0.7890449792],
    ),
    "nonweak 4x3 r2": (
        [
            [-0.299871683, 0.131118029, -0.048147168],
            [0.329478592, -0.161019653, -0.00108846684],
            [0.287365109, -0.163343042, -0.0738793388],
            [-0.346450388, 0.148638442, -0.0646876246],
        ],
        [-0.1307144459, -0.539686281, -1.921367341],
        [-0.06535722291, -0.2698431402, -0.9606836696],
    ),
    "nonweak 4x3 r3": (
        [
            [-0.691690326, 0.072139591, -1.31004381],
            [-0.549395859, -0.73453182, -0.254601449],
            [0.691850901, 0.295771301, 0.98664546],
            [0.0638605133, -0.24285388, 0.379687846],
        ],
        [-1.5904911, 0.8392727789, 0.8751953171],
        [-0.7952447965, 0.4196359919, 0.437597244],
    ),
    "normal 5x3 r3": (
        [
            [1.29077101, 0.291436791, -0.552887142],
            [0.0581063814, 0.376313865, -0.746725261],
            [-0.343315601, 0.0433535166, -0.467698038],
            [0.825745106, 0.0464967228, 0.83107686],
            [0.572187901, -0.226880416, 0.536540449],
        ],
        [1.728569741, 0.09739456287, -1.415118686],
        [0.7730398931, 0.04355617289, -0.6328603191],
    ),
    "normal 5x6 r2": (
        [
            [-0.154371291, -0.483910501, -0.33336097, -0.0567288138, -0.239412412, 0.0388656855],
            [0.152457058, -0.789766431, -0.437039405, -0.150573701, 0.172728211, -0.226861343],
            [0.0648565218, -0.24614054, -0.131619439, -0.0494148619, 0.0779951811, -0.0831524357],
            [-0.318150401, 0.253890306, 0.0692706704, 0.0869993493, -0.430527866, 0.266128182],
            [-0.0669491142, 0.190867737, 0.0976551473, 0.0407068692, -0.0836889595, 0.0764366388],
        ],
        [-1.060642865, -0.7726686032, -0.7477462776, 0.02616718334, -1.516662269, 0.6464879052],
        [-0.4743338939, -0.3455478929, -0.3344022904, 0.01170231976, -0.6782719645, 0.2891181711],
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
        [0.3681755447, -0.09841213734, 0.5215774045, 1.815983243, -0.7097531054, -0.8838407627],
        [0.1646531046, -0.04401124458, 0.2332565, 0.8121323734, -0.3174112295, -0.3952655945],
    ),
}

ROWS, COLUMNS = 5, 6


@jax.jit
def _padded(jacobian, mask):
    gramian = jacobian @ jacobian.T
    return (
        ao.gramian.nash_mtl(gramian, mask=mask),
        ao.gramian.nash_mtl(gramian, mask=mask, max_norm=1.0),
    )


def aggregates(jacobian):
    """Our unclipped and clipped aggregates in float32, the Jacobian padded to 5 x 6 with
    masked-out terms (one compilation)."""
    jacobian = np.asarray(jacobian, np.float32)
    k, n = jacobian.shape
    padded = np.zeros((ROWS, COLUMNS), np.float32)
    padded[:k, :n] = jacobian
    free, clipped = _padded(padded, np.arange(ROWS) < k)
    return [np.asarray(w, np.float64)[:k] @ jacobian.astype(np.float64) for w in (free, clipped)]


@pytest.mark.parametrize("name", CASES)
def test_rank_deficient_aggregates_match_torchjd_in_norm_and_direction(name):
    jacobian, *expected = CASES[name]
    assert np.linalg.matrix_rank(np.asarray(jacobian, np.float64), tol=1e-6) < len(jacobian)
    for ours, theirs in zip(aggregates(jacobian), expected, strict=True):
        theirs = np.asarray(theirs)
        assert np.linalg.norm(ours - theirs) <= 1e-4 * np.linalg.norm(theirs)
