"""Published PINN tables, reproduced at the papers' settings (issue 25, item 1).

One command per table::

    python -m benchmarks.papers burgers --seeds 5 --out results
    python -m benchmarks.papers helmholtz --seeds 5 --out results
    python -m benchmarks.papers klein_gordon --seeds 5 --out results
    python -m benchmarks.papers pages --out results    # the .md pages and docs blocks, from json

Each writes ``results/papers_<name>.json`` (commit, command, machine, per-seed scores, the paired
bootstrap interval of :func:`benchmarks.stats.paired_regret`) and ``results/papers_<name>.md``.

The tables:

- ``burgers``: ConFIG's Burgers example (Liu et al., ICLR 2025; ``docs/examples/pinn_burgers.ipynb``
  of tum-pbs/ConFIG, which prints the published numbers): a 2-50-50-50-50-50-1 tanh network
  (Xavier-normal weights, biases 0.001), 2000 residual / 50 initial / 50 boundary points drawn
  by Latin hypercube afresh for every term at every iteration, Adam at lr 1e-4 for 5000
  iterations; Adam on the plain sum against ConFIG (``ao.config_weights`` on the per-term
  gradients, then Adam). Metric: test MSE against the reference on their 100 x 256 grid, at the
  end of training (our score) and the smallest over training (the notebook's "best mse", which
  reads the test data at every step: shown for comparison with the published number only).
- ``helmholtz`` and ``klein_gordon``: Wang, Teng & Perdikaris (2021), as the authors' code
  (PredictiveIntelligenceLab/GradientPathologiesPINNs) runs them: tanh networks 2-50-50-50-1 and
  2-50x5-1, batches of 128 uniform points per residual / boundary / initial set, inputs
  standardised, Adam at 1e-3 decayed by 0.9 every 1000 steps (continuously), 40,000 steps;
  the plain sum (their M1) against learning-rate annealing (their M2: ``ao.lr_annealing_weights``
  with the code's schedule, ``alpha=0.1`` on the new estimate every 10 steps, fed the code's
  statistics: the largest |gradient| of the residual over the weight matrices, over the mean
  over layers of each term's mean |gradient| of the weight matrices). Metric: relative L2 error
  of u on a 100 x 100 grid.

Every method runs bare (as its paper ran it) and, where ``ao.RECOMMENDED`` has guards for it,
under them (``+guards``), on the same seeds; ``ao.RECOMMENDED["config"]`` is empty, so ConFIG's
guarded arm is its bare arm and is trained once. M-ConFIG (``ao.m_config``) is a gradient
transformation with no loss weights for the guards to act on: it runs once, as the authors ran
it (its own guard skips a non-finite step).

Training is one ``jit`` per arm: ``vmap`` over seeds, ``lax.scan`` over the steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao
from benchmarks import harness, problems, stats

PyTree = Any
SEEDS = tuple(range(5))
PERIOD = 10  # steps per block: the annealing interval of the authors' code
CURVE_POINTS = 20  # metric values kept per run for the json's curves
M_CONFIG_LR = 5e-4  # M-ConFIG's step: plain SGD after the transform, as the authors' notebook


# Networks ---------------------------------------------------------------------------------------


def xavier_init(key: jax.Array, sizes: Sequence[int], bias: float = 0.0) -> list[dict]:
    """Xavier-normal weights (std ``sqrt(2 / (fan_in + fan_out))``), constant biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jnp.sqrt(2.0 / (a + b)) * jax.random.normal(k, (a, b)),
            "b": jnp.full((b,), bias),
        }
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def net(params: list[dict], a: jax.Array, b: jax.Array) -> jax.Array:
    """The tanh network's scalar output at one point ``(a, b)``."""
    return problems.mlp(params, jnp.stack([a, b]))[0]


