"""The problems of the benchmark suite: each one's model, data, loss terms and task metric.

A :class:`Problem` is everything :mod:`benchmarks.harness` needs to train it: ``init`` (a key to
parameters), ``losses`` (parameters, a data key and the step to the unweighted loss terms of one
batch), ``metrics`` (parameters to held-out task metrics, one per head, lower is better), the
default base weights, the optimiser, the grids of the protocol (learning rates, weight ratios,
weight scales) and the number of steps. All data is generated or ships inside a package (no
download at run time); everything is a pure function of its seeds.

The problems (``PROBLEMS``):

- ``tts_sgd`` and ``tts_adam``: the tiny TTS-like model of :mod:`benchmarks.tts_model` (mel,
  stop, attention and duration losses, the seed's base weights), with SGD and momentum 0.9 (the
  regime where a weight is also a step size, and large rates collapse runs) and with Adam;
- ``poisson``: the 1-D Poisson PINN of Wang, Teng & Perdikaris (2021, section 2.3), ``C = 4 pi``
  (the former ``benchmarks/pinn.py``), reduced to a 2 x 32 tanh network;
- ``burgers``: Burgers' equation as ConFIG (Liu et al., ICLR 2025) and the PINN literature set it
  up (``nu = 0.01 / pi``, ``u(0, x) = -sin(pi x)``, ``u(t, +-1) = 0``; residual, initial and
  boundary terms), reduced to fit: a 3 x 32 tanh network, 128 + 64 + 64 random points, a few
  thousand Adam steps, where ConFIG's authors train far longer (their relative errors: Adam
  0.031, ConFIG 0.0064, M-ConFIG 0.0019);
- ``digits``: a two-digit Multi-MNIST-style task built from scikit-learn's bundled
  ``load_digits`` (two 8 x 8 digits overlapped into one 8 x 12 image; one head per digit; the
  metric per head is the held-out error rate);
- ``imbalanced``: a three-head regression whose targets differ by four orders of magnitude in
  scale and whose smallest head is mostly noise (metric per head: held-out MSE over the clean
  target's variance), where uniform weights are known to be poor;
- ``toy``: CAGrad's two-objective toy (Liu et al. 2021) with Adam as Nash-MTL and FAMO run it,
  from random starts; the metric is the distance of the final point to the known Pareto set.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import tts_model

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of the suite.

    Attributes:
      name: short name, used on the command line and in file names.
      title: one line for tables.
      setting: the model, data, optimiser and what was reduced, for the results file.
      base: the default base weights (a dict of floats).
      init: ``key -> params``.
      losses: ``(params, key, step) -> {term: scalar}``: the unweighted terms of one batch.
      metrics: ``params -> {head: scalar}``: the test split's task metrics, lower is better:
        the reported score only.
      validation: ``params -> {head: scalar}``: the validation split's metrics, the only ones
        selection reads; None where the problem has no data to overfit (the PINNs, the toy:
        selection reads ``metrics`` on calibration seeds disjoint from the evaluation seeds).
      optimizer: ``learning_rate -> optax.GradientTransformation`` (the rate may be traced).
      rates: the learning-rate grid.
      ratios: the ratio grid of the fixed weights (dicts of positive floats; normalised to sum 1).
      scales: the scale grid, as factors of ``sum(base)``: fixed weights ``w = s * sum(base) * r``.
      steps: training steps.
      main: the main term (for methods that need one, e.g. learning-rate annealing).
      regret: ``"relative"`` (``m / m_best - 1``) or ``"absolute"`` (``m - m_best``, for a
        metric whose best value is about 0).
      metric_name: what the score (the mean of the heads' metrics) is.
      gradient_filter: the part of a term's gradient that gradient statistics use.
      quick: overrides of the fields above for ``--quick``.
      screen: for a confirmation problem (:data:`CONFIRMATION`), the screen problem whose
        committed results choose its arms and seed its fixed-weight grid; None for a screen
        problem.
    """

    name: str
    title: str
    setting: str
    base: dict[str, float]
    init: Callable[[jax.Array], PyTree]
    losses: Callable[[PyTree, jax.Array, jax.Array], dict[str, jax.Array]]
    metrics: Callable[[PyTree], dict[str, jax.Array]]
    optimizer: Callable[[Any], optax.GradientTransformation]
    rates: tuple[float, ...]
    ratios: tuple[dict[str, float], ...]
    scales: tuple[float, ...]
    steps: int
    main: str
    metric_name: str
    regret: str = "relative"
    gradient_filter: Callable[[PyTree], PyTree] | None = None
    validation: Callable[[PyTree], dict[str, jax.Array]] | None = None
    quick: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    screen: str | None = None

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(self.base)

    @property
    def selection_metrics(self) -> Callable[[PyTree], dict[str, jax.Array]]:
        """The metrics selection reads: the validation split's, else the test metrics."""
        return self.validation if self.validation is not None else self.metrics

    def quick_version(self) -> Problem:
        """The problem with its ``quick`` overrides: tiny, for the test command."""
        return dataclasses.replace(self, **self.quick, quick={})


