"""A failure gym: each loss balancer where its bare form misbehaves, bare and under guards.

Run with ``python -m benchmarks.failures`` (about 4 to 7 minutes on 2 CPU cores, mostly
compiling). Every scenario reproduces, on a small model, a failure reported in a paper or a peer
project's code or issue tracker (its ``source``), and trains its arms from the same initial
parameters on the same batches, seed for seed:

- ``fixed``: the base weights, never adapted (a reference);
- ``bare``: the method as published (its factory's default: the guards relaxed) with a plain
  optax optimiser;
- ``guarded``: the same method under the guards we recommend for it (:data:`RECOMMENDED`, the
  "Recommended guards" paragraph of its factory's docstring), with the same optimiser wrapped in
  :func:`adaptive_optax.apply_if_finite`, as the documentation recommends for every training
  step (it keeps a non-finite step away from the parameters);
- in two scenarios, further guarded arms (``deep cuts``, ``no spike guard``).

Each arm is one jit: ``vmap`` over seeds, ``lax.scan`` over steps. Per arm the gym reports the
runs that met a non-finite loss (outside deliberately poisoned batches) or parameter, the range
of each weight over runs and steps, and a held-out task metric (median over seeds, a run that
failed counting as infinitely bad). The targets: no guarded run non-finite, and the guarded
median within 1.2 x the bare one wherever the bare method works (no non-finite run and a median
at most ``BROKEN`` x that of fixed weights). ``--out DIR`` writes ``failures.md`` and
``failures.png`` (default ``out/failures/``, ignored by git; ``--out results`` writes the copies
the README shows).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao
from benchmarks import harness, problems

PyTree = Any
SEEDS = 10
DEFAULT_OUT = pathlib.Path("out", "failures")
BROKEN = 2.0  # a bare arm whose median metric exceeds BROKEN x fixed weights' has failed


# Recommended guards, per method (the docstrings of the factories quote them) ------------------

RECOMMENDED: dict[str, dict[str, Any]] = {
    name: dict(ao.RECOMMENDED[name])
    for name in (
        "uncertainty",
        "lr_annealing",
        "gradnorm",
        "dwa",
        "softadapt",
        "relobralo",
        "encodec",
    )
}
"""The guards the library recommends per method (``ao.RECOMMENDED``); the guarded arm of every
scenario of that method uses them."""

FORMER_ANNEALING_GUARDS = dict(
    warmup_steps=100, max_change=0.5, cooling_period=10, max_weight=1e4, auto_rollback=True
)
"""The guards of the former ``benchmarks/pinn.py``'s ``annealing+guards`` row before this gym."""

DEEP_CUTS = dict(
    bounds=(0.1, 2.0),
    max_change=0.05,
    warmup_steps=100,
    cooling_period=50,
    min_stable_steps=10,
    auto_rollback=True,
    spike_threshold=2.0,
    spike_factor=0.25,
)
"""Guards that rescue a learning rate past the stable edge, at a price measured by the control:
a sensitive spike guard with deep cuts and slow recovery. Not recommended (see the README)."""


# Small models -----------------------------------------------------------------------------------

INPUTS = 4
WIDTH = 32
TASK_SEED = 1234  # the tasks' fixed directions: one task for every seed
EVAL_SEED = 99  # the held-out inputs


dense = problems.dense  # one Glorot layer for the suite and the gym