def d1(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Pointwise ``f'(x)`` of a batched pointwise ``f`` (forward mode: one jvp)."""
    return jax.jvp(f, (x,), (jnp.ones_like(x),))[1]


def d2(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Pointwise ``f''(x)`` of a batched pointwise ``f`` (forward over forward)."""
    return d1(lambda z: d1(f, z), x)


def latin_hypercube(key: jax.Array, n: int, d: int) -> jax.Array:
    """``(n, d)`` points of a scrambled Latin hypercube in ``[0, 1)^d`` (as scipy's default)."""
    k1, k2 = jax.random.split(key)
    perms = jnp.argsort(jax.random.uniform(k1, (d, n)), axis=1).T  # a permutation per dimension
    return (perms.astype(jnp.float32) + jax.random.uniform(k2, (n, d))) / n


# Problems ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Table:
    """One published table: the problem as its paper ran it, its arms and published numbers.

    Attributes:
      name: the command's and files' name.
      title: one line.
      paper: the citation and where the numbers come from.
      source: the code the settings were read from (repository, commit, files).
      settings: the model, data, optimiser and metric, as run here.
      terms: the loss terms, main (residual) first.
      init: ``key -> params``.
      losses: ``(params, key) -> {term: scalar}``: one step's unweighted terms.
      metric: ``params -> {name: scalar}``: the test metrics (lower is better); the first is
        the score.
      learning_rate: an optax schedule of the step.
      steps: the paper's steps.
      eval_every: steps between two evaluations of the metric (a multiple of PERIOD).
      arms: ``(label, method)`` per arm; a ``+guards`` label runs under ``ao.RECOMMENDED``.
      published: per arm label (and per method the library lacks), the paper's number and how
        it was obtained.
      metric_name: what the score is.
      best_metric: also record the smallest metric over training (the notebook's metric).
    """

    name: str
    title: str
    paper: str
    source: str
    settings: str
    terms: tuple[str, ...]
    init: Callable[[jax.Array], PyTree]
    losses: Callable[[PyTree, jax.Array], dict[str, jax.Array]]
    metric: Callable[[PyTree], dict[str, jax.Array]]
    learning_rate: optax.Schedule
    steps: int
    eval_every: int
    arms: tuple[tuple[str, str], ...]
    published: dict[str, dict[str, Any]]
    metric_name: str
    best_metric: bool = False


# Burgers (ConFIG) -------------------------------------------------------------------------------

BURGERS_NT, BURGERS_NX = 100, 256
CONFIG_REPO = "tum-pbs/ConFIG"
CONFIG_COMMIT = "9486243"  # the snapshot read (git log of the fetched mirror)


def burgers_grid() -> tuple[np.ndarray, np.ndarray]:
    """ConFIG's test grid: 100 times in [0, 1], 256 cell centres of [-1, 1]."""
    dx = 2.0 / BURGERS_NX
    return np.linspace(0.0, 1.0, BURGERS_NT), np.linspace(-1 + dx / 2, 1 - dx / 2, BURGERS_NX)


BURGERS_DATA = pathlib.Path(__file__).parent / "data" / "config_burgers" / "simulation_data.npy"


def burgers_table() -> Table:
    t_test, x_test = burgers_grid()
    theirs = jnp.asarray(np.load(BURGERS_DATA), jnp.float32).ravel()  # (100, 256), MIT
    exact = jnp.asarray(problems.cole_hopf(t_test, x_test), jnp.float32).ravel()
    tt, xx = np.meshgrid(t_test, x_test, indexing="ij")
    test_t, test_x = jnp.asarray(tt.ravel(), jnp.float32), jnp.asarray(xx.ravel(), jnp.float32)
    nu = problems.BURGERS_NU

    def u(params, t, x):
        return net(params, x, t)  # their network takes (x, t)

    def losses(params, key):
        k_ini, k_bnd, k_pde = jax.random.split(key, 3)
        x0 = latin_hypercube(k_ini, 50, 1)[:, 0] * 2.0 - 1.0
        u0 = jax.vmap(lambda x: u(params, 0.0, x))(x0)
        initial = jnp.mean((u0 + jnp.sin(np.pi * x0)) ** 2)
        tb = latin_hypercube(k_bnd, 50, 1)[:, 0]
        xb = jnp.concatenate([-jnp.ones(25), jnp.ones(25)])
        boundary = jnp.mean(jax.vmap(lambda t, x: u(params, t, x))(tb, xb) ** 2)
        s = latin_hypercube(k_pde, 2000, 2)
        x, t = s[:, 0] * 2.0 - 1.0, s[:, 1]

        def field(t, x):
            return jax.vmap(lambda t, x: u(params, t, x))(t, x)

        def along_x(z):
            return jax.jvp(lambda z: field(t, z), (z,), (jnp.ones_like(z),))

        (value, u_x), (_, u_xx) = jax.jvp(along_x, (x,), (jnp.ones_like(x),))
        u_t = d1(lambda z: field(z, x), t)
        residual = jnp.mean((u_t + value * u_x - nu * u_xx) ** 2)
        return {"residual": residual, "initial": initial, "boundary": boundary}

    def metric(params):
        pred = jax.vmap(lambda t, x: u(params, t, x))(test_t, test_x)
        return {"mse": jnp.mean((pred - theirs) ** 2), "mse_exact": jnp.mean((pred - exact) ** 2)}

    return Table(
        name="burgers",
        title="Burgers' equation (ConFIG, Liu et al., ICLR 2025)",
        paper=(
            "Liu, Chu, Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed Neural "
            "Networks, ICLR 2025; the numbers are those the authors' Burgers example prints "
            f"({CONFIG_REPO} docs/examples/pinn_burgers.ipynb, one run, seed 19018)"
        ),
        source=(
            f"github.com/{CONFIG_REPO} at {CONFIG_COMMIT}: docs/examples/pinn_burgers.ipynb "
            "(sampling, network, initialisation, optimiser, lr, iterations, metric) and "
            "experiments/PINN/lib_pinns/burgers (the same set-up in the paper's experiment code)"
        ),
        settings=(
            "u_t + u u_x = (0.01/pi) u_xx on [0, 1] x [-1, 1], u(0, x) = -sin(pi x), "
            "u(t, +-1) = 0; 2-50-50-50-50-50-1 tanh network, Xavier-normal weights, biases "
            "0.001; three terms (residual, initial, boundary), each on its own fresh Latin "
            "hypercube sample at every iteration: 2000 residual points in (x, t), 50 initial "
            "x, 50 boundary t (25 at x = -1, 25 at x = +1); Adam, lr 1e-4 constant, 5000 "
            "iterations; Adam arm: the plain sum; ConFIG arm: ao.config_weights on the three "
            "per-term gradients, then Adam; M-ConFIG arm: ao.m_config, one term's gradient per "
            "iteration (initial, boundary, residual in turn, as the authors' "
            "OrderedSliceSelector), then SGD at lr 5e-4 (the notebook's). Metric: MSE of u "
            "against the authors' reference array on their 100 x 256 test grid (and, beside "
            "it, against the Cole-Hopf solution, benchmarks.problems.cole_hopf)"
        ),
        terms=("residual", "initial", "boundary"),
        init=lambda key: xavier_init(key, (2, 50, 50, 50, 50, 50, 1), bias=0.001),
        losses=losses,
        metric=metric,
        learning_rate=optax.constant_schedule(1e-4),
        steps=5000,
        eval_every=10,
        arms=(("adam", "sum"), ("config", "config"), ("m-config", "m_config")),
        published={
            "adam": {"value": 0.03095, "how": "best test MSE over 5000 iterations, one run"},
            "config": {"value": 0.00638, "how": "best test MSE over 5000 iterations, one run"},
            "m-config": {
                "value": 0.00186,
                "how": "best test MSE over 5000 iterations, one run (SGD, lr 5e-4)",
            },
        },
        metric_name="test MSE of u on ConFIG's 100 x 256 grid",
        best_metric=True,
    )


# Wang, Teng & Perdikaris (2021) -----------------------------------------------------------------

WANG_REPO = "PredictiveIntelligenceLab/GradientPathologiesPINNs"
WANG_COMMIT = "93e752b"
WANG_PAPER = (
    "Wang, Teng & Perdikaris, Understanding and mitigating gradient flow pathologies in "
    "physics-informed neural networks, SIAM J. Sci. Comput. 43(5), 2021 (arXiv:2001.04536)"
)
BATCH = 128
WANG_ARMS = (("plain", "sum"), ("lr_annealing", "lr_annealing"), ("lr_annealing+guards", ""))


def wang_schedule() -> optax.Schedule:
    """TensorFlow's ``exponential_decay(1e-3, step, 1000, 0.9, staircase=False)``."""
    return optax.exponential_decay(1e-3, transition_steps=1000, decay_rate=0.9)


def standardised(params, lo: np.ndarray, hi: np.ndarray) -> Callable:
    """``u(a, b)``: the network on inputs standardised by the domain's uniform mean and sd.

    The authors standardise by the mean and sd of 1e5 uniform samples of the domain; here the
    exact values (mean ``(lo + hi) / 2``, sd ``(hi - lo) / sqrt(12)``). Derivatives are taken
    with respect to the unstandardised inputs, as their ``/ sigma`` factors do.
    """
    mu = [float(v) for v in (lo + hi) / 2.0]
    sigma = [float(v) for v in (hi - lo) / np.sqrt(12.0)]

    def u(a, b):
        return net(params, (a - mu[0]) / sigma[0], (b - mu[1]) / sigma[1])

    return u


def relative_l2(pred: jax.Array, exact: jax.Array) -> jax.Array:
    return jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)


def l2_on_grid(exact: Callable, lo: np.ndarray, hi: np.ndarray, start: float, stop: float):
    """The relative L2 error on a 100 x 100 grid of ``[start, stop]^2`` (the authors' test
    grid), of the network with inputs standardised by ``lo`` and ``hi``."""
    grid = np.linspace(start, stop, 100)
    a, b = np.meshgrid(grid, grid)
    a, b = jnp.asarray(a.ravel(), jnp.float32), jnp.asarray(b.ravel(), jnp.float32)

    def metric(params):
        return {"l2": relative_l2(jax.vmap(standardised(params, lo, hi))(a, b), exact(a, b))}

    return metric


HELMHOLTZ_WAVES = (1.0, 4.0)  # u = sin(a1 pi x) sin(a2 pi y)
HELMHOLTZ_LAM = 1.0  # u_xx + u_yy + lam u = f
HELMHOLTZ_LAYERS = (2, 50, 50, 50, 1)
HELMHOLTZ_EDGES = (  # the boundary's four edges, each from its start to its end, as sampled
    ((-1.0, -1.0), (1.0, -1.0)),
    ((1.0, -1.0), (1.0, 1.0)),
    ((1.0, 1.0), (-1.0, 1.0)),
    ((-1.0, 1.0), (-1.0, -1.0)),
)


def helmholtz_table() -> Table:
    (a1, a2), lam = HELMHOLTZ_WAVES, HELMHOLTZ_LAM
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])

    def exact(x, y):
        return jnp.sin(a1 * np.pi * x) * jnp.sin(a2 * np.pi * y)

    def forcing(x, y):
        return (-((a1 * np.pi) ** 2) - (a2 * np.pi) ** 2 + lam) * exact(x, y)

    def losses(params, key):
        u = standardised(params, lo, hi)
        keys = jax.random.split(key, 5)
        boundary = 0.0
        for k, (start, end) in zip(keys[:4], HELMHOLTZ_EDGES, strict=True):
            s = jnp.asarray(start, jnp.float32)
            p = s + (jnp.asarray(end, jnp.float32) - s) * jax.random.uniform(k, (BATCH, 2))
            boundary += jnp.mean((jax.vmap(u)(p[:, 0], p[:, 1]) - exact(p[:, 0], p[:, 1])) ** 2)
        p = -1.0 + 2.0 * jax.random.uniform(keys[4], (BATCH, 2))

        x, y = p[:, 0], p[:, 1]
        field = jax.vmap(u)
        u_xx = d2(lambda z: field(z, y), x)
        u_yy = d2(lambda z: field(x, z), y)
        residual = jnp.mean((u_xx + u_yy + lam * field(x, y) - forcing(x, y)) ** 2)
        return {"residual": residual, "boundary": boundary}

    metric = l2_on_grid(exact, lo, hi, -1.0, 1.0)

    return Table(
        name="helmholtz",
        title="2-D Helmholtz equation (Wang, Teng & Perdikaris 2021)",
        paper=WANG_PAPER + ", Table 3 (mean +- sd of the relative L2 error)",
        source=f"github.com/{WANG_REPO} at {WANG_COMMIT}: Helmholtz/Helmholtz2D.py and "
        "Helmholtz2D_model_tf.py",
        settings=(
            "u_xx + u_yy + u = f on [-1, 1]^2, u = sin(pi x) sin(4 pi y), Dirichlet boundary; "
            "2-50-50-50-1 tanh network, Xavier-normal weights, zero biases, inputs standardised; "
            "per step 128 uniform residual points and 128 on each of the four edges (boundary "
            "term: the sum of the four edges' MSEs); Adam, lr 1e-3 x 0.9^(step/1000), 40,000 "
            "steps; plain: residual + boundary; learning-rate annealing: the boundary weight "
            "from ao.lr_annealing_weights (alpha 0.1 on the new estimate, every 10 steps, the "
            "code's statistics). Metric: relative L2 error of u on a 100 x 100 grid"
        ),
        terms=("residual", "boundary"),
        init=lambda key: xavier_init(key, HELMHOLTZ_LAYERS),
        losses=losses,
        metric=metric,
        learning_rate=wang_schedule(),
        steps=40000,
        eval_every=1000,
        arms=WANG_ARMS,
        published={
            "plain": {
                "value": 1.40e-1,
                "sd": 1.00e-1,
                "how": (
                    "Table 3, M1 (original PINN), mean +- sd over independent runs; quoted from "
                    "memory of the paper, not checked against its text in this repository"
                ),
            },
            "lr_annealing": {
                "value": 1.44e-2,
                "sd": 6.37e-3,
                "how": "Table 3, M2 (learning-rate annealing), mean +- sd over independent runs "
                "(as issue 25 quotes it)",
            },
        },
        metric_name="relative L2 error of u on a 100 x 100 grid",
    )