def joint(base: Mapping[str, float], spread: float, count: int, seed: int = 0) -> tuple:
    """The base ratio and ``count`` joint moves of it: every term at once, log-uniformly.

    Each move multiplies every term's weight by its own ``spread ** u``, ``u ~ U(-1, 1)`` (a
    fixed draw of ``seed``), so the grid spans ratios up to ``spread ** 2`` between any two
    terms without being built around a known answer.

    Args:
      base: the base weights.
      spread: the largest factor on one term.
      count: moves besides the base ratio.
      seed: the draw.

    Returns:
      A tuple of ``count + 1`` dicts of positive floats.
    """
    u = np.random.default_rng(seed).uniform(-1.0, 1.0, (count, len(base)))
    moves = [dict(base)]
    for row in spread**u:
        moves.append({k: float(v * f) for (k, v), f in zip(base.items(), row, strict=True)})
    return tuple(moves)


def log_rates(low: float, count: int, factor: float) -> tuple[float, ...]:
    """``count`` learning rates from ``low``, each ``factor`` times the last (rounded)."""
    return tuple(float(f"{low * factor**i:.3g}") for i in range(count))


def sgd(learning_rate):
    return optax.sgd(learning_rate, momentum=0.9)


def adam(learning_rate):
    return optax.adam(learning_rate)