def apply_dense(layer: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ layer["w"] + layer["b"]


class MultiTask(NamedTuple):
    """Regression tasks ``y_k = sin(2 a_k . x) + noise`` on ``x ~ N(0, I_4)``, one head each.

    A shared tanh trunk (4 -> 32) feeds one linear head per task; batches of 32 are drawn anew
    at every step; the metric is the mean over tasks of the held-out mean squared error of the
    (noise-free) target, on 512 fixed inputs.
    """

    tasks: tuple[str, ...]
    outputs: tuple[int, ...]  # outputs per head (2 for a mean and a log variance)
    noise: float = 0.1
    batch: int = 32

    def init(self, key: jax.Array) -> PyTree:
        keys = jax.random.split(key, len(self.tasks) + 1)
        heads = {
            name: dense(k, WIDTH, out)
            for name, out, k in zip(self.tasks, self.outputs, keys[1:], strict=True)
        }
        return {"trunk": dense(keys[0], INPUTS, WIDTH), "heads": heads}

    def apply(self, params: PyTree, x: jax.Array) -> dict[str, jax.Array]:
        h = jnp.tanh(apply_dense(params["trunk"], x))
        return {name: apply_dense(head, h) for name, head in params["heads"].items()}

    def clean(self, x: jax.Array) -> dict[str, jax.Array]:
        a = jax.random.normal(jax.random.key(TASK_SEED), (len(self.tasks), INPUTS))
        a = a / jnp.sqrt(INPUTS)
        return {name: jnp.sin(2.0 * x @ a[k]) for k, name in enumerate(self.tasks)}

    def sample(self, key: jax.Array, n: int | None = None):
        """Inputs and noisy targets of one batch."""
        kx, kn = jax.random.split(key)
        x = jax.random.normal(kx, (n or self.batch, INPUTS))
        clean = self.clean(x)
        noisy = {
            name: y + self.noise * jax.random.normal(jax.random.fold_in(kn, k), y.shape)
            for k, (name, y) in enumerate(clean.items())
        }
        return x, noisy

    def mse(self, params: PyTree, key: jax.Array) -> dict[str, jax.Array]:
        """Each task's mean squared error on one batch."""
        x, y = self.sample(key)
        out = self.apply(params, x)
        return {name: jnp.mean((out[name][:, 0] - y[name]) ** 2) for name in self.tasks}

    def metric(self, params: PyTree) -> jax.Array:
        x = jax.random.normal(jax.random.key(EVAL_SEED), (512, INPUTS))
        out, clean = self.apply(params, x), self.clean(x)
        errors = [jnp.mean((out[name][:, 0] - clean[name]) ** 2) for name in self.tasks]
        return jnp.mean(jnp.stack(errors))


class Poisson(NamedTuple):
    """``u'' = -C^2 sin(C x)`` on ``[0, 1]``, ``u(0) = 0``, ``u(1) = sin C``: a small PINN.

    A 2 x 20 tanh MLP; each step draws 32 collocation points; the boundary points enter a
    batch with probability ``boundary_rate`` (the loss and its gradient are exactly 0 in the
    other batches). The metric is the relative L2 error of ``u`` on 1001 points. The network,
    the losses and the metric are the suite's (:func:`benchmarks.problems.poisson_losses`).
    """

    c: float = 2 * np.pi
    boundary_rate: float = 1.0
    points: int = 32

    def init(self, key: jax.Array) -> PyTree:
        return problems.mlp_init(key, (1, 20, 20, 1))

    def losses(self, params: PyTree, key: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
        del step
        kx, kb = jax.random.split(key)
        terms = problems.poisson_losses(params, jax.random.uniform(kx, (self.points,)), self.c)
        present = jax.random.bernoulli(kb, self.boundary_rate)
        return {
            "boundary": jnp.where(present, terms["boundary"], 0.0),
            "residual": terms["residual"],
        }

    def metric(self, params: PyTree) -> jax.Array:
        return problems.poisson_error(params, self.c)


# Scenarios --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One failure of one method, trained fixed, bare and guarded on the same seeds.

    Attributes:
      name: short name, the table's first column.
      method: the method under test, as its factory is called.
      failure: what goes wrong with the bare method.
      source: where the failure is documented.
      setting: the model, optimiser and what is special about the run.
      base: base weights.
      init: ``key -> params``.
      losses: ``(params, key, step) -> {term: loss}`` on one batch.
      metric: ``params -> scalar``: the held-out task metric (lower is better).
      metric_name: what the metric is.
      optimizer: the plain optax optimiser of every arm (the guarded arm wraps it).
      bare: the bare method.
      guarded: the method under the recommended guards.
      guards: the recommended guards, as written in the table.
      watch: the term whose weight the figure shows.
      steps: training steps.
      poisoned: ``(start, stop)``: steps whose batch is deliberately non-finite.
      gradient_filter: the part of a term's gradient its statistics are computed on.
      fixed: whether to train the fixed-weight reference arm.
      reference: scenarios with the same reference share one fixed-weight arm (same model,
        optimiser, losses and steps).
      extra: further guarded arms, ``(label, weighting factory)``.
      seeds: seeds per arm in a full run (``run_gym`` scales it with its ``seeds``).
    """

    name: str
    method: str
    failure: str
    source: str
    setting: str
    base: dict[str, float]
    init: Callable[[jax.Array], PyTree]
    losses: Callable[[PyTree, jax.Array, jax.Array], dict[str, jax.Array]]
    metric: Callable[[PyTree], jax.Array]
    metric_name: str
    optimizer: Callable[[], optax.GradientTransformation]
    bare: Callable[[], ao.LossWeighting]
    guarded: Callable[[], ao.LossWeighting]
    guards: str
    watch: str
    steps: int
    poisoned: tuple[int, int] | None = None
    gradient_filter: Callable[[PyTree], PyTree] | None = None
    fixed: bool = True
    reference: str | None = None
    extra: tuple[tuple[str, Callable[[], ao.LossWeighting]], ...] = ()
    seeds: int = SEEDS

    @property
    def arms(self) -> tuple[str, ...]:
        return (
            (("fixed",) if self.fixed else ())
            + ("bare", "guarded")
            + tuple(label for label, _ in self.extra)
        )


def sgd(learning_rate: float) -> Callable[[], optax.GradientTransformation]:
    """The suite's SGD (momentum 0.9) at a fixed rate, built when the scenario trains."""
    return lambda: problems.sgd(learning_rate)


def adam(learning_rate: float) -> Callable[[], optax.GradientTransformation]:
    """The suite's Adam at a fixed rate, built when the scenario trains."""
    return lambda: problems.adam(learning_rate)


def describe(guards: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in guards.items())


def fraction(steps: int, f: float) -> int:
    return max(1, int(round(steps * f)))


def uncertainty_negative(steps: int = 3000) -> Scenario:
    """Uncertainty weighting of a Gaussian negative log-likelihood, which goes below 0."""
    model = MultiTask(("nll", "mse"), (2, 1), noise=0.05)
    base = {"nll": 1.0, "mse": 1.0}

    def losses(params, key, step):
        del step
        x, y = model.sample(key)
        out = model.apply(params, x)
        mean, log_variance = out["nll"][:, 0], out["nll"][:, 1]
        residual = (y["nll"] - mean) ** 2
        nll = jnp.mean(0.5 * (log_variance + residual * jnp.exp(-log_variance)))
        return {"nll": nll, "mse": jnp.mean((out["mse"][:, 0] - y["mse"]) ** 2)}

    guards = RECOMMENDED["uncertainty"]
    return Scenario(
        name="uncertainty: loss below 0",
        method="uncertainty_weights(lr=0.01)",
        failure="a Gaussian NLL with a learned variance goes negative; exp(-s) grows without end",
        source="yaringal/multi-task-learning-example#6; QunBB/DeepLearning#1",
        setting="2 heads (NLL with learned variance, MSE), SGD 0.003 momentum 0.9",
        base=base,
        init=model.init,
        losses=losses,
        metric=model.metric,
        metric_name="held-out MSE of the two means",
        optimizer=sgd(0.003),
        bare=lambda: ao.uncertainty_weights(base),
        guarded=lambda: ao.uncertainty_weights(base, **guards),
        guards=describe(guards),
        watch="nll",
        steps=steps,
    )


def annealing_vanishing(steps: int = 3000) -> Scenario:
    """Learning-rate annealing when most batches hold no boundary point."""
    problem = Poisson(boundary_rate=0.25)
    base = {"boundary": 1.0, "residual": 1.0}
    guards = RECOMMENDED["lr_annealing"]
    return Scenario(
        name="annealing: boundary gradient 0",
        method='lr_annealing_weights(main="residual")',
        failure="3 batches in 4 hold no boundary point: weight = max |grad| / (0 + eps)",
        source="Wang, Teng & Perdikaris 2021, Alg. 1; jaxpi grad_norm (no eps)",
        setting="1-D Poisson PINN, C = 2 pi, 2 x 20 tanh, 32 random points, Adam 1e-3",
        base=base,
        init=problem.init,
        losses=problem.losses,
        metric=problem.metric,
        metric_name="relative L2 error of u",
        optimizer=adam(1e-3),
        bare=lambda: ao.lr_annealing_weights(base, main="residual"),
        guarded=lambda: ao.lr_annealing_weights(base, main="residual", **guards),
        guards=describe(guards),
        watch="boundary",
        steps=steps,
    )


def annealing_pinn(steps: int = 4000) -> Scenario:
    """The README's PINN (the 1-D Poisson problem), where bare annealing works: a control."""
    c = 4 * np.pi
    x = jnp.linspace(0.0, 1.0, 130)[1:-1]
    base = {"boundary": 1.0, "residual": 1.0}
    guards = RECOMMENDED["lr_annealing"]
    return Scenario(
        name="annealing: README PINN (control)",
        method='lr_annealing_weights(main="residual", interval=10)',
        failure="none: the problem the method was made for",
        source="Wang, Teng & Perdikaris 2021, section 2.3",
        setting="1-D Poisson PINN, C = 4 pi, 3 x 50 tanh, 128 points, Adam 1e-3 "
        "(no fixed arm: it misses the boundary on 2 of 3 seeds)",
        base=base,
        init=lambda key: problems.mlp_init(key, (1, 50, 50, 50, 1)),
        losses=lambda params, key, step: problems.poisson_losses(params, x, c),
        metric=lambda params: problems.poisson_error(params, c),
        metric_name="relative L2 error of u",
        optimizer=adam(1e-3),
        bare=lambda: ao.lr_annealing_weights(base, main="residual", interval=10),
        guarded=lambda: ao.lr_annealing_weights(base, main="residual", interval=10, **guards),
        guards=describe(guards),
        watch="boundary",
        steps=steps,
        fixed=False,
        extra=(
            (
                "former guards",
                lambda: ao.lr_annealing_weights(
                    base, main="residual", interval=10, **FORMER_ANNEALING_GUARDS
                ),
            ),
        ),
        seeds=2 * SEEDS,  # the errors of single runs spread over two decades
    )


THREE = MultiTask(("a", "b", "c"), (1, 1, 1))
THREE_BASE = {"a": 1.0, "b": 1.0, "c": 1.0}


def three_tasks(
    *,
    name: str,
    method: str,
    failure: str,
    source: str,
    setting: str,
    learning_rate: float,
    bare: Callable[[], ao.LossWeighting],
    guarded: Callable[[], ao.LossWeighting],
    guards: dict[str, Any] | str,
    watch: str,
    steps: int,
    losses: Callable | None = None,
    poisoned: tuple[int, int] | None = None,
    gradient_filter: Callable | None = None,
    extra: tuple = (),
) -> Scenario:
    """A scenario on the three regression tasks of :data:`THREE`, SGD with momentum 0.9."""
    return Scenario(
        name=name,
        method=method,
        failure=failure,
        source=source,
        setting=f"3 regression heads on a shared trunk, SGD {learning_rate:g} momentum 0.9"
        + (f", {setting}" if setting else ""),
        base=THREE_BASE,
        init=THREE.init,
        losses=losses or (lambda params, key, step: THREE.mse(params, key)),
        metric=THREE.metric,
        metric_name="held-out MSE, mean of 3 tasks",
        optimizer=sgd(learning_rate),
        bare=bare,
        guarded=guarded,
        guards=guards if isinstance(guards, str) else describe(guards),
        watch=watch,
        steps=steps,
        poisoned=poisoned,
        gradient_filter=gradient_filter,
        # the default losses: one fixed-weight arm per learning rate and length
        reference=None if losses else f"three tasks, SGD {learning_rate:g}, {steps} steps",
        extra=extra,
    )


def switched_on(term: str, start: int):
    """Three-task losses where ``term`` is 0 (and its gradient too) before step ``start``."""

    def losses(params, key, step):
        mse = THREE.mse(params, key)
        return mse | {term: jnp.where(step >= start, mse[term], 0.0)}

    return losses


def gradnorm_large_rate(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["gradnorm"]
    return three_tasks(
        name="GradNorm: large rate",
        method="gradnorm_weights(lr=1.0)",
        failure="weight steps overshoot: weights jump between 0 and n",
        source="Chen et al. 2018 (weights renormalised, clipped at 0); vpetren/gradnorm_tf#17",
        setting="norms on the trunk",
        learning_rate=0.1,
        bare=lambda: ao.gradnorm_weights(THREE_BASE, lr=1.0),
        guarded=lambda: ao.gradnorm_weights(THREE_BASE, lr=1.0, **guards),
        guards=guards,
        watch="a",
        steps=steps,
        gradient_filter=lambda g: g["trunk"],
    )


def dwa_low_temperature(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["dwa"]
    return three_tasks(
        name="DWA: temperature 0.05",
        method="dwa_weights(temperature=0.05)",
        failure="softmax of noisy loss ratios / T: all the weight on one term",
        source="Liu, Johns & Davison 2019 (T = 2); per-step minibatch losses",
        setting="",
        learning_rate=0.05,
        bare=lambda: ao.dwa_weights(THREE_BASE, temperature=0.05),
        guarded=lambda: ao.dwa_weights(THREE_BASE, temperature=0.05, **guards),
        guards=guards,
        watch="a",
        steps=steps,
    )


def softadapt_large_beta(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["softadapt"]
    return three_tasks(
        name="SoftAdapt: beta 100",
        method="softadapt_weights(beta=100)",
        failure="softmax of beta x noisy slopes: all the weight on one term",
        source="Heydari et al. 2019 (beta = 0.1)",
        setting="",
        learning_rate=0.05,
        bare=lambda: ao.softadapt_weights(THREE_BASE, beta=100.0),
        guarded=lambda: ao.softadapt_weights(THREE_BASE, beta=100.0, **guards),
        guards=guards,
        watch="a",
        steps=steps,
    )


def encodec_zero_gradient(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["encodec"]
    start = fraction(steps, 0.25)
    base = {"a": 1.0, "b": 1.0}
    model = MultiTask(("a", "b"), (1, 1))

    def losses(params, key, step):
        mse = model.mse(params, key)
        return mse | {"b": jnp.where(step >= start, mse["b"], 0.0)}

    return Scenario(
        name="EnCodec: a zero gradient",
        method="encodec_weights()",
        failure="term b is 0 until it is switched on: weight = R share / (eps + 0)",
        source="encodec/balancer.py (eps = 1e-12); a loss switched on late (disc_start)",
        setting=f"2 regression heads, b switched on at step {start}, SGD 0.05 momentum 0.9",
        base=base,
        init=model.init,
        losses=losses,
        metric=model.metric,
        metric_name="held-out MSE, mean of 2 tasks",
        optimizer=sgd(0.05),
        bare=lambda: ao.encodec_weights(base),
        guarded=lambda: ao.encodec_weights(base, **guards),
        guards=describe(guards),
        watch="b",
        steps=steps,
    )


def relobralo_zero_start(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["relobralo"]
    start = fraction(steps, 0.15)
    return three_tasks(
        name="ReLoBRaLo: a loss from 0",
        method="relobralo_weights()",
        failure="L(t) / L(0) with L(0) = 0: each lookback puts weight n on c, 0 on a and b",
        source="Bischof & Kraus 2021, section IV (random lookback to L(0))",
        setting=f"c switched on at step {start}",
        learning_rate=0.05,
        bare=lambda: ao.relobralo_weights(THREE_BASE),
        guarded=lambda: ao.relobralo_weights(THREE_BASE, **guards),
        guards=guards,
        watch="a",
        steps=steps,
        losses=switched_on("c", start),
    )


def unguarded_controller(steps: int = 2000) -> Scenario:
    return three_tasks(
        name="seed controller, unguarded",
        method="unguarded_weights() vs stable_weights()",
        failure="30 % steps on every falling loss: weights sink to their floor",
        source="the seed's PR summary; results/stability.md",
        setting="",
        learning_rate=0.05,
        bare=lambda: ao.unguarded_weights(THREE_BASE),
        guarded=lambda: ao.stable_weights(THREE_BASE),
        guards="stable_weights(base): every guard at its default, spike guard on",
        watch="a",
        steps=steps,
    )


def nan_burst(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["gradnorm"]
    window = (fraction(steps, 0.25), fraction(steps, 0.25) + max(1, fraction(steps, 0.01)))

    def losses(params, key, step):
        x, y = THREE.sample(key)
        poison = (step >= window[0]) & (step < window[1])
        y = y | {"b": y["b"] + jnp.where(poison, jnp.nan, 0.0)}  # NaN targets for b
        out = THREE.apply(params, x)
        return {name: jnp.mean((out[name][:, 0] - y[name]) ** 2) for name in THREE.tasks}

    return three_tasks(
        name="NaN batches",
        method="gradnorm_weights()",
        failure=f"NaN targets for b in steps {window[0]} to {window[1] - 1}",
        source="optax apply_if_finite; OLMo skip-step; PaLM (skipped batches)",
        setting="norms on the trunk",
        learning_rate=0.05,
        bare=lambda: ao.gradnorm_weights(THREE_BASE),
        guarded=lambda: ao.gradnorm_weights(THREE_BASE, **guards),
        guards=guards,
        watch="b",
        steps=steps,
        losses=losses,
        poisoned=window,
        gradient_filter=lambda g: g["trunk"],
    )


def past_the_edge(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["softadapt"]
    return three_tasks(
        name="learning rate past the edge",
        method="softadapt_weights()",
        failure="SGD 0.25: fixed weights diverge on every seed",
        source="Stable-SPAM Fig. 2, ZClip Table 2 (largest stable learning rate)",
        setting="",
        learning_rate=0.25,
        bare=lambda: ao.softadapt_weights(THREE_BASE),
        guarded=lambda: ao.softadapt_weights(THREE_BASE, **guards),
        guards=guards,
        watch="a",
        steps=steps,
        extra=(("deep cuts", lambda: ao.softadapt_weights(THREE_BASE, **DEEP_CUTS)),),
    )


def dwa_control(steps: int = 2000) -> Scenario:
    guards = RECOMMENDED["dwa"]
    no_spikes = guards | dict(spike_threshold=None)
    return three_tasks(
        name="DWA: control",
        method="dwa_weights(temperature=2.0)",
        failure="none: the paper's temperature at a comfortable learning rate",
        source="Liu, Johns & Davison 2019",
        setting="",
        learning_rate=0.01,
        bare=lambda: ao.dwa_weights(THREE_BASE),
        guarded=lambda: ao.dwa_weights(THREE_BASE, **guards),
        guards=guards,
        watch="a",
        steps=steps,
        extra=(
            ("no spike guard", lambda: ao.dwa_weights(THREE_BASE, **no_spikes)),
            ("deep cuts", lambda: ao.dwa_weights(THREE_BASE, **DEEP_CUTS)),
        ),
    )


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "uncertainty": uncertainty_negative,
    "annealing": annealing_vanishing,
    "annealing_pinn": annealing_pinn,
    "gradnorm": gradnorm_large_rate,
    "dwa": dwa_low_temperature,
    "softadapt": softadapt_large_beta,
    "encodec": encodec_zero_gradient,
    "relobralo": relobralo_zero_start,
    "unguarded": unguarded_controller,
    "nan": nan_burst,
    "edge": past_the_edge,
    "dwa_control": dwa_control,
}


# The engine -------------------------------------------------------------------------------------


class Trace(NamedTuple):
    """What one arm records (leading axes: seeds, then steps)."""

    weights: np.ndarray  # (seeds, steps, terms): the weights of each step


class ArmResult(NamedTuple):
    """The outcome of one arm of one scenario."""

    trace: Trace
    metric: np.ndarray  # (seeds,) the held-out metric after training
    failed: np.ndarray  # (seeds,) a non-finite loss (outside poisoned steps) or parameter
    first_failure: np.ndarray  # (seeds,) that run's first such step, -1 for none
    spikes: np.ndarray  # (seeds,) weights cut by the spike guard, summed over terms
    nonfinite_steps: np.ndarray  # (seeds, 2, terms) first and last non-finite step per term
    compile_s: float
    run_s: float


def weighting_of(scenario: Scenario, arm: str) -> ao.LossWeighting:
    if arm == "bare":
        return scenario.bare()
    if arm == "guarded":
        return scenario.guarded()
    return dict(scenario.extra)[arm]()


def as_problem(scenario: Scenario, steps: int) -> problems.Problem:
    """The scenario as a problem of the harness (its optimiser has a fixed learning rate)."""
    return problems.Problem(
        name=scenario.name,
        title=scenario.name,
        setting=scenario.setting,
        base=scenario.base,
        init=scenario.init,
        losses=scenario.losses,
        metrics=lambda params: {"metric": scenario.metric(params)},
        optimizer=lambda learning_rate: scenario.optimizer(),
        rates=(0.0,),
        ratios=(scenario.base,),
        scales=(1.0,),
        steps=steps,
        main=scenario.watch,
        metric_name=scenario.metric_name,
        gradient_filter=scenario.gradient_filter,
    )


def run_arm(scenario: Scenario, arm: str, seeds: Sequence[int], steps: int | None = None):
    """Trains one arm on every seed with :func:`benchmarks.harness.train` (one compile).

    The ``fixed`` arm trains the base weights; ``bare`` the method with a plain optimiser; the
    guarded arms wrap the optimiser in ``ao.apply_if_finite``, as the docs recommend.
    """
    steps = steps or scenario.steps
    window = scenario.poisoned
    runs = harness.train(
        as_problem(scenario, steps),
        None if arm == "fixed" else weighting_of(scenario, arm),
        seeds=list(seeds),
        rates=[0.0] * len(seeds),
        skip_nonfinite=arm not in ("fixed", "bare"),
        excused=None if window is None else lambda t: (t >= window[0]) & (t < window[1]),
        trace=True,
        steps=steps,
    )
    metric = runs.metrics["metric"][:, -1]
    return ArmResult(
        Trace(runs.trace),
        metric,
        ~runs.finished | ~np.isfinite(metric),
        runs.first_failure,
        runs.spikes,
        runs.nonfinite_steps,
        runs.compile_s,
        runs.run_s,
    )


# Summaries --------------------------------------------------------------------------------------


def median_metric(result: ArmResult) -> float:
    """The median over seeds, a failed run counting as infinitely bad."""
    return float(np.median(np.where(result.failed, np.inf, result.metric)))


class Verdict(NamedTuple):
    bare_ok: bool  # every bare run finite, median metric within BROKEN x fixed weights'
    guarded_finite: bool
    ratio: float  # guarded / bare median metric
    met: bool  # guarded finite, and within 1.2 x bare wherever bare is ok


def verdict(results: dict[str, ArmResult]) -> Verdict:
    bare, guarded = results["bare"], results["guarded"]
    bare_median, guarded_median = median_metric(bare), median_metric(guarded)
    reference = median_metric(results["fixed"]) if "fixed" in results else np.inf
    bare_ok = not bare.failed.any() and bare_median <= BROKEN * reference
    if not np.isfinite(reference):
        bare_ok = not bare.failed.any() and np.isfinite(bare_median)
    finite = not guarded.failed.any()
    ratio = guarded_median / bare_median if np.isfinite(bare_median) else float("nan")
    met = finite and (not bare_ok or guarded_median <= 1.2 * bare_median)
    return Verdict(bare_ok, finite, ratio, met)


def weight_range(result: ArmResult, k: int) -> str:
    """``min..max`` of term ``k``'s weight over runs and steps."""
    w = result.trace.weights[..., k]
    return f"{np.nanmin(w):.2g}..{np.nanmax(w):.2g}"


def cell(text: str) -> str:
    """Text for a markdown table cell (a ``|`` would end the cell)."""
    return str(text).replace("|", "\\|")


def summary_table(all_results: dict[str, tuple[Scenario, dict[str, ArmResult]]]) -> str:
    """One row per scenario: what the README shows."""
    lines = [
        "| scenario | non-finite runs: fixed / bare / guarded | weight of the watched term, "
        "bare / guarded | metric (median): fixed / bare / guarded | target |",
        "|---|---|---|---|---|",
    ]
    for scenario, results in all_results.values():
        k = list(scenario.base).index(scenario.watch)
        seeds = next(iter(results.values())).failed.size

        failed, weights, metric = [], [], []
        for arm in ("fixed", "bare", "guarded"):
            result = results.get(arm)
            failed.append("-" if result is None else str(int(result.failed.sum())))
            metric.append("-" if result is None else f"{median_metric(result):.2g}")
            if arm != "fixed":
                weights.append("-" if result is None else weight_range(result, k))
        v = verdict(results)
        target = "met" if v.met else "**missed**"
        if v.bare_ok and np.isfinite(v.ratio):
            target += f" ({v.ratio:.2f} x bare)"
        lines.append(
            f"| {scenario.name} | {' / '.join(failed)} of {seeds} "
            f"| {scenario.watch}: {' / '.join(weights)} | {' / '.join(metric)} | {target} |"
        )
    return "\n".join(lines)


def attribution(all_results: dict[str, tuple[Scenario, dict[str, ArmResult]]]) -> str:
    """Which term went non-finite first, and when, in the scenarios with poisoned batches.

    Read from ``first_nonfinite_step/<term>`` and ``last_nonfinite_step/<term>`` of
    ``ao.metrics`` (0: never), medians over seeds. Arms that skip a non-finite step before the
    weighting sees it (``skip_nonfinite=True``) record nothing.
    """
    lines = [
        "Which term went NaN first (`first_nonfinite_step` / `last_nonfinite_step` of "
        "`ao.metrics`, median over seeds; 0: never). A NaN loss of one term makes every "
        "term's gradient NaN through the shared backward pass (0 x NaN), so with per-term "
        "gradients every term is flagged at that step; the guarded arms skip such steps "
        "before the weighting sees them (`skip_nonfinite=True`) and record nothing:",
        "",
        "| scenario | arm | per term: first / last non-finite step |",
        "|---|---|---|",
    ]
    for scenario, results in all_results.values():
        if scenario.poisoned is None:
            continue
        for arm, result in results.items():
            if arm == "fixed":
                continue
            steps = np.median(result.nonfinite_steps, axis=0)
            cells = "; ".join(
                f"{name} {steps[0, k]:.0f} / {steps[1, k]:.0f}"
                for k, name in enumerate(scenario.base)
            )
            lines.append(f"| {scenario.name} | {arm} | {cells} |")
    return "\n".join(lines)


def markdown(all_results: dict[str, tuple[Scenario, dict[str, ArmResult]]]) -> str:
    """The gym's tables: the summary, every arm, and what each scenario is."""
    lines = [summary_table(all_results), "", "Every arm:", ""]
    lines += [
        "| scenario | arm | non-finite runs | weights, min..max over runs and steps "
        "| metric, median [min, max] | spike cuts per run (median) | compile + run s |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, results in all_results.values():
        names = list(scenario.base)
        for arm, result in results.items():
            m = np.where(result.failed, np.inf, result.metric)
            weights = "; ".join(f"{n} {weight_range(result, k)}" for k, n in enumerate(names))
            lines.append(
                f"| {scenario.name} | {arm} | {int(result.failed.sum())}/{result.failed.size} "
                f"| {weights} "
                f"| {median_metric(result):.3g} [{m.min():.3g}, {m.max():.3g}] "
                f"| {np.median(result.spikes):.0f} "
                f"| {result.compile_s:.0f} + {result.run_s:.0f} |"
            )
    lines += ["", attribution(all_results)]
    lines += [
        "",
        "The scenarios:",
        "",
        "| scenario | bare method | what goes wrong | documented in | setting | metric "
        "| guarded arm: the method with |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, _ in all_results.values():
        lines.append(
            f"| {scenario.name} | `{scenario.method}` | {cell(scenario.failure)} "
            f"| {cell(scenario.source)} | {cell(scenario.setting)} | {scenario.metric_name} "
            f"| `{scenario.guards}` |"
        )
    return "\n".join(lines)


def figure(all_results, path: pathlib.Path) -> pathlib.Path:
    """Per scenario, the watched weight over training: median and range over seeds, per arm.

    A run's weights are drawn up to its first non-finite step (outside poisoned batches).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(all_results)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows), squeeze=False)
    colors = {
        "fixed": "0.55",
        "bare": "C3",
        "guarded": "C0",
        "deep cuts": "C2",
        "no spike guard": "C1",
        "former guards": "C1",
    }
    floor = 1e-6
    for ax, (scenario, results) in zip(axes.flat, all_results.values(), strict=False):
        k = list(scenario.base).index(scenario.watch)
        counts = ", ".join(f"{arm} {int(r.failed.sum())}" for arm, r in results.items())
        medians = ", ".join(f"{arm} {median_metric(r):.2g}" for arm, r in results.items())
        for arm, result in results.items():
            w = np.clip(result.trace.weights[..., k].astype(float), floor, None)
            steps = np.arange(w.shape[1])
            for seed, bad in enumerate(result.first_failure):
                if bad >= 0:
                    w[seed, bad:] = np.nan
                    ax.axvline(bad, color=colors[arm], lw=0.5, ls=":")
            if np.isnan(w).all():
                continue
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                low, mid, high = np.nanmin(w, 0), np.nanmedian(w, 0), np.nanmax(w, 0)
            ax.fill_between(steps, low, high, color=colors[arm], alpha=0.15, lw=0)
            ax.plot(steps, mid, color=colors[arm], lw=1, label=arm)
        ax.set_yscale("log")
        title = [f"{scenario.name}: weight of {scenario.watch}"]
        title += textwrap.wrap(f"non-finite runs: {counts}", 64)
        title += textwrap.wrap(f"median metric: {medians}", 64)
        ax.set_title("\n".join(title), fontsize=7.5)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="lower left")
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.suptitle(
        "Watched weight per step, median (line) and range (band) over seeds, each run drawn "
        "up to its first non-finite step (dotted); weights below 1e-6 drawn at 1e-6",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_gym(
    names: Sequence[str] | None = None,
    *,
    seeds: int = SEEDS,
    steps: int | None = None,
    arms: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, tuple[Scenario, dict[str, ArmResult]]]:
    """Runs the chosen scenarios (default: all) on seeds ``0 .. seeds - 1``.

    Args:
      names: keys of :data:`SCENARIOS`.
      seeds: runs per arm.
      steps: overrides each scenario's length (a smoke run).
      arms: a subset of each scenario's arms (default: all of them).
      progress: called with one line per finished arm.

    Returns:
      ``{name: (scenario, {arm: ArmResult})}``.
    """
    out, shared = {}, {}
    for name in names or SCENARIOS:
        scenario = SCENARIOS[name](steps) if steps else SCENARIOS[name]()
        results = {}
        for arm in scenario.arms:
            if arms is not None and arm not in arms:
                continue
            n = max(1, seeds * scenario.seeds // SEEDS)
            key = (scenario.reference, n)
            if arm == "fixed" and scenario.reference and key in shared:
                results[arm] = shared[key]._replace(compile_s=0.0, run_s=0.0)
            else:
                results[arm] = run_arm(scenario, arm, range(n))
                if arm == "fixed" and scenario.reference:
                    shared[key] = results[arm]
            if progress is not None:
                progress(
                    f"{scenario.name} / {arm}: {int(results[arm].failed.sum())}/{n} "
                    f"non-finite, median metric {median_metric(results[arm]):.3g}"
                )
        out[name] = (scenario, results)
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--steps", type=int, default=None, help="override every scenario's steps")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {list(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="2 seeds x 60 steps: a smoke run")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=DEFAULT_OUT,
        help=f"folder for failures.md and failures.png (default {DEFAULT_OUT}, ignored by git)",
    )
    args = parser.parse_args(argv)
    seeds, steps = (2, 60) if args.quick else (args.seeds, args.steps)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    start = time.perf_counter()
    results = run_gym(names, seeds=seeds, steps=steps, progress=print)
    elapsed = time.perf_counter() - start
    table = markdown(results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.failures" + (f" --only {args.only}" if args.only else "")
    header = (
        f"`{command}`: {seeds} seeds per arm ({2 * seeds} for the README PINN), "
        f"{jax.device_count()} {jax.default_backend()} "
        f"device(s), total {elapsed:.0f} s. Non-finite runs: a NaN/Inf loss (outside poisoned "
        f"batches) or parameter; metric: held-out, median over seeds, a failed run counting as "
        f"inf; the bare method works where no run is non-finite and its median is at most "
        f"{BROKEN:g} x fixed weights'; target: no guarded run non-finite, and the guarded median "
        f"within 1.2 x the bare one where the bare method works.\n\n"
    )
    (args.out / "failures.md").write_text(header + table + "\n")
    png = figure(results, args.out / "failures.png")
    print(f"total {elapsed:.0f} s; table written to {args.out / 'failures.md'}, figure to {png}")
    return results


if __name__ == "__main__":
    main()