def klein_gordon_table() -> Table:
    lo, hi = np.array([0.0, 0.0]), np.array([1.0, 1.0])

    def exact(t, x):
        return x * jnp.cos(5 * np.pi * t) + (t * x) ** 3

    def forcing(t, x):  # u_tt - u_xx + u^3 (alpha = -1, beta = 0, gamma = 1, k = 3)
        u_tt = -25 * np.pi**2 * x * jnp.cos(5 * np.pi * t) + 6 * t * x**3
        u_xx = 6 * x * t**3
        return u_tt - u_xx + exact(t, x) ** 3

    def losses(params, key):
        u = standardised(params, lo, hi)
        k_ic, k_b1, k_b2, k_r = jax.random.split(key, 4)
        x0 = jax.random.uniform(k_ic, (BATCH,))
        zeros = jnp.zeros(BATCH)
        ic_u = jnp.mean((jax.vmap(u)(zeros, x0) - exact(zeros, x0)) ** 2)
        ic_ut = jnp.mean(d1(lambda z: jax.vmap(u)(z, x0), zeros) ** 2)
        tb1, tb2 = jax.random.uniform(k_b1, (BATCH,)), jax.random.uniform(k_b2, (BATCH,))
        bc1 = jnp.mean((jax.vmap(u)(tb1, zeros) - exact(tb1, zeros)) ** 2)
        ones = jnp.ones(BATCH)
        bc2 = jnp.mean((jax.vmap(u)(tb2, ones) - exact(tb2, ones)) ** 2)
        p = jax.random.uniform(k_r, (BATCH, 2))

        t, x = p[:, 0], p[:, 1]
        field = jax.vmap(u)
        u_tt = d2(lambda z: field(z, x), t)
        u_xx = d2(lambda z: field(t, z), x)
        residual = jnp.mean((u_tt - u_xx + field(t, x) ** 3 - forcing(t, x)) ** 2)
        return {"residual": residual, "initial": ic_u + ic_ut, "boundary": bc1 + bc2}

    metric = l2_on_grid(exact, lo, hi, 0.0, 1.0)

    return Table(
        name="klein_gordon",
        title="Nonlinear Klein-Gordon equation (Wang, Teng & Perdikaris 2021)",
        paper=WANG_PAPER + ", Klein-Gordon table (relative L2 error)",
        source=f"github.com/{WANG_REPO} at {WANG_COMMIT}: Klein Gordon/Klein_Gordon.py and "
        "Klein_Gordon_model_tf.py",
        settings=(
            "u_tt - u_xx + u^3 = f on (t, x) in [0, 1]^2, u = x cos(5 pi t) + (t x)^3; initial "
            "u and u_t = 0 at t = 0, Dirichlet at x = 0 and 1; 2-50-50-50-50-50-1 tanh network, "
            "Xavier-normal weights, zero biases, inputs standardised; per step 128 uniform "
            "points for the residual, the initial line and each boundary (initial term: MSE of "
            "u plus MSE of u_t; boundary term: the two edges' MSEs summed); Adam, lr 1e-3 x "
            "0.9^(step/1000), 40,000 steps; plain: the sum of the three terms; learning-rate "
            "annealing: the initial and boundary weights from ao.lr_annealing_weights (alpha "
            "0.1 on the new estimate, every 10 steps, the code's statistics). Metric: relative "
            "L2 error of u on a 100 x 100 grid"
        ),
        terms=("residual", "initial", "boundary"),
        init=lambda key: xavier_init(key, (2, 50, 50, 50, 50, 50, 1)),
        losses=losses,
        metric=metric,
        learning_rate=wang_schedule(),
        steps=40000,
        eval_every=1000,
        arms=WANG_ARMS,
        published={
            "plain": {"value": 1.79e-1, "how": "M1 (original PINN), as issue 25 quotes it"},
            "lr_annealing": {
                "value": 1.06e-2,
                "how": "M2 (learning-rate annealing), as issue 25 quotes it",
            },
        },
        metric_name="relative L2 error of u on a 100 x 100 grid",
    )


TABLES: dict[str, Callable[[], Table]] = {
    "burgers": burgers_table,
    "helmholtz": helmholtz_table,
    "klein_gordon": klein_gordon_table,
}


# Training ---------------------------------------------------------------------------------------