def dense(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
    """A Glorot-initialised layer with zero biases."""
    scale = jnp.sqrt(2.0 / (n_in + n_out))
    return {"w": scale * jax.random.normal(key, (n_in, n_out)), "b": jnp.zeros((n_out,))}


def mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """A tanh MLP, linear last layer."""
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


# The TTS model ----------------------------------------------------------------------------------


def tts(optimizer: str) -> Problem:
    """The tiny TTS model of :mod:`benchmarks.tts_model`, with SGD + momentum or with Adam."""
    dataset, held_out = tts_model.make_dataset()
    validation_batch = tts_model.make_validation()

    def losses(params, key, step):
        del step
        rows = jax.random.randint(key, (tts_model.BATCH,), 0, tts_model.DATASET_SIZE)
        return tts_model.losses_of(params, jax.tree.map(lambda x: x[rows], dataset))

    def metrics(params):
        return {"mel": tts_model.losses_of(params, held_out)["mel"]}

    def validation(params):
        return {"mel": tts_model.losses_of(params, validation_batch)["mel"]}

    return Problem(
        name=f"tts_{optimizer}",
        title=f"TTS model, {'SGD + momentum' if optimizer == 'sgd' else 'Adam'}",
        setting=(
            "benchmarks/tts_model.py (encoder, duration head, attention decoder; batches of 8 "
            f"of 512 synthetic sentences), {'SGD, momentum 0.9' if optimizer == 'sgd' else 'Adam'}"
            "; selection on a validation batch of 64, score: mel loss (L1 + L2) on a held-out "
            "test batch of 64"
        ),
        base=dict(tts_model.BASE_WEIGHTS),
        init=tts_model.init_params,
        losses=losses,
        metrics=metrics,
        validation=validation,
        optimizer=sgd if optimizer == "sgd" else adam,
        rates=log_rates(0.03, 4, 2.0) if optimizer == "sgd" else log_rates(0.001, 4, 3.0),
        ratios=joint(tts_model.BASE_WEIGHTS, 4.0, 8),
        scales=(0.5, 1.0) if optimizer == "sgd" else (1.0,),
        steps=1000,
        main="mel",
        metric_name="held-out mel loss",
        quick=dict(
            steps=30,
            rates=(0.05, 50.0) if optimizer == "sgd" else (0.01,),
            ratios=joint(tts_model.BASE_WEIGHTS, 4.0, 1),
            scales=(1.0,),
        ),
    )


# PINNs ------------------------------------------------------------------------------------------


def poisson_u(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """The PINN's ``u(x)`` at a scalar ``x``."""
    return mlp(params, jnp.reshape(x, (1,)))[0]


def poisson_losses(params, x: jax.Array, c: float) -> dict[str, jax.Array]:
    """The boundary and residual losses (mean squared errors) at collocation points ``x``."""
    u_xx = jax.vmap(jax.grad(jax.grad(lambda z: poisson_u(params, z))))(x)
    residual = jnp.mean((u_xx + c**2 * jnp.sin(c * x)) ** 2)
    ends = jnp.array([0.0, 1.0])
    u_ends = jax.vmap(lambda z: poisson_u(params, z))(ends)
    return {"boundary": jnp.mean((u_ends - jnp.sin(c * ends)) ** 2), "residual": residual}


def poisson_error(params, c: float) -> jax.Array:
    """The relative L2 error of ``u`` against ``sin(c x)`` on 1001 points of ``[0, 1]``."""
    grid = jnp.linspace(0.0, 1.0, 1001)
    exact = jnp.sin(c * grid)
    pred = jax.vmap(lambda z: poisson_u(params, z))(grid)
    return jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)


def poisson() -> Problem:
    """1-D Poisson, ``u'' = -C^2 sin(C x)``, ``u(0) = 0``, ``u(1) = sin C``, ``C = 4 pi``."""
    c = 4 * np.pi

    def losses(params, key, step):
        del step
        return poisson_losses(params, jax.random.uniform(key, (128,)), c)

    base = {"boundary": 1.0, "residual": 1.0}
    return Problem(
        name="poisson",
        title="1-D Poisson PINN (C = 4 pi)",
        setting=(
            "Wang, Teng & Perdikaris (2021) section 2.3, reduced: 2 x 32 tanh MLP, 128 random "
            "collocation points per step, Adam; metric: relative L2 error of u on 1001 points"
        ),
        base=base,
        init=lambda key: mlp_init(key, (1, 32, 32, 1)),
        losses=losses,
        metrics=lambda params: {"u": poisson_error(params, c)},
        optimizer=adam,
        rates=log_rates(1e-3, 4, 3.0),
        ratios=tuple({"boundary": b, "residual": 1.0} for b in (1.0, 10.0, 100.0, 1e3, 1e4)),
        scales=(1.0,),
        steps=2000,
        main="residual",
        metric_name="relative L2 error of u",
        quick=dict(steps=30, rates=(1e-3,), ratios=({"boundary": 1.0, "residual": 1.0},)),
    )


BURGERS_NU = 0.01 / np.pi


def cole_hopf(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The exact solution of the Burgers problem at times ``t`` and points ``x``: ``(t, x)``.

    ``u(t, x) = -int sin(pi (x - e)) f(x - e) g(e) de / int f(x - e) g(e) de`` with
    ``f(y) = exp(-cos(pi y) / (2 pi nu))`` and a Gaussian ``g`` of variance ``2 nu t``,
    evaluated by Gauss-Hermite quadrature in float64 (log-sum-exp for the large exponents);
    ``u(0, x) = -sin(pi x)``.
    """
    t, x = np.asarray(t, np.float64), np.asarray(x, np.float64)
    z, w = np.polynomial.hermite.hermgauss(200)
    u = np.empty((t.size, x.size))
    for i, ti in enumerate(t):
        if ti == 0:
            u[i] = -np.sin(np.pi * x)
            continue
        y = x[:, None] - np.sqrt(4 * BURGERS_NU * ti) * z[None, :]
        log_f = -np.cos(np.pi * y) / (2 * np.pi * BURGERS_NU) + np.log(w)[None, :]
        log_f = log_f - log_f.max(axis=1, keepdims=True)
        f = np.exp(log_f)
        u[i] = -(np.sin(np.pi * y) * f).sum(axis=1) / f.sum(axis=1)
    return u


@functools.cache
def burgers_reference(nt: int = 26, nx: int = 129) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact solution of the Burgers problem on a grid: ``(t, x, u)`` (:func:`cole_hopf`)."""
    t = np.linspace(0.0, 1.0, nt)
    x = np.linspace(-1.0, 1.0, nx)
    return t, x, cole_hopf(t, x)


def burgers() -> Problem:
    """Burgers' equation, ``u_t + u u_x = nu u_xx`` on ``[0, 1] x [-1, 1]`` (ConFIG's setup)."""
    t_ref, x_ref, u_ref = burgers_reference()
    tt, xx = np.meshgrid(t_ref, x_ref, indexing="ij")
    ref_points = jnp.asarray(np.stack([tt.ravel(), xx.ravel()], axis=1), jnp.float32)
    ref_u = jnp.asarray(u_ref.ravel(), jnp.float32)

    def u(params, t, x):
        return mlp(params, jnp.stack([t, x]))[0]

    def losses(params, key, step):
        del step
        k1, k2, k3, k4 = jax.random.split(key, 4)
        t = jax.random.uniform(k1, (128,))
        x = jax.random.uniform(k2, (128,), minval=-1.0, maxval=1.0)

        def residual_at(t, x):
            u_t = jax.grad(u, 1)(params, t, x)
            u_x_fn = jax.grad(u, 2)
            u_x = u_x_fn(params, t, x)
            u_xx = jax.grad(lambda x: u_x_fn(params, t, x))(x)
            return u_t + u(params, t, x) * u_x - BURGERS_NU * u_xx

        residual = jnp.mean(jax.vmap(residual_at)(t, x) ** 2)
        x0 = jax.random.uniform(k3, (64,), minval=-1.0, maxval=1.0)
        u0 = jax.vmap(lambda x: u(params, 0.0, x))(x0)
        initial = jnp.mean((u0 + jnp.sin(np.pi * x0)) ** 2)
        tb = jax.random.uniform(k4, (64,))
        xb = jnp.where(jnp.arange(64) % 2 == 0, -1.0, 1.0)
        boundary = jnp.mean(jax.vmap(lambda t, x: u(params, t, x))(tb, xb) ** 2)
        return {"residual": residual, "initial": initial, "boundary": boundary}

    def metrics(params):
        pred = jax.vmap(lambda p: u(params, p[0], p[1]))(ref_points)
        return {"u": jnp.linalg.norm(pred - ref_u) / jnp.linalg.norm(ref_u)}

    base = {"residual": 1.0, "initial": 1.0, "boundary": 1.0}
    return Problem(
        name="burgers",
        title="Burgers PINN (ConFIG's setup, reduced)",
        setting=(
            "u_t + u u_x = (0.01/pi) u_xx, u(0,x) = -sin(pi x), u(t,+-1) = 0 (Liu et al., ICLR "
            "2025, ConFIG), reduced: 3 x 32 tanh MLP, 128 residual + 64 initial + 64 boundary "
            "random points per step, Adam, 2000 steps; metric: relative L2 error of u against "
            "the Cole-Hopf solution on a 26 x 129 grid"
        ),
        base=base,
        init=lambda key: mlp_init(key, (2, 32, 32, 32, 1)),
        losses=losses,
        metrics=metrics,
        optimizer=adam,
        rates=log_rates(1e-3, 4, 3.0),
        ratios=joint(base, 10.0, 8),
        scales=(1.0,),
        steps=2000,
        main="residual",
        metric_name="relative L2 error of u",
        quick=dict(steps=20, rates=(1e-3,), ratios=(base,)),
    )


# Two digits -------------------------------------------------------------------------------------


@functools.cache
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8 x 8 digits, scaled to [0, 1]: ``(images (1797, 8, 8), labels)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int32)


DIGITS_TRAIN = 1200  # the first images train; the rest make the held-out pairs
DIGITS_SHIFT = 4  # the right digit starts 4 columns right of the left one (8 x 12 images)


def overlap(left: jax.Array, right: jax.Array) -> jax.Array:
    """Two ``(..., 8, 8)`` digits overlapped into one ``(..., 8 * 12)`` image (pixel max)."""
    pad = [(0, 0)] * (left.ndim - 1)
    a = jnp.pad(left, pad + [(0, DIGITS_SHIFT)])
    b = jnp.pad(right, pad + [(DIGITS_SHIFT, 0)])
    return jnp.maximum(a, b).reshape(left.shape[:-2] + (8 * (8 + DIGITS_SHIFT),))


def trunk_init(key: jax.Array, sizes: tuple[int, ...]) -> dict | list[dict]:
    """A tanh trunk's layers: one layer as a dict (the screen problems), more as a list."""
    layers = mlp_init(key, sizes) if len(sizes) > 2 else [dense(key, *sizes)]
    return layers[0] if len(layers) == 1 else layers


def trunk(params: dict | list[dict], x: jax.Array) -> jax.Array:
    """The trunk's features: every layer tanh."""
    for layer in params if isinstance(params, list) else [params]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x


def parameter_count(problem: Problem) -> int:
    """The number of trained parameters of ``problem``'s model."""
    shapes = jax.eval_shape(problem.init, jax.random.key(0))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)))