def code_statistics(grads: dict[str, PyTree]) -> dict[str, dict[str, jax.Array]]:
    """The annealing statistics as the authors' code computes them, per term.

    ``max_abs``: the largest |gradient| over the weight matrices (biases excluded);
    ``mean_abs``: the mean over layers of each weight matrix's mean |gradient|.
    """
    out: dict[str, dict[str, jax.Array]] = {"max_abs": {}, "mean_abs": {}}
    for term, g in grads.items():
        ws = [layer["w"] for layer in g]
        out["max_abs"][term] = jnp.max(jnp.stack([jnp.max(jnp.abs(w)) for w in ws]))
        out["mean_abs"][term] = jnp.mean(jnp.stack([jnp.mean(jnp.abs(w)) for w in ws]))
    return out


def weighting_of(table: Table, label: str) -> ao.LossWeighting | None:
    """The arm's weighting: None for the plain sum."""
    method = dict(table.arms)[label] or label.removesuffix("+guards")
    guards = dict(ao.RECOMMENDED[method.removesuffix("+guards")]) if "+guards" in label else {}
    base = dict.fromkeys(table.terms, 1.0)
    if method in ("sum", "m_config"):  # M-ConFIG is a gradient transformation, not weights
        return None
    if method == "lr_annealing":
        return ao.lr_annealing_weights(base, main="residual", alpha=0.1, interval=PERIOD, **guards)
    if method == "config":
        return ao.config_weights(base, **guards)
    raise ValueError(f"unknown method {method!r}")


def method_of(table: Table, label: str) -> str:
    return dict(table.arms)[label] or label.removesuffix("+guards")


def _progress(label: str, step: Any, steps: int, metric: Any) -> None:
    step = int(np.max(step))
    if step % max(steps // 10, 1) == 0:
        scores = np.round(np.asarray(metric, float), 5).tolist()
        print(
            f"{time.strftime('%H:%M:%S')} {label}: step {step} of {steps}, metric {scores}",
            file=sys.stderr,
            flush=True,
        )


def train(
    table: Table,
    label: str,
    seeds: Sequence[int],
    steps: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Trains one arm on every seed at once; returns per-seed arrays.

    Returns:
      ``metric`` (seeds, evaluations + 1): the metric at 0 and every ``eval_every`` steps;
      ``weights`` (seeds, evaluations, terms): the weights at each evaluation; ``finished``
      (seeds,): every loss and parameter finite; ``seconds``: compile and run. ``progress``:
      print the step reached, every tenth of the run, to stderr.
    """
    steps = steps or table.steps
    every = min(table.eval_every, steps)
    if every % PERIOD or steps % every:
        raise ValueError(f"steps ({steps}) and eval_every ({every}) must be multiples of {PERIOD}")
    method = method_of(table, label)
    weighting = weighting_of(table, label)
    terms = table.terms

    def one(seed):
        init_key, data_key = jax.random.split(jax.random.key(seed))
        params = table.init(init_key)
        if method == "config":
            assert weighting is not None
            tx = optax.chain(ao.weight_gradients(weighting), optax.adam(table.learning_rate))
        elif method == "m_config":
            tx = optax.chain(ao.m_config(len(terms)), optax.sgd(M_CONFIG_LR))
        else:
            tx = optax.adam(table.learning_rate)
        state = weighting.init() if method == "lr_annealing" else None  # type: ignore[union-attr]
        zero_stats = {s: dict.fromkeys(terms, jnp.float32(0)) for s in ("max_abs", "mean_abs")}

        def losses_at(p, t):
            return table.losses(p, jax.random.fold_in(data_key, t))

        def per_term_gradients(p, t):
            """Each term's gradient by its own backward pass (XLA drops the other terms)."""
            grads = {k: jax.grad(lambda p, k=k: losses_at(p, t)[k])(p) for k in terms}
            return grads, losses_at(p, t)

        def one_term_gradient(p, t):
            """The gradient of the term due at step ``t`` only: the main term last, as the
            authors' trainer cycles (initial, boundary, residual); its index in that cycle."""
            order = (*terms[1:], terms[0])
            loss, grad, index = harness.due_term_gradient(
                lambda p, k: losses_at(p, t)[k], order, t, p
            )
            return grad, {"due": loss}, index

        def step(carry, t, due):
            params, opt_state, state, stats, ok = carry
            if method == "m_config":
                grads, losses, index = one_term_gradient(params, t)
                updates, opt_state = tx.update(grads, opt_state, params, index=index)
            elif method == "config":
                grads, losses = per_term_gradients(params, t)
                updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
            else:
                weights = state.weights if state is not None else dict.fromkeys(terms, 1.0)
                if due and method == "lr_annealing":
                    per_term, losses = per_term_gradients(params, t)
                    grads = jax.tree.map(
                        lambda *g: sum(weights[k] * x for k, x in zip(terms, g, strict=True)),
                        *[per_term[k] for k in terms],
                    )
                    stats = code_statistics(per_term)
                else:

                    def total(p):
                        losses = losses_at(p, t)
                        return ao.weighted_sum(losses, weights), losses

                    (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
                if state is not None:
                    _, state = weighting.update(losses, state, grad_stats=stats)  # type: ignore[union-attr]
                updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
            finite &= jnp.all(jnp.stack([jnp.isfinite(v) for v in losses.values()]))
            return (params, opt_state, state, stats, ok & finite)

        def block(carry, b):
            t0 = b * PERIOD
            carry = step(carry, t0, True)
            carry, _ = jax.lax.scan(
                lambda c, t: (step(c, t, False), None), carry, t0 + 1 + jnp.arange(PERIOD - 1)
            )
            return carry, None

        def evaluation(carry, e):
            blocks = every // PERIOD
            carry, _ = jax.lax.scan(block, carry, e * blocks + jnp.arange(blocks))
            params, opt_state, state, _, _ = carry
            if method == "config":
                w = ao.find_state(opt_state).weights
            elif state is not None:
                w = state.weights
            else:
                w = dict.fromkeys(terms, 1.0)
            vector = jnp.stack([jnp.asarray(w[k], jnp.float32) for k in terms])
            measured = table.metric(params)
            if progress:
                score = next(iter(measured.values()))
                jax.debug.callback(_progress, label, (e + 1) * every, steps, score)
            return carry, (measured, vector)

        carry = (params, tx.init(params), state, zero_stats, jnp.bool_(True))
        first = table.metric(params)
        carry, (metric, weights) = jax.lax.scan(evaluation, carry, jnp.arange(steps // every))
        metric = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, metric)
        return metric, weights, carry[4]

    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(jnp.zeros(len(seeds), jnp.uint32)).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(jnp.asarray(seeds, jnp.uint32)))
    metric, weights, finished = out
    finished = np.asarray(finished)
    return {
        "metric": {
            k: np.where(finished[:, None], np.asarray(v), np.inf) for k, v in metric.items()
        },
        "weights": np.asarray(weights),
        "finished": finished,
        "compile_s": np.float64(compile_s),
        "seconds": np.float64(time.perf_counter() - start),
    }


# Records ----------------------------------------------------------------------------------------


def burgers_reference_check() -> dict[str, Any]:
    """How ConFIG's reference array differs from the Cole-Hopf solution on their test grid.

    Returns the largest absolute difference and where, the mean squared difference, the mean
    squared difference of their first row against the initial condition and against the exact
    solution at ``t = 0.01`` (it fits the latter: their first row is not ``t = 0``), and five
    sample values.
    """
    t, x = burgers_grid()
    theirs = np.load(BURGERS_DATA).astype(np.float64)
    exact = problems.cole_hopf(t, x)
    later = problems.cole_hopf(np.array([0.01]), x)[0]
    diff = np.abs(exact - theirs)
    i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
    samples = [(0, 0), (25, 64), (50, 128), (75, 200), (99, 127)]
    return {
        "max_abs": float(diff.max()),
        "max_at": {"t": float(t[i]), "x": float(x[j])},
        "mse": float(np.mean(diff**2)),
        "mse_t0": float(np.mean(diff[0] ** 2)),
        "mse_t0_shifted": float(np.mean((later - theirs[0]) ** 2)),
        "samples": [
            {
                "t": float(t[a]),
                "x": float(x[b]),
                "theirs": float(theirs[a, b]),
                "ours": float(exact[a, b]),
            }
            for a, b in samples
        ],
    }


def summary(values: np.ndarray) -> dict[str, float]:
    """Median, range, mean and standard deviation (``ddof=1``) over seeds."""
    v = np.asarray(values, float)
    return {
        "median": float(np.median(v)),
        "min": float(np.min(v)),
        "max": float(np.max(v)),
        "mean": float(np.mean(v)),
        "sd": float(np.std(v, ddof=1)) if v.size > 1 else math.nan,
    }


def run_table(
    name: str,
    seeds: Sequence[int],
    steps: int | None,
    command: str,
    reduced: str = "",
    partial: pathlib.Path | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Trains every arm of the table ``name`` (or those in ``only``) on ``seeds``; the record."""
    table = TABLES[name]()
    steps = steps or table.steps
    score_name = next(iter(table.metric(table.init(jax.random.key(0)))))
    arms: list[dict[str, Any]] = []
    labels = [label for label, _ in table.arms if only is None or label in only]
    start = time.perf_counter()
    for label in labels:
        method = method_of(table, label)
        guarded = label.endswith("+guards")
        runs = train(table, label, seeds, steps, progress=partial is not None)
        metrics = runs["metric"]
        keep = np.unique(
            np.linspace(0, metrics[score_name].shape[1] - 1, CURVE_POINTS + 1).astype(int)
        )
        every = min(table.eval_every, steps)
        row: dict[str, Any] = {
            "label": label,
            "method": method,
            "guarded": guarded,
            "guards": dict(ao.RECOMMENDED[method]) if guarded else {},
            "finished": runs["finished"].astype(bool).tolist(),
            "scores": metrics[score_name][:, -1].tolist(),
            "final": {k: v[:, -1].tolist() for k, v in metrics.items()},
            "curve_steps": (keep * every).tolist(),
            "curve": {k: v[:, keep].tolist() for k, v in metrics.items()},
            "final_weights": runs["weights"][:, -1].tolist(),
            "compile_s": float(runs["compile_s"]),
            "seconds": float(runs["seconds"]),
        }
        if table.best_metric:
            row["best"] = {k: np.min(v[:, 1:], axis=1).tolist() for k, v in metrics.items()}
        arms.append(row)
        if partial is not None:  # the arms so far, should the run be cut short
            partial.write_text(json.dumps(arms) + "\n")
    return record(table, arms, seeds, steps, command, reduced, time.perf_counter() - start)


def record(
    table: Table,
    arms: list[dict[str, Any]],
    seeds: Sequence[int],
    steps: int,
    command: str,
    reduced: str,
    seconds: float,
) -> dict[str, Any]:
    """The json record of a table's trained arms: settings, provenance, comparisons."""
    from benchmarks import report

    order = [label for label, _ in table.arms]
    arms = sorted(arms, key=lambda r: order.index(r["label"]))
    score_name = next(iter(table.metric(table.init(jax.random.key(0)))))
    comparisons = []
    by_label = {r["label"]: r for r in arms}
    for r in arms:
        bare_label = r["label"].removesuffix("+guards")
        if r["guarded"] and bare_label in by_label:
            regret = stats.paired_regret(
                np.asarray(r["scores"]), np.asarray(by_label[bare_label]["scores"]), relative=True
            )
            comparisons.append(
                {"arm": r["label"], "against": bare_label, **regret._asdict(), "relative": True}
            )
    aliases = {
        label: label + "+guards"
        for label, method in table.arms
        if label in by_label
        and method not in ("sum", "", "m_config")  # M-ConFIG has no weights to guard
        and not ao.RECOMMENDED[method]
        and label + "+guards" not in by_label
    }
    data: dict[str, Any] = {
        "name": table.name,
        "title": table.title,
        "paper": table.paper,
        "source": table.source,
        "settings": table.settings,
        "terms": list(table.terms),
        "score": score_name,
        "metric_name": table.metric_name,
        "paper_steps": table.steps,
        "steps": steps,
        "eval_every": min(table.eval_every, steps),
        "seeds": list(seeds),
        "reduced": reduced,
        "commit": report.library_commit(),
        "command": command,
        "machine": report.machine(),
        "seconds": seconds,
        "published": table.published,
        "arms": arms,
        "aliases": aliases,
        "comparisons": comparisons,
        "unfinished": [],
    }
    if table.name == "burgers":
        data["reference_check"] = burgers_reference_check()
    return data


# Pages ------------------------------------------------------------------------------------------


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def paper_score(data: dict, row: dict) -> list[float]:
    """The per-seed numbers comparable with the paper's: the best over training where the paper
    reports that (ConFIG's notebook), else the final score."""
    return row["best"][data["score"]] if "best" in row else row["scores"]


def published_text(entry: dict | None) -> str:
    if entry is None:
        return "-"
    sd = f" +- {_g(entry['sd'])}" if "sd" in entry else ""
    return f"{_g(entry['value'])}{sd}"


def comparison_rows(data: dict) -> list[dict[str, Any]]:
    """One row per arm (and per published method the library lacks): the paper's number, ours
    (median and range over seeds) and whether the paper's number lies within our range."""
    out = []
    for row in data["arms"]:
        published = data["published"].get(row["label"].removesuffix("+guards"))
        ours = summary(np.asarray(paper_score(data, row)))
        inside = None
        if published is not None:
            inside = ours["min"] <= published["value"] <= ours["max"]
        labels = [
            row["label"],
            *([data["aliases"][row["label"]]] if row["label"] in data["aliases"] else []),
        ]
        out.append(
            {
                "labels": labels,
                "paper": published,
                "ours": ours,
                "finished": sum(row["finished"]),
                "runs": len(row["finished"]),
                "inside": inside,
            }
        )
    known = {r["label"].removesuffix("+guards") for r in data["arms"]}
    for u in data.get("unfinished", []):
        published = data["published"].get(u["label"].removesuffix("+guards"))
        out.append(
            {"labels": [u["label"]], "paper": published, "ours": None, "stopped": u, "inside": None}
        )
        known.add(u["label"].removesuffix("+guards"))
    for label, entry in data["published"].items():
        if label not in known:
            out.append({"labels": [label], "paper": entry, "ours": None, "inside": None})
    return out


def stopped_text(u: dict) -> str:
    o = summary(np.asarray(u["scores"]))
    return (
        f"stopped at step {u['step']}: {_g(o['median'])} [{_g(o['min'])}, {_g(o['max'])}], "
        "not a final score"
    )


def comparison_table(data: dict) -> list[str]:
    """The markdown table: the paper's number beside ours, bare and guarded."""
    best = "best over training" if any("best" in r for r in data["arms"]) else "final"
    lines = [
        f"| arm | paper | ours, {best}: median [min, max] over {len(data['seeds'])} seeds | "
        "ours: mean +- sd | finished | paper's number within our range |",
        "|---|---|---|---|---|---|",
    ]
    for r in comparison_rows(data):
        label = " = ".join(f"`{x}`" for x in r["labels"])
        if r["ours"] is None:
            ours = stopped_text(r["stopped"]) if "stopped" in r else "not run"
            lines.append(f"| {label} | {published_text(r['paper'])} | {ours} | - | - | - |")
            continue
        o = r["ours"]
        inside = {None: "-", True: "yes", False: "no"}[r["inside"]]
        lines.append(
            f"| {label} | {published_text(r['paper'])} | {_g(o['median'])} [{_g(o['min'])}, "
            f"{_g(o['max'])}] | {_g(o['mean'])} +- {_g(o['sd'])} | {r['finished']}/{r['runs']} "
            f"| {inside} |"
        )
    return lines


def markdown(data: dict, authors: dict | None = None) -> str:
    """The page ``results/papers_<name>.md``, generated from the json (and ``authors``, the
    json of the authors' own code run here, where there is one)."""
    steps_text = f"{data['steps']} steps" + (
        f" (the paper: {data['paper_steps']})" if data["steps"] != data["paper_steps"] else ""
    )
    lines = [
        f"# {data['title']}: the published table, reproduced",
        "",
        f"Command: `{data['command']}` (library commit `{data['commit']}`); machine: "
        f"{data['machine']}; {data['seconds']:.0f} s in all ("
        + ", ".join(f"`{r['label']}` {r['seconds']:.0f} s" for r in data["arms"])
        + f"). Seeds: {', '.join(map(str, data['seeds']))}; {steps_text}.",
        "",
        f"Paper: {data['paper']}. Settings read from {data['source']}.",
        "",
        f"As run here: {data['settings']}.",
        "",
        "Reduced against the paper: " + (data["reduced"] or "nothing") + ".",
        "",
        f"Score: {data['metric_name']}. Every arm runs bare (as the paper ran it) and, where "
        "`ao.RECOMMENDED` has guards for the method, under them (`+guards`), on the same seeds.",
        "",
        *comparison_table(data),
        "",
        "The published numbers: "
        + "; ".join(f"`{k}` {published_text(v)}: {v['how']}" for k, v in data["published"].items())
        + ".",
        "",
    ]
    if "best" in data["arms"][0]:
        lines += [
            "The paper's number is the smallest test MSE over the 5000 iterations (the notebook "
            "evaluates the test grid after every iteration and keeps the best); ours is the "
            f"smallest over evaluations every {data['eval_every']} iterations. That reads the "
            "test data during training, so it serves only to compare with the published number; "
            "the score of this repository is the final one:",
            "",
            "| arm | final test MSE (their reference): median [min, max] | final MSE against "
            "Cole-Hopf: median [min, max] |",
            "|---|---|---|",
        ]
        for r in data["arms"]:
            a, b = (
                summary(np.asarray(r["final"]["mse"])),
                summary(np.asarray(r["final"]["mse_exact"])),
            )
            lines.append(
                f"| `{r['label']}` | {_g(a['median'])} [{_g(a['min'])}, {_g(a['max'])}] | "
                f"{_g(b['median'])} [{_g(b['min'])}, {_g(b['max'])}] |"
            )
        lines.append("")
    for u in data.get("unfinished", []):
        o = summary(np.asarray(u["scores"]))
        published = data["published"].get(u["label"].removesuffix("+guards"))
        others = []
        for r in data["arms"]:
            if u["step"] in r["curve_steps"]:
                at = r["curve_steps"].index(u["step"])
                values = np.asarray(r["curve"][data["score"]], float)[:, at]
                others.append(f"`{r['label']}` {_g(float(np.median(values)))} at that step")
        lines += [
            f"`{u['label']}` was trained only to step {u['step']} of the paper's "
            f"{data['paper_steps']} in the time this run had: its {data['score']} there, over "
            f"the seeds (the progress lines of its log, one per seed), was "
            f"{_g(o['median'])} [{_g(o['min'])}, {_g(o['max'])}] (median [min, max]"
            + (f"; {', '.join(others)}" if others else "")
            + f"; the paper: {published_text(published)}). It is not "
            "in the table above, and has no paired interval.",
            "",
        ]
    if data["comparisons"]:
        lines += [
            "Guarded against bare on the same seeds (final score; median of the per-seed "
            "differences over the bare arm's median, 95 % bootstrap interval, "
            "`benchmarks.stats.paired_regret`):",
            "",
        ]
        for c in data["comparisons"]:
            lines.append(
                f"- `{c['arm']}` vs `{c['against']}`: {100 * c['value']:+.1f} % "
                f"[{100 * c['low']:+.1f} %, {100 * c['high']:+.1f} %]"
            )
        lines.append("")
    for label, alias in data["aliases"].items():
        lines += [
            f'`ao.RECOMMENDED["{label}"]` is empty: the library recommends running {label} bare, '
            f"so `{alias}` is `{label}` and was trained once.",
            "",
        ]
    for row in data["arms"]:
        if row["method"] == "m_config":
            lines += [
                f"`{row['label']}` has no guarded twin: `ao.m_config` is a gradient "
                "transformation with no loss weights for the guards to act on (its own guard "
                "skips a step whose gradient is not finite); it ran as the authors ran it.",
                "",
            ]
    if "reference_check" in data:
        c = data["reference_check"]
        lines += [
            "Reference: the score reads the authors' array (`benchmarks/data/config_burgers/`, "
            "MIT, shipped unchanged with its licence), so that it compares with the published "
            "numbers; the second column above reads the Cole-Hopf solution of this repository "
            f"(`benchmarks.problems.cole_hopf`) on the same grid. The two differ: largest "
            f"difference {_g(c['max_abs'])} at t = {c['max_at']['t']:.3f}, x = "
            f"{c['max_at']['x']:.3f} (the shock, which a numerical solver smears), mean squared "
            f"difference {_g(c['mse'])}. Their first row is not the initial condition: its mean "
            f"squared difference from -sin(pi x) is {_g(c['mse_t0'])}, from the exact solution "
            f"at t = 0.01 {_g(c['mse_t0_shifted'])} (the notebook labels the rows "
            "linspace(0, 1, 100)). "
            "Sample values (t, x: theirs / Cole-Hopf): "
            + "; ".join(
                f"{s['t']:.3f}, {s['x']:.3f}: {s['theirs']:.4f} / {s['ours']:.4f}"
                for s in c["samples"]
            )
            + ".",
            "",
        ]
    lines += [outside_text(data), ""]
    notes = NOTES.get(data["name"])
    if notes:
        lines += [notes(data), ""]
    if authors is not None:
        lines += authors_code_text(data, authors)
    lines.append(
        "Per-seed scores, curves and final weights: the json of the same name. Regenerate "
        "this page: `python -m benchmarks.papers pages --out results`."
    )
    return "\n".join(lines) + "\n"


def outside_text(data: dict) -> str:
    """Where each published number falls outside our seeds' range, and by how much."""
    parts = []
    for r in comparison_rows(data):
        if r.get("inside") is False:
            o, value = r["ours"], r["paper"]["value"]
            side = "below" if value < o["min"] else "above"
            parts.append(
                f"`{r['labels'][0]}`: the paper's {_g(value)} is {side} our range "
                f"[{_g(o['min'])}, {_g(o['max'])}], {value / o['median']:.2g} times our median"
            )
    text = (
        "Outside our seeds' range: " + "; ".join(parts) + "."
        if parts
        else "Every published number of an arm trained to the end lies within our seeds' range."
    )
    by_label = {r["label"]: r for r in data["arms"]}
    for c in data["comparisons"]:
        a, b = by_label[c["arm"]], by_label[c["against"]]
        if a["scores"] == b["scores"] and a["final_weights"] == b["final_weights"]:
            text += (
                f" `{c['arm']}` and `{c['against']}` are identical on every seed: the "
                "recommended guards never acted here."
            )
    return text


def normal_tail_text(scores: np.ndarray, paper: dict, whose: str) -> str:
    """How unlikely ``scores`` all fall on one side of the paper's mean, were the paper's runs
    normal with its mean and sd."""
    from scipy import stats as scipy_stats

    above = scores.min() > paper["value"]
    edge = scores.min() if above else scores.max()
    tail = scipy_stats.norm.sf(abs(edge - paper["value"]) / paper["sd"])
    return (
        f"were the paper's runs normal with its mean and sd, all {scores.size} of {whose} "
        f"would fall {'above' if above else 'below'} {_g(edge)} with probability "
        f"{_g(tail**scores.size)}"
    )


def evidence_text(data: dict) -> str:
    """For each arm whose published number is outside our range: how unlikely our seeds are
    under the paper's own mean and sd (where it gives one), and whether our runs were still
    improving at the end (the last tenth of the steps)."""
    parts = []
    by_label = {r["label"]: r for r in data["arms"]}
    for r in comparison_rows(data):
        if r.get("inside") is not False:
            continue
        row, paper = by_label[r["labels"][0]], r["paper"]
        scores = np.asarray(paper_score(data, row))
        text = f"`{row['label']}`"
        if "sd" in paper:
            text += (
                f": {normal_tail_text(scores, paper, 'ours')}, so seed noise does not explain "
                "the gap"
            )
        curve = np.asarray(row["curve"][data["score"]], float)
        steps = np.asarray(row["curve_steps"])
        tenth = int(np.argmin(np.abs(steps - 0.9 * steps[-1])))
        change = np.median(curve[:, -1] / curve[:, tenth]) - 1
        text += (
            f"; over the last tenth of the steps our score changed by {100 * change:+.1f} % "
            "(median over seeds)"
        )
        parts.append(text)
    return ("Evidence: " + "; ".join(parts) + ".") if parts else ""


def authors_code_text(data: dict, authors: dict) -> list[str]:
    """The section of a table's page on the authors' own code run here (``authors``: the json
    of ``benchmarks.authors_helmholtz``): their seeds beside the paper's number and ours, and
    what that says of the gap."""
    from scipy import stats as scipy_stats

    ours = {r["label"]: np.asarray(paper_score(data, r)) for r in data["arms"]}
    lines = [
        "## The authors' code, run here",
        "",
        f"Their code ({authors['source']}), set up as their driver script sets it up and "
        f"trained here for {authors['iterations']} iterations on seeds "
        f"{', '.join(map(str, authors['seeds']))} (each seeds NumPy, their sampler, and the "
        "TensorFlow graph, their initialisation; their code sets no seed). TensorFlow "
        f"{authors['tensorflow']}; machine: {authors['machine']}. Command: "
        f"`{authors['command']}` ("
        + ", ".join(f"`{a['label']}` {a['seconds']:.0f} s" for a in authors["arms"])
        + "). The two columns of seeds are not paired (other random streams), so they are "
        "compared by a two-sided Mann-Whitney U test.",
        "",
        "| arm | paper | their code, here: median [min, max] | their code: mean +- sd | ours: "
        "median [min, max] | ours against theirs (p) | paper's number within their range |",
        "|---|---|---|---|---|---|---|",
    ]
    findings = []
    for arm in authors["arms"]:
        label, theirs = arm["label"], np.asarray(arm["scores"])
        t, paper = summary(theirs), data["published"].get(label)
        inside = paper is not None and t["min"] <= paper["value"] <= t["max"]
        mine = ours.get(label)
        p_value = (
            float(scipy_stats.mannwhitneyu(mine, theirs, alternative="two-sided").pvalue)
            if mine is not None
            else math.nan
        )
        o = summary(mine) if mine is not None else None
        lines.append(
            f"| `{label}` | {published_text(paper)} | {_g(t['median'])} [{_g(t['min'])}, "
            f"{_g(t['max'])}] | {_g(t['mean'])} +- {_g(t['sd'])} | "
            + (f"{_g(o['median'])} [{_g(o['min'])}, {_g(o['max'])}]" if o else "not run")
            + f" | {_g(p_value)} | {'-' if paper is None else 'yes' if inside else 'no'} |"
        )
        if paper is None or mine is None:
            continue
        apart = p_value < 0.05
        text = (
            f"`{label}`: their code's {theirs.size} seeds here span [{_g(t['min'])}, "
            f"{_g(t['max'])}], {'holding' if inside else 'missing'} the paper's "
            f"{_g(paper['value'])}"
        )
        off = not inside
        if "sd" in paper:  # the paper's mean +- sd: does their code's mean here match it?
            mean_p = float(scipy_stats.ttest_1samp(theirs, paper["value"]).pvalue)
            off |= mean_p < 0.05
            text += (
                f"; their mean here, {_g(t['mean'])}, is "
                f"{'resolvably' if mean_p < 0.05 else 'not resolvably'} "
                f"{'above' if t['mean'] > paper['value'] else 'below'} the paper's mean "
                f"(one-sample t-test, p = {_g(mean_p)})"
            )
        text += (
            f"; ours is {'told apart from' if apart else 'not told apart from'} theirs "
            f"(p = {_g(p_value)}; medians {_g(o['median'])} and {_g(t['median'])})"
        )
        if apart:
            text += ": the port differs from their code in a way that changes the score"
        elif off:
            text += (
                ": the port trains as their code does here, and their own code, run as "
                "published, does not reproduce the paper's number either, so the gap is not in "
                "this repository's port"
            )
        else:
            text += ": the port trains as their code does here, and both agree with the paper"
        findings.append(text)
    if findings:
        lines += ["", "; ".join(findings) + "."]
    return [*lines, ""]


def wang_notes(data: dict) -> str:
    return " ".join(
        x
        for x in (
            evidence_text(data),
            "What differs from the authors' runs, as far as their code shows: JAX and float32 "
            "on a CPU against TensorFlow 1 on a GPU; the inputs standardised by the exact mean "
            "and sd of the uniform domain rather than those of 1e5 samples; the annealing "
            "statistics taken before the step on the step's batch, where their code takes them "
            "after it on the same batch; seeds (theirs unknown). The paper reports a mean and "
            "sd over its runs, ours a median and range over 5 seeds (and the mean +- sd "
            "beside).",
        )
        if x
    )


def burgers_notes(data: dict) -> str:
    return " ".join(
        x
        for x in (
            evidence_text(data),
            "The published numbers come from one run each (PyTorch, seed 19018, on a GPU); "
            "ours from 5 seeds of JAX on a CPU, with the same network, initialisation, "
            "sampling, optimiser and metric. One departure of the method: with three terms "
            "ConFIG's weights on the gradients can be negative, and the library's ConFIG "
            "clips a negative weight to 0 (its docstring says so); the authors' update does "
            "not.",
        )
        if x
    )


NOTES: dict[str, Callable[[dict], str]] = {
    "burgers": burgers_notes,
    "helmholtz": wang_notes,
    "klein_gordon": wang_notes,
}
"""Per table, the explanation of where the paper's number falls (from the json's numbers)."""


# The pages that quote the tables ----------------------------------------------------------------

BLOCK = "published tables"
BEGIN = "<!-- generated from results/papers_*.json (python -m benchmarks.papers pages): {name} -->"
END = "<!-- end of generated block: {name} -->"
QUOTING = ("MEASURED.md", "docs/guides/suite.md")


def block_text(results: dict[str, dict]) -> str:
    """The generated block of MEASURED.md and the suite page: paper against ours, per arm."""
    lines = [
        "| table | arm | paper | ours, as the paper measures: median [min, max] | seeds | steps |",
        "|---|---|---|---|---|---|",
    ]
    for name, data in results.items():
        for r in comparison_rows(data):
            label = " = ".join(f"`{x}`" for x in r["labels"])
            if r["ours"] is None:
                ours = stopped_text(r["stopped"]) if "stopped" in r else "not run"
                steps = r["stopped"]["step"] if "stopped" in r else "-"
                seeds = len(data["seeds"]) if "stopped" in r else "-"
                lines.append(
                    f"| {name} | {label} | {published_text(r['paper'])} | {ours} | {seeds} | "
                    f"{steps} |"
                )
                continue
            o = r["ours"]
            lines.append(
                f"| {name} | {label} | {published_text(r['paper'])} | {_g(o['median'])} "
                f"[{_g(o['min'])}, {_g(o['max'])}] | {len(data['seeds'])} | {data['steps']} |"
            )
    return "\n".join(lines)


def load(out: pathlib.Path) -> dict[str, dict]:
    return {
        name: json.loads((out / f"papers_{name}.json").read_text())
        for name in TABLES
        if (out / f"papers_{name}.json").exists()
    }


def authors_run(out: pathlib.Path, name: str) -> dict | None:
    """The table's run of the authors' own code (``papers_<name>_authors.json``), if any."""
    path = out / f"papers_{name}_authors.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_pages(out: pathlib.Path, root: pathlib.Path) -> list[pathlib.Path]:
    """Each table's page from its json, and (for ``results/``) the quoting pages' blocks."""
    results = load(out)
    written = []
    for name, data in results.items():
        path = out / f"papers_{name}.md"
        path.write_text(markdown(data, authors_run(out, name)))
        written.append(path)
    if results and out.resolve() == (root / "results").resolve():  # the committed tables only
        begin, end = BEGIN.format(name=BLOCK), END.format(name=BLOCK)
        for page in QUOTING:
            file = root / page
            text = file.read_text()
            if begin not in text:
                continue
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            file.write_text(f"{head}{begin}\n{block_text(results)}\n{end}{tail}")
            written.append(file)
    return written


def unfinished_arm(label: str, log: pathlib.Path, seeds: int) -> dict[str, Any]:
    """An arm whose run was stopped before its last step: the last complete set of progress
    lines its run printed (``step N of M, metric X``, one line per seed) in ``log``."""
    by_step: dict[int, list[float]] = {}
    total = 0
    for line in log.read_text().splitlines():
        head, sep, tail = line.partition(f" {label}: step ")
        if not sep or ", metric " not in tail:
            continue
        where, _, value = tail.partition(", metric ")
        step, _, of = where.partition(" of ")
        by_step.setdefault(int(step), []).append(float(value))
        total = int(of)
    complete = [step for step, values in by_step.items() if len(values) == seeds]
    if not complete:
        raise ValueError(f"{log}: no complete progress of {label}")
    step = max(complete)
    return {"label": label, "step": step, "of": total, "scores": by_step[step], "log": str(log)}


def merge(
    name: str,
    sources: Sequence[str],
    reduced: str = "",
    unfinished: Sequence[str] = (),
    default_seeds: Sequence[int] = SEEDS,
    default_steps: int | None = None,
    merge_command: str = "",
) -> dict[str, Any]:
    """One record of the table ``name`` from runs split by arm (same seeds and steps).

    ``unfinished``: ``LABEL=LOG`` per arm stopped before its last step (see
    :func:`unfinished_arm`); the page shows its scores at the step it reached, apart.

    Each source is a json record (``papers_<name>.json`` of a run with ``--arms``) or
    ``PATH=COMMAND``: a ``.partial.json`` arm list of a run cut short after some arms, with the
    command that ran it. Where two sources hold the same arm, the first wins.
    """
    table = TABLES[name]()
    arms: dict[str, dict[str, Any]] = {}
    commands, seeds, steps = [], None, None
    for source in sources:
        path, _, command = source.partition("=")
        loaded = json.loads(pathlib.Path(path).read_text())
        if isinstance(loaded, dict):
            rows, command = loaded["arms"], loaded["command"]
            if seeds is not None and (loaded["seeds"], loaded["steps"]) != (seeds, steps):
                raise ValueError(f"{path}: other seeds or steps")
            seeds, steps = loaded["seeds"], loaded["steps"]
        else:
            rows = loaded
        commands.append(command + " (" + ", ".join(r["label"] for r in rows) + ")")
        for r in rows:
            arms.setdefault(r["label"], r)
    if seeds is None or steps is None:  # partial lists only: the given seeds and steps
        seeds, steps = list(default_seeds), default_steps or table.steps
    for r in arms.values():
        if len(r["scores"]) != len(seeds):
            raise ValueError(f"arm {r['label']}: {len(r['scores'])} seeds, not {len(seeds)}")
    seconds = sum(r["seconds"] for r in arms.values())
    command = "; ".join([*commands, merge_command or f"python -m benchmarks.papers merge {name}"])
    data = record(table, list(arms.values()), seeds, steps, command, reduced, seconds)
    for item in unfinished:
        label, _, log = item.partition("=")
        data["unfinished"].append(unfinished_arm(label, pathlib.Path(log), len(seeds)))
    return data


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.papers", description=__doc__)
    parser.add_argument("table", choices=[*TABLES, "pages", "merge"])
    parser.add_argument(
        "sources",
        nargs="*",
        type=pathlib.Path,
        help="merge: the table's name, then json records (or .partial.json arm lists) of the "
        "same seeds and steps, each with its command (a record's own; PATH=COMMAND for a "
        "partial list)",
    )
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds 0 .. N-1")
    parser.add_argument("--steps", type=int, default=None, help="default: the paper's")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/papers"))
    parser.add_argument("--reduced", default="", help="what was reduced against the paper")
    parser.add_argument("--arms", default=None, help="comma-separated arm labels (default: all)")
    parser.add_argument(
        "--unfinished",
        action="append",
        default=[],
        help="merge: LABEL=LOG, an arm stopped before its last step, read from its progress log",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(__file__).resolve().parent.parent
    if args.table == "pages":
        write_pages(args.out, root)
        return None
    command = "python -m benchmarks.papers " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.table == "merge":
        data = merge(
            str(args.sources[0]),
            [str(p) for p in args.sources[1:]],
            args.reduced,
            args.unfinished,
            tuple(range(args.seeds)),
            args.steps,
            command,
        )
        (args.out / f"papers_{data['name']}.json").write_text(json.dumps(data, indent=1) + "\n")
        (args.out / f"papers_{data['name']}.md").write_text(
            markdown(data, authors_run(args.out, data["name"]))
        )
        return data
    partial = args.out / f"papers_{args.table}.partial.json"
    data = run_table(
        args.table,
        tuple(range(args.seeds)),
        args.steps,
        command,
        args.reduced,
        partial,
        args.arms.split(",") if args.arms else None,
    )
    partial.unlink()
    (args.out / f"papers_{args.table}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / f"papers_{args.table}.md").write_text(
        markdown(data, authors_run(args.out, args.table))
    )
    return data


if __name__ == "__main__":
    main()