def digits(hidden: tuple[int, ...] = (64,), name: str = "digits") -> Problem:
    """Two overlapped digits, one classification head each (Multi-MNIST, on sklearn's digits).

    Args:
      hidden: the trunk's widths (the screen: one layer of 64; the confirmation: wider).
      name: the problem's name.
    """
    images, labels = digit_images()
    train_x, train_y = jnp.asarray(images[:DIGITS_TRAIN]), jnp.asarray(labels[:DIGITS_TRAIN])
    test_x, test_y = jnp.asarray(images[DIGITS_TRAIN:]), jnp.asarray(labels[DIGITS_TRAIN:])
    half = len(test_x) // 2  # the held-out images: the first half validates, the rest test
    rng = np.random.default_rng(0)

    def pairs_of(x, y):
        pairs = rng.integers(0, len(x), (1000, 2))
        return overlap(x[pairs[:, 0]], x[pairs[:, 1]]), (y[pairs[:, 0]], y[pairs[:, 1]])

    valid_x, valid_y = pairs_of(test_x[:half], test_y[:half])
    held_x, held_y = pairs_of(test_x[half:], test_y[half:])

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "trunk": trunk_init(k1, (96, *hidden)),
            "left": dense(k2, hidden[-1], 10),
            "right": dense(k3, hidden[-1], 10),
        }

    def apply(params, x):
        h = trunk(params["trunk"], x)
        return {k: h @ params[k]["w"] + params[k]["b"] for k in ("left", "right")}

    def losses(params, key, step):
        del step
        i = jax.random.randint(key, (64, 2), 0, DIGITS_TRAIN)
        out = apply(params, overlap(train_x[i[:, 0]], train_x[i[:, 1]]))
        ce = optax.softmax_cross_entropy_with_integer_labels
        return {
            "left": jnp.mean(ce(out["left"], train_y[i[:, 0]])),
            "right": jnp.mean(ce(out["right"], train_y[i[:, 1]])),
        }

    def error_rates(params, x, labels):
        out = apply(params, x)
        return {
            head: jnp.mean(jnp.argmax(out[head], axis=-1) != y)
            for head, y in zip(("left", "right"), labels, strict=True)
        }

    base = {"left": 1.0, "right": 1.0}
    widths = "-".join(str(n) for n in (96, *hidden))
    return Problem(
        name=name,
        title="Two-digit Multi-MNIST (sklearn digits)",
        setting=(
            "scikit-learn's load_digits (1797 8 x 8 images): pairs overlapped into 8 x 12 "
            "images (the right digit shifted 4 columns), 1200 training images; of the other "
            "597, 1000 validation pairs of the first 298 (selection) and 1000 test pairs of the "
            f"rest (the score); a {widths} tanh trunk, one linear head per digit; batches of 64 "
            "pairs; SGD, momentum 0.9; metric per head: error rate"
        ),
        base=base,
        init=init,
        losses=losses,
        metrics=lambda params: error_rates(params, held_x, held_y),
        validation=lambda params: error_rates(params, valid_x, valid_y),
        optimizer=sgd,
        rates=log_rates(0.01, 4, 3.0),
        ratios=tuple({"left": r, "right": 1.0 - r} for r in (0.2, 0.35, 0.5, 0.65, 0.8)),
        scales=(0.5, 1.0, 2.0),
        steps=1500,
        main="left",
        metric_name="mean held-out error rate of the two heads",
        gradient_filter=lambda g: g["trunk"],
        quick=dict(steps=20, rates=(0.03,), ratios=(base,), scales=(1.0,)),
    )


# Imbalanced regression --------------------------------------------------------------------------

IMBALANCED_SCALES = {"large": 100.0, "medium": 1.0, "small": 0.01}
IMBALANCED_NOISE = {"large": 0.0, "medium": 0.1, "small": 0.03}  # absolute: small is noise 3x


def imbalanced(hidden: tuple[int, ...] = (32,), name: str = "imbalanced") -> Problem:
    """Three regression heads on a shared trunk, target scales 100, 1 and 0.01.

    Args:
      hidden: the trunk's widths (the screen: one layer of 32; the confirmation: wider).
      name: the problem's name.
    """
    inputs = 8
    heads = tuple(IMBALANCED_SCALES)
    directions = jax.random.normal(jax.random.key(1234), (len(heads), inputs)) / np.sqrt(inputs)
    held_x = jax.random.normal(jax.random.key(99), (512, inputs))  # the test split
    valid_x = jax.random.normal(jax.random.key(98), (512, inputs))  # the validation split

    def clean(x):
        return {
            h: IMBALANCED_SCALES[h] * jnp.sin(2.0 * x @ directions[k]) for k, h in enumerate(heads)
        }

    def init(key):
        keys = jax.random.split(key, len(heads) + 1)
        return {
            "trunk": trunk_init(keys[0], (inputs, *hidden)),
            "heads": {h: dense(k, hidden[-1], 1) for h, k in zip(heads, keys[1:], strict=True)},
        }

    def apply(params, x):
        h = trunk(params["trunk"], x)
        return {
            k: (h @ p["w"] + p["b"])[:, 0] * IMBALANCED_SCALES[k]
            for k, p in params["heads"].items()
        }

    def losses(params, key, step):
        del step
        kx, kn = jax.random.split(key)
        x = jax.random.normal(kx, (32, inputs))
        out, target = apply(params, x), clean(x)
        noise = {
            h: IMBALANCED_NOISE[h] * jax.random.normal(jax.random.fold_in(kn, k), (32,))
            for k, h in enumerate(heads)
        }
        return {h: jnp.mean((out[h] - target[h] - noise[h]) ** 2) for h in heads}

    def normalised_mse(params, x):
        out, target = apply(params, x), clean(x)
        return {h: jnp.mean((out[h] - target[h]) ** 2) / jnp.var(target[h]) for h in heads}

    base = {h: 1.0 for h in heads}
    ratios = joint(base, 1e3, 12)
    widths = "-".join(str(n) for n in (inputs, *hidden))
    return Problem(
        name=name,
        title="Imbalanced multi-task regression",
        setting=(
            "y_k = s_k sin(2 a_k . x) + noise, x ~ N(0, I_8), target scales s = (100, 1, 0.01), "
            f"noise sd (0, 0.1, 0.03): the smallest head's loss is mostly noise; an {widths} "
            "tanh trunk, linear heads (outputs times s_k); batches of 32; Adam; metric per head: "
            "MSE of the clean target over its variance, on 512 validation inputs (selection) "
            "and 512 test inputs (the score); fixed-weight grid: 12 joint log-uniform moves of "
            "every term within 1e-3 to 1e3"
        ),
        base=base,
        init=init,
        losses=losses,
        metrics=lambda params: normalised_mse(params, held_x),
        validation=lambda params: normalised_mse(params, valid_x),
        optimizer=adam,
        rates=log_rates(1e-3, 4, 3.0),
        ratios=ratios,
        scales=(1.0,),
        steps=2000,
        main="medium",
        metric_name="mean held-out normalised MSE of the three heads",
        gradient_filter=lambda g: g["trunk"],
        quick=dict(steps=20, rates=(3e-3,), ratios=(base,)),
    )


# CAGrad's toy -----------------------------------------------------------------------------------

TOY_SCALE = 0.1  # the factor of the first loss in Nash-MTL's and FAMO's runs
TOY_FLOORS = {"f1": -21.0 * TOY_SCALE, "f2": -21.0}  # FAMO's min_losses in the authors' toy


def toy_losses(x: jax.Array) -> jax.Array:
    """``(f1, f2)`` at ``x = (x1, x2)``: the toy of CAGrad, ``f1`` scaled by ``TOY_SCALE``."""
    x1, x2 = x[0], x[1]
    lower = 5e-6
    f1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), lower)) + 6
    f2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), lower)) + 6
    c1 = jnp.maximum(jnp.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c2 = jnp.maximum(jnp.tanh(-x2 * 0.5), 0)
    return jnp.stack([(f1 * c1 + f1_sq * c2) * TOY_SCALE, f2 * c1 + f2_sq * c2])


@functools.cache
def pareto_set(points: int = 2801) -> np.ndarray:
    """``(points, 2)`` samples of the toy's Pareto set: ``(x1, x2*(x1))`` for ``|x1| <= 7``.

    Below ``x2 = 0`` the losses are ``(q_i(x1) + 0.01 (x2 + 8)**2 - 20) tanh(-x2 / 2)`` with
    ``q_1 = (x1 - 7)**2 / 10`` and ``q_2 = (x1 + 7)**2 / 10`` (up to ``f1``'s positive scale).
    A convex combination ``l q_1 + (1 - l) q_2`` is stationary in ``x1`` at ``x1 = 14 l - 7``,
    where it equals ``a = (49 - x1**2) / 10``; ``x2*`` minimises ``(a + 0.01 (x2 + 8)**2 - 20)
    tanh(-x2 / 2)``, found by bisection on its derivative in ``[-10, -7]``.
    """
    x1 = np.linspace(-7.0, 7.0, points)
    a = (49.0 - x1**2) / 10.0

    def slope(x2):
        t = np.tanh(-x2 / 2)
        return 0.02 * (x2 + 8) * t - 0.5 * (a + 0.01 * (x2 + 8) ** 2 - 20) * (1 - t**2)

    lo, hi = np.full_like(x1, -10.0), np.full_like(x1, -7.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        rising = slope(mid) > 0
        lo, hi = np.where(rising, lo, mid), np.where(rising, mid, hi)
    return np.stack([x1, 0.5 * (lo + hi)], axis=1)


TOY_REACHED = 1e-3  # a final point this close to the Pareto set has reached it


def distance_to_polyline(x: jax.Array, vertices: jax.Array) -> jax.Array:
    """The distance of ``x`` to the polyline through ``vertices``: its projection onto segments.

    Args:
      x: a point, shape ``(2,)``.
      vertices: ``(points, 2)``, in order along the curve.

    Returns:
      A scalar: the smallest distance of ``x`` to any segment (not only to the vertices).
    """
    a, b = vertices[:-1], vertices[1:]
    ab = b - a
    t = jnp.clip(jnp.sum((x - a) * ab, axis=1) / jnp.sum(ab * ab, axis=1), 0.0, 1.0)
    return jnp.min(jnp.linalg.norm(a + t[:, None] * ab - x, axis=1))


def toy() -> Problem:
    """CAGrad's two-objective toy from random starts; metric: distance to the Pareto set.

    The distance is the projection onto the piecewise-linear interpolant of
    :func:`pareto_set`'s 2801 points, whose distance from the true curve
    (``tests/test_results_invariants.py`` bounds it) is far below the metric's reported values.
    """
    front = jnp.asarray(pareto_set(), jnp.float32)

    def losses(params, key, step):
        del key, step
        f = toy_losses(params["x"])
        # minus FAMO's floors: the loss-only methods expect positive losses; gradients unchanged
        return {"f1": f[0] - TOY_FLOORS["f1"], "f2": f[1] - TOY_FLOORS["f2"]}

    def metrics(params):
        x = params["x"]
        distance = distance_to_polyline(x, front)
        return {"pareto": jnp.where(jnp.all(jnp.isfinite(x)), distance, jnp.inf)}

    base = {"f1": 1.0, "f2": 1.0}
    return Problem(
        name="toy",
        title="CAGrad's two-objective toy",
        setting=(
            "Liu et al. (2021) toy as Nash-MTL and FAMO run it (f1 scaled by 0.1), starts drawn "
            "uniformly in [-10, 10]^2 per seed, Adam, 5000 steps (the authors run 35 000 to "
            "100 000 at lr 1e-3 from 5 fixed starts); the losses minus FAMO's floors (-2.1, -21)"
            "; metric: distance of the final point to the Pareto set (projection onto the "
            "set's piecewise-linear interpolant)"
        ),
        base=base,
        init=lambda key: {"x": jax.random.uniform(key, (2,), minval=-10.0, maxval=10.0)},
        losses=losses,
        metrics=metrics,
        optimizer=adam,
        rates=log_rates(0.01, 4, 3.0),
        ratios=tuple({"f1": r, "f2": 1.0 - r} for r in (0.1, 0.3, 0.5, 0.7, 0.9)),
        scales=(1.0,),
        steps=5000,
        main="f2",
        metric_name="distance to the Pareto set",
        regret="absolute",
        quick=dict(steps=50, rates=(1e-2,), ratios=(base,)),
    )


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "tts_sgd": functools.partial(tts, "sgd"),
    "tts_adam": functools.partial(tts, "adam"),
    "poisson": poisson,
    "burgers": burgers,
    "digits": digits,
    "imbalanced": imbalanced,
    "toy": toy,
}
"""Every problem of the screen, by name: a function that builds it."""


def speech(steps: int = 400) -> Problem:
    """eSpeak NG speech (:mod:`benchmarks.speech`) as a confirmation problem of ``tts_adam``.

    The data set is read from ``cache/speech`` and built there first if it is missing
    (``python -m benchmarks.speech build``, seconds; eSpeak NG from ``espeakng-loader``).

    Args:
      steps: training steps (the speech benchmark's cap, which most of its runs reach before
        early stopping would end them).
    """
    from benchmarks import speech as speech_benchmark  # flax and eSpeak NG: only when used
    from benchmarks import speech_data, speech_model

    if not (speech_data.CACHE / "speech.npz").exists():
        print(f"speech: building the data set in {speech_data.CACHE}")
        speech_data.build(speech_data.CACHE)
    model, batches, meta = speech_benchmark.load_problem()
    train, valid, test = batches["train"], batches["validation"], batches["test"]
    n_train = train.tokens.shape[0]

    def losses(params, key, step):
        del step
        rows = jax.random.randint(key, (speech_benchmark.BATCH,), 0, n_train)
        return speech_model.losses_of(model, params, jax.tree.map(lambda x: x[rows], train))

    def mel_of(batch):
        return lambda params: {"mel": speech_model.losses_of(model, params, batch)["mel"]}

    split = meta["split"]
    return Problem(
        name="speech_adam",
        title="TTS on eSpeak NG speech, Adam",
        setting=(
            f"benchmarks/speech_model.py on eSpeak NG speech (benchmarks/speech_data.py: "
            f"{split['train']} / {split['validation']} / {split['test']} train / validation / "
            "test utterances, 80-bin log-mel, eSpeak's phoneme durations), the seed's four "
            f"terms; batches of {speech_benchmark.BATCH}; Adam; selection on the validation "
            "split's mel loss, score: the test split's mel loss (L1 + L2 of normalised log-mel) "
            f"after {steps} steps, the speech benchmark's cap (no early stopping in the harness)"
        ),
        base=dict(speech_model.BASE_WEIGHTS),
        init=lambda key: speech_model.init_params(model, key, train),
        losses=losses,
        metrics=mel_of(test),
        validation=mel_of(valid),
        optimizer=adam,
        rates=log_rates(0.001, 3, 3.0),
        ratios=joint(speech_model.BASE_WEIGHTS, 4.0, 8),
        scales=(1.0,),
        steps=steps,
        main="mel",
        metric_name="test mel loss",
        screen="tts_adam",
        quick=dict(steps=4, rates=(0.003,), ratios=(dict(speech_model.BASE_WEIGHTS),)),
    )


CONFIRMATION_WIDTH = (320, 320)  # two hidden layers: 140k parameters on digits, 106k here

CONFIRMATION: dict[str, Callable[[], Problem]] = {
    "digits_wide": lambda: dataclasses.replace(
        digits(CONFIRMATION_WIDTH, "digits_wide"), screen="digits"
    ),
    "imbalanced_wide": lambda: dataclasses.replace(
        imbalanced(CONFIRMATION_WIDTH, "imbalanced_wide"), screen="imbalanced"
    ),
    "speech_adam": speech,
}
"""The confirmation tier: screen problems at a size where the model is not the bottleneck,
each naming its screen problem. The confirmation profile (:mod:`benchmarks.profiles`) trains
there the base weights, the tuned fixed sum (its ratios seeded by the screen's best), the
default controller and the screen's three best methods."""


ALL: dict[str, Callable[[], Problem]] = {**PROBLEMS, **CONFIRMATION}
"""Every problem, screen and confirmation, by name."""
