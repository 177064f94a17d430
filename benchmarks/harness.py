"""The benchmark harness: one way to train a problem with fixed or adaptive loss weights.

:func:`train` trains one problem (:mod:`benchmarks.problems`) with fixed weights or with one
weighting, over many runs at once: one ``jit`` per call, ``vmap`` over runs (each run its own
seed, learning rate and, for fixed weights, weight vector: all traced, so one compile serves a
whole grid), ``lax.scan`` over steps. A weighting that needs gradient statistics
(``weighting.needs``: the Gramian methods, GradNorm, EnCodec, learning-rate annealing) gets
per-term gradients through ``ao.weight_gradients``; the others, and fixed weights, one backward
pass of the weighted loss (the gradient's global norm goes to ``update``, for the spike guard).

:func:`run_problem` runs the protocol of Kurin et al. (2022), Xin et al. (2022) and Gama &
Grassi (2025) on one problem, one function per stage:

1. :func:`run_fixed_grid`: fixed weights ``w = s * sum(base) * r`` over the problem's ratios
   ``r`` (joint moves of every term), scales ``s`` and learning rates, on the calibration seeds;
2. :func:`choose_fixed`: the best fixed setting and the base weights' rate, by the one selection
   rule of :func:`benchmarks.stats.select` (validation scores on the calibration seeds; a
   non-finite score is a failed run; settings with a failed calibration run are never chosen;
   ties within one standard error go to the smaller rate, then the smaller scale), each rate
   bracketed by :func:`tune_rate` (a rate at the grid's edge extends the grid, up to
   :data:`EXTENSIONS` times, else the arm is marked ``edge``);
3. :func:`evaluation_seeds_for`: 10 evaluation seeds, 20 where the tuned weights' one-run spread
   is above :data:`NOISY`; base and best fixed on them;
4. :func:`run_method`: every arm of :data:`ARMS` (bare and under the guards its docstring
   recommends; arms with the same behavioural fingerprint, :mod:`benchmarks.fingerprint`,
   trained once and shown as one row) over the rates on the calibration seeds by the same rule,
   then at its rate on the evaluation seeds (one compile, one vmap width :data:`BATCH` for every
   trainer of the problem, so costs are comparable);
5. :func:`replays`: each adaptive arm's time-averaged calibration weights replayed as fixed
   weights, normalised to the base total (``distilled``: the ratio it found) and as they were
   (``averaged``: ratio and scale), on the evaluation seeds.

The evaluation seeds are disjoint from the calibration seeds, and on a problem with data the
score is the test split's metric while selection reads the validation split's
(``Problem.validation``). Scoring (paired regret, intervals, calls) is
:mod:`benchmarks.stats`, applied by :mod:`benchmarks.report`.

Adding an arm is one line in :data:`ARMS`: ``Arm(label, factory, kwargs, guards)``; the factory
is called as ``factory(base, **kwargs)`` for the bare arm and ``factory(base, **kwargs,
**guards)`` for the guarded one (``guards=None``: no guarded arm). A keyword whose value is
:data:`MAIN` receives the problem's main term. For example, a setting of ``ao.guarded``
measured under ``ao.stable_weights`` is ``Arm("stable ramp 300", ao.stable_weights,
dict(ramp_steps=300))``, and a balancer with recommended guards ``Arm("dwa", ao.dwa_weights,
guards=recommended("dwa"))``; then
``python -m benchmarks.report --arms "stable ramp 300,dwa,dwa+guards" --merge --out results``
adds their rows to the committed tables (a merge keeps only rows that are still current: same
profile, same fingerprint, same tuned reference).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao
from benchmarks import fingerprint, problems, stats
from benchmarks.problems import Problem

PyTree = Any
CALIBRATION_SEEDS = tuple(range(100, 105))
# fresh: the seeds 0-19 of the earlier tables are those the default controller was chosen on
EVALUATION_SEEDS = tuple(range(1000, 1020))
MIN_EVALUATION = 10  # evaluation seeds; all of EVALUATION_SEEDS where the tuned arm is noisy
NOISY = 0.1  # the tuned arm's one-run spread (robust sigma over median) that asks for 20 seeds
EXTENSIONS = 3  # rates tried beyond the grid's edge before an arm is marked "edge"
BATCH = 10  # runs per compiled call, for every trainer: one vmap width, comparable costs
CHECKPOINTS = 10  # task metrics are recorded at this many points during training (and at 0)
STABLE_SHARE = 0.9  # a learning rate is stable when at least this share of the runs finish
MAIN = "<main term>"  # placeholder for the problem's main term in an arm's keyword arguments


# The original controller: its rule lowers the weight of a converging loss, its spike guard judges
# at a z-score of 3 after 10 values, and its weights start at the base (the "seed-start" arms).
SEED_START = dict(
    ramp_steps=0, spike_prior=None, low_ratio=0.9, toward_base=False, spike_threshold=3.0
)


def recommended(method: str) -> dict[str, Any]:
    """The guards the library recommends for ``method`` (``ao.RECOMMENDED``), as a dict."""
    return dict(ao.RECOMMENDED[method])


class OneTerm(NamedTuple):
    """An arm that is a gradient transformation fed one term's gradient per step, not a weighting.

    The trainer computes the gradient of term ``t % K`` only at step ``t`` (``lax.switch``: one
    backward pass), passes it with ``index=t % K``, and follows the transformation with plain
    SGD at the arm's rate, as M-ConFIG's authors do (its update is Adam-scaled already), in
    place of the problem's optimiser. Its reported weights are 1.
    """

    transform: optax.GradientTransformationExtraArgs


def due_term_gradient(
    loss_of: Callable[[PyTree, str], jax.Array], order: Sequence[str], t: Any, params: PyTree
) -> tuple[jax.Array, PyTree, jax.Array]:
    """The loss and gradient of term ``order[t % K]`` only (``lax.switch`` on the step: one
    backward pass), for a :class:`OneTerm` arm's step.

    Args:
      loss_of: ``(params, term) -> scalar``, one term's loss at this step.
      order: the terms in the order they take turns.
      t: the step (an int or a traced integer).
      params: the parameters.

    Returns:
      ``(loss, gradient, index)``: the due term's loss, its gradient, and its index in ``order``.
    """
    index = jnp.asarray(t % len(order), jnp.int32)
    branches = [lambda p, k=k: loss_of(p, k) for k in order]
    loss, grad = jax.value_and_grad(lambda p: jax.lax.switch(index, branches, p))(params)
    return loss, grad, index


def m_config_arm(base: dict[str, float]) -> OneTerm:
    """M-ConFIG (:func:`adaptive_optax.m_config`) with the authors' defaults, as an arm."""
    return OneTerm(ao.m_config(len(base)))


def rates_of(problem: Problem, weighting: Any) -> tuple[float, ...]:
    """The rate grid an arm's rate is tuned on: the problem's, or for a :class:`OneTerm` arm
    (an Adam-scaled update, then SGD) the problem's where its optimiser is Adam, else the Adam
    problems' grid."""
    if isinstance(weighting, OneTerm) and problem.optimizer is not problems.adam:
        return problems.log_rates(1e-3, 4, 3.0)
    return problem.rates


class Arm(NamedTuple):
    """One method of the table: a factory, its keyword arguments and its recommended guards.

    ``guards`` is what the factory's docstring recommends ("Recommended guards"); ``None`` for a
    method without such a paragraph (its bare arm only).
    """

    label: str
    factory: Callable[..., ao.LossWeighting]
    kwargs: dict[str, Any] = {}
    guards: dict[str, Any] | None = None


ARMS: tuple[Arm, ...] = (
    # the library's default controller and its relatives (guarded by construction)
    Arm("stable", ao.stable_weights),  # with its slow start (ramp_steps=100, spike_prior=0.25)
    Arm("unguarded", ao.unguarded_weights),
    Arm("legacy", ao.legacy_weights),
    # the controller's options, each measured starting at the base (as the seed's controller)
    Arm("stable seed-start", ao.stable_weights, dict(SEED_START)),
    Arm("stable ratios", ao.stable_weights, dict(moves="ratios", **SEED_START)),
    Arm("stable normalized", ao.stable_weights, dict(normalize="first_loss", **SEED_START)),
    # loss-only balancers
    Arm("dwa", ao.dwa_weights, guards=recommended("dwa")),
    Arm("softadapt", ao.softadapt_weights, guards=recommended("softadapt")),
    Arm("relobralo", ao.relobralo_weights, guards=recommended("relobralo")),
    Arm("uncertainty", ao.uncertainty_weights, guards=recommended("uncertainty")),
    Arm("famo", ao.famo_weights, guards=recommended("famo")),
    Arm("imtl_l", ao.imtl_l_weights, guards=recommended("imtl_l")),
    Arm("gls", ao.gls_weights, guards=recommended("gls")),
    Arm("rlw", ao.rlw_weights, guards=recommended("rlw")),
    Arm("uw_so", ao.uw_so_weights),
    Arm("normalized", ao.normalized_weights),
    # gradient-norm balancers
    Arm("gradnorm", ao.gradnorm_weights, guards=recommended("gradnorm")),
    Arm("encodec", ao.encodec_weights, guards=recommended("encodec")),
    # the same guards with bounds that reach the ratios of terms on different scales
    Arm(
        "encodec wide",
        ao.encodec_weights,
        guards=recommended("encodec") | dict(bounds=(1e-3, 1e3)),
    ),
    Arm(
        "lr_annealing",
        ao.lr_annealing_weights,
        dict(main=MAIN),
        guards=recommended("lr_annealing"),
    ),
    Arm("metabalance", ao.metabalance_weights, dict(main=MAIN)),
    # Gramian methods (no recommended guards: bare)
    Arm("mgda", ao.mgda_weights),
    Arm("upgrad", ao.upgrad_weights),
    # UPGrad's weights held for 10 and 100 steps (``every=``, as ``ao.amortized_grads`` holds
    # them): what less frequent weights cost in regret. The trainer still computes the per-term
    # gradients every step, so their cost column is UPGrad's, not the amortized step's.
    Arm("upgrad every 10", ao.upgrad_weights, dict(every=10)),
    Arm("upgrad every 100", ao.upgrad_weights, dict(every=100)),
    Arm("dualproj", ao.dualproj_weights),
    Arm("imtl_g", ao.imtl_g_weights),
    Arm("aligned_mtl", ao.aligned_mtl_weights),
    Arm("cagrad", ao.cagrad_weights, dict(c=0.4)),
    Arm("pcgrad", ao.pcgrad_weights),
    Arm("config", ao.config_weights),
    Arm("nash_mtl", ao.nash_mtl_weights),
    # issue 28's additions
    Arm("stch", ao.stch_weights, guards=recommended("stch")),
    Arm("gradvac", ao.gradvac_weights),
    Arm("fairgrad", ao.fairgrad_weights),
    Arm("pcd", ao.pcd_weights, dict(main=MAIN)),
    Arm("m_config", m_config_arm),  # a gradient transformation (OneTerm), not a weighting
)
"""Every method of the suite: each ``*_weights`` preset of the library, with the guards its
docstring recommends (FAMO, IMTL-L, GLS and RLW recommend "bounds": here ``(0.1, 10.0)``)."""


class Variant(NamedTuple):
    """One arm as trained: a label and a function of the problem giving its weighting."""

    label: str
    method: str
    guarded: bool
    make: Callable[[Problem], ao.LossWeighting | OneTerm]


def build(
    arm: Arm, guards: dict[str, Any], base: dict[str, float], main: str
) -> ao.LossWeighting | OneTerm:
    """The arm's weighting from these base weights and main term, under ``guards``."""
    kwargs = {k: main if v is MAIN else v for k, v in arm.kwargs.items()}
    return arm.factory(base, **kwargs, **guards)


def variants(arms: Sequence[Arm] = ARMS) -> list[Variant]:
    """Every arm bare and, where it has recommended guards, guarded (label ``+guards``)."""

    def maker(arm: Arm, guards: dict[str, Any]):
        def make(problem: Problem) -> ao.LossWeighting | OneTerm:
            return build(arm, guards, problem.base, problem.main)

        return make

    out = []
    for arm in arms:
        out.append(Variant(arm.label, arm.label, False, maker(arm, {})))
        if arm.guards is not None:
            out.append(Variant(f"{arm.label}+guards", arm.label, True, maker(arm, arm.guards)))
    return out


# Training ---------------------------------------------------------------------------------------


class Runs(NamedTuple):
    """The outcome of one :func:`train` call (leading axis: runs)."""

    metrics: dict[str, np.ndarray]  # head -> (runs, CHECKPOINTS + 1): at 0 and each checkpoint
    validation: dict[str, np.ndarray]  # the same on the validation split (selection reads it)
    finished: np.ndarray  # (runs,) every loss and the final parameters finite
    first_failure: np.ndarray  # (runs,) first step with a non-finite loss or parameter, or -1
    mean_weights: np.ndarray  # (runs, terms) the weights averaged over the steps
    weights: np.ndarray  # (runs, CHECKPOINTS, terms) the weights at each checkpoint
    spikes: np.ndarray  # (runs,) spike-guard cuts, summed over terms
    nonfinite_steps: np.ndarray  # (runs, 2, terms) first and last non-finite step (0: none)
    trace: np.ndarray | None  # (runs, steps, terms) the weights at every step, when asked
    compile_s: float
    run_s: float
    chunk_s: np.ndarray  # seconds of each compiled call (one vmap width): the cost's samples

    @property
    def score(self) -> np.ndarray:
        """(runs, CHECKPOINTS + 1): the test metrics' mean; failed or non-finite: +inf."""
        return _score(self.metrics, self.finished)

    @property
    def validation_score(self) -> np.ndarray:
        """(runs, CHECKPOINTS + 1): the validation metrics' mean, as :attr:`score`."""
        return _score(self.validation, self.finished)


def _score(metrics: dict[str, np.ndarray], finished: np.ndarray) -> np.ndarray:
    """The heads' mean; a run that failed, or whose metric is not finite, scores +inf."""
    score = np.mean(np.stack(list(metrics.values())), axis=0)
    return np.where(finished[:, None] & np.isfinite(score), score, np.inf)


def _all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class Trainer(NamedTuple):
    """A compiled trainer of one problem and weighting, for chunks of ``batch`` runs."""

    problem: Problem
    compiled: Any
    batch: int
    steps: int
    compile_s: float
    chunks: list[float]  # the seconds of every compiled call so far (the cost's samples)

    @property
    def step_s(self) -> float:
        """Seconds per run-step: the median compiled call over its runs and steps."""
        return float(np.median(self.chunks)) / (self.batch * self.steps)

    def slots(self, runs: int) -> int:
        """Runs trained (padded to whole chunks) to train ``runs`` runs."""
        return -(-runs // self.batch) * self.batch

    def __call__(
        self, seeds: Sequence[int], rates: Sequence[float], fixed: np.ndarray | None = None
    ) -> Runs:
        """Trains the runs (seed, rate and, for fixed weights, weights of each), in chunks."""
        n = len(seeds)
        if fixed is None:
            base = [self.problem.base[k] for k in self.problem.terms]
            fixed = np.tile(np.asarray(base, np.float32), (n, 1))
        pad = -n % self.batch
        seeds = np.concatenate([np.asarray(seeds, np.uint32), np.zeros(pad, np.uint32)])
        rates = np.concatenate([np.asarray(rates, np.float32), np.zeros(pad, np.float32)])
        fixed = np.concatenate([np.asarray(fixed, np.float32), np.ones((pad, fixed.shape[1]))])
        outs, chunk_s = [], []
        for i in range(0, n + pad, self.batch):
            part = slice(i, i + self.batch)
            start = time.perf_counter()
            out = self.compiled(seeds[part], rates[part], fixed[part].astype(np.float32))
            outs.append(jax.tree.map(np.asarray, jax.block_until_ready(out)))
            chunk_s.append(time.perf_counter() - start)
        self.chunks.extend(chunk_s)
        out = jax.tree.map(lambda *x: np.concatenate(x)[:n], *outs)
        metrics, validation, finished, first, mean_w, weights, spikes, nonfinite, trace = out
        trace = trace if trace.ndim == 3 else None
        return Runs(
            metrics,
            validation if self.problem.validation is not None else metrics,
            finished,
            first,
            mean_w,
            weights,
            spikes,
            nonfinite,
            trace,
            self.compile_s,
            float(sum(chunk_s)),
            np.asarray(chunk_s),
        )


def trainer(
    problem: Problem,
    weighting: ao.LossWeighting | OneTerm | None,
    *,
    batch: int = 64,
    steps: int | None = None,
    skip_nonfinite: bool = False,
    excused: Callable[[jax.Array], jax.Array] | None = None,
    trace: bool = False,
) -> Trainer:
    """Compiles the training of one problem with fixed weights or one weighting.

    The compiled function trains ``batch`` runs at once (``vmap``; each run its own seed,
    learning rate and fixed weights, all traced) for ``steps`` steps (``lax.scan``); the
    :class:`Trainer` it returns trains any number of runs in chunks of ``batch``.

    Args:
      problem: the problem.
      weighting: the weighting, a :class:`OneTerm` transformation, or None for fixed weights.
      batch: runs per compiled call.
      steps: training steps (default ``problem.steps``), rounded down to a multiple of
        ``CHECKPOINTS``.
      skip_nonfinite: wrap the optimiser in ``ao.apply_if_finite`` (and tell
        ``ao.weight_gradients``), as the documentation recommends for a training step.
      excused: ``step -> bool``: steps whose batch is deliberately non-finite (a failure
        scenario): a non-finite loss there does not count as a failure of the run.
      trace: also return the weights at every step (``Runs.trace``).

    Returns:
      A :class:`Trainer`.
    """
    chunk = max(1, (steps or problem.steps) // CHECKPOINTS)
    steps = chunk * CHECKPOINTS
    terms = problem.terms
    one_term = isinstance(weighting, OneTerm)
    per_term = weighting is not None and not one_term and bool(weighting.needs)

    def optimizer(lr):
        tx = problem.optimizer(lr)
        return ao.apply_if_finite(tx) if skip_nonfinite else tx

    def losses_at(params, key, t):
        return problem.losses(params, jax.random.fold_in(key, t), t)

    def one(seed, lr, w):
        init_key, data_key = jax.random.split(jax.random.key(seed))
        params = problem.init(init_key)
        fixed_weights = {k: w[i] for i, k in enumerate(terms)}  # w is in the order of terms
        if one_term:
            sgd = optax.sgd(lr)
            tx = optax.chain(
                weighting.transform, ao.apply_if_finite(sgd) if skip_nonfinite else sgd
            )
            state = None
        elif per_term:
            tx = optax.chain(
                ao.weight_gradients(
                    weighting,
                    gradient_filter=problem.gradient_filter,
                    skip_nonfinite=skip_nonfinite,
                ),
                optimizer(lr),
            )
            state = None
        else:
            tx = optimizer(lr)
            state = weighting.init() if weighting is not None else None

        def step(carry, t):
            params, opt_state, state = carry
            if one_term:
                loss, grads, index = due_term_gradient(
                    lambda p, k: losses_at(p, data_key, t)[k], terms, t, params
                )
                losses = {"due": loss}
                updates, opt_state = tx.update(grads, opt_state, params, index=index, losses=loss)
                weights = dict.fromkeys(terms, 1.0)
            elif per_term:

                def f(p):
                    losses = losses_at(p, data_key, t)
                    return losses, losses

                grads, losses = jax.jacrev(f, has_aux=True)(params)
                updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
                weights = ao.find_state(opt_state).weights
            else:
                weights = state.weights if weighting is not None else fixed_weights

                def total(p):
                    losses = losses_at(p, data_key, t)
                    return ao.weighted_sum(losses, weights), losses

                (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
                if weighting is not None:
                    _, state = weighting.update(losses, state, grad_norms=optax.tree.norm(grads))
                if skip_nonfinite:
                    updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
                else:
                    updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            finite_losses = _all_finite(losses)
            if excused is not None:
                finite_losses = finite_losses | excused(t)
            ok = finite_losses & _all_finite(params)
            vector = jnp.stack([jnp.asarray(weights[k], jnp.float32) for k in terms])
            return (params, opt_state, state), (ok, vector)

        def measure(params):
            validation = problem.validation(params) if problem.validation is not None else {}
            return problem.metrics(params), validation

        def block(carry, i):
            carry, (ok, vectors) = jax.lax.scan(step, carry, i * chunk + jnp.arange(chunk))
            return carry, (measure(carry[0]), ok, vectors)

        carry = (params, tx.init(params), state)
        measured0 = measure(params)
        carry, (measured, ok, vectors) = jax.lax.scan(block, carry, jnp.arange(CHECKPOINTS))
        ok = ok.reshape(-1)
        metrics, validation = jax.tree.map(
            lambda a, b: jnp.concatenate([a[None], b]), measured0, measured
        )
        spikes = jnp.int32(0)
        nonfinite = jnp.zeros((2, len(terms)), jnp.int32)
        if weighting is not None and not one_term:
            state = ao.find_state(carry[1]) if per_term else carry[2]
            spikes = jnp.sum(state.counters.spikes)
            counters = state.counters
            nonfinite = jnp.stack([counters.first_nonfinite_step, counters.last_nonfinite_step])
        first = jnp.where(jnp.all(ok), -1, jnp.argmin(ok))
        vectors = vectors.reshape(-1, len(terms))
        return (
            metrics,
            validation,
            jnp.all(ok),
            first,
            jnp.mean(vectors, axis=0),
            vectors[chunk - 1 :: chunk],
            spikes,
            nonfinite,
            vectors if trace else jnp.zeros(()),
        )

    args = (
        jax.ShapeDtypeStruct((batch,), jnp.uint32),
        jax.ShapeDtypeStruct((batch,), jnp.float32),
        jax.ShapeDtypeStruct((batch, len(terms)), jnp.float32),
    )
    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(*args).compile()
    return Trainer(problem, compiled, batch, steps, time.perf_counter() - start, [])


def train(
    problem: Problem,
    weighting: ao.LossWeighting | OneTerm | None,
    *,
    seeds: Sequence[int],
    rates: Sequence[float],
    fixed: np.ndarray | None = None,
    batch: int = 64,
    **kwargs,
) -> Runs:
    """Trains the runs at once: :func:`trainer` and a call (``kwargs`` go to :func:`trainer`)."""
    compiled = trainer(problem, weighting, batch=min(batch, len(seeds)), **kwargs)
    return compiled(seeds, rates, fixed)


def take(runs: Runs, index: np.ndarray) -> Runs:
    """The runs at ``index`` (timings kept)."""
    pick = lambda x: x[index]  # noqa: E731
    return runs._replace(
        metrics={k: v[index] for k, v in runs.metrics.items()},
        validation={k: v[index] for k, v in runs.validation.items()},
        finished=pick(runs.finished),
        first_failure=pick(runs.first_failure),
        mean_weights=pick(runs.mean_weights),
        weights=pick(runs.weights),
        spikes=pick(runs.spikes),
        nonfinite_steps=pick(runs.nonfinite_steps),
        trace=None if runs.trace is None else pick(runs.trace),
    )


def join(a: Runs, b: Runs) -> Runs:
    """The runs of ``a`` then ``b`` (timings: both calls')."""
    cat = lambda x, y: np.concatenate([x, y])  # noqa: E731
    return Runs(
        metrics={k: cat(v, b.metrics[k]) for k, v in a.metrics.items()},
        validation={k: cat(v, b.validation[k]) for k, v in a.validation.items()},
        finished=cat(a.finished, b.finished),
        first_failure=cat(a.first_failure, b.first_failure),
        mean_weights=cat(a.mean_weights, b.mean_weights),
        weights=cat(a.weights, b.weights),
        spikes=cat(a.spikes, b.spikes),
        nonfinite_steps=cat(a.nonfinite_steps, b.nonfinite_steps),
        trace=None if a.trace is None or b.trace is None else cat(a.trace, b.trace),
        compile_s=a.compile_s,
        run_s=a.run_s + b.run_s,
        chunk_s=cat(a.chunk_s, b.chunk_s),
    )


# The protocol -----------------------------------------------------------------------------------


class RateChoice(NamedTuple):
    """A learning rate chosen on the calibration seeds, and how.

    Attributes:
      rate: the chosen rate.
      tried: every rate tried, ascending.
      scores: per rate tried, the final validation scores on the calibration seeds.
      finished: per rate tried, the share of its calibration runs that finished.
      status: ``"interior"`` (the grid brackets it), ``"extended N"`` (interior after N rates
        added beyond the grid's edge), ``"edge"`` (still at an edge after the extensions: a
        reader must read the arm as possibly denied a better rate) or ``"none finished"``.
      how: :func:`stats.select`'s ``how``.
      mean_weights: per rate tried, the time-averaged weights of its finished calibration runs
        (nan where none finished).
    """

    rate: float
    tried: tuple[float, ...]
    scores: dict[float, np.ndarray]
    finished: dict[float, float]
    status: str
    how: str
    mean_weights: dict[float, np.ndarray]


@dataclasses.dataclass
class ArmResult:
    """One arm of one problem on the evaluation seeds, and how its setting was chosen."""

    label: str
    kind: str  # "fixed", "method", "distilled" or "averaged"
    rate: float
    weights: dict[str, float] | None  # fixed arms: the weights
    runs: Runs  # evaluation runs at the chosen rate
    runs_needed: int  # training runs (per seed) to choose the setting
    step_s: float  # seconds per run-step: its trainer's median compiled call, at one width
    stable_rate: float  # largest rate tried with >= STABLE_SHARE calibration runs finished
    calibration_score: float  # median final validation score on the calibration seeds
    calibration_scores: tuple[float, ...] = ()  # those scores, one per calibration seed
    rates_tried: tuple[float, ...] = ()
    rate_status: str = "interior"
    guarded: bool = False
    method: str = ""
    fingerprint: str = ""
    aliases: tuple[str, ...] = ()  # arms whose fingerprint is this arm's: shown once


@dataclasses.dataclass
class ProblemResult:
    problem: Problem
    arms: list[ArmResult]
    grid: list[dict[str, Any]]  # the fixed grid on calibration seeds: weights, rate, scores
    calibration_seeds: tuple[int, ...]
    evaluation_seeds: tuple[int, ...]
    seconds: float
    compile_s: float

    def arm(self, label: str) -> ArmResult:
        return next(a for a in self.arms if a.label == label)


class Plan(NamedTuple):
    """How :func:`run_problem` runs a problem: seeds, width and the grid's reach."""

    calibration_seeds: tuple[int, ...] = CALIBRATION_SEEDS
    evaluation_seeds: tuple[int, ...] = EVALUATION_SEEDS  # the first ``min_evaluation``, or all
    min_evaluation: int = MIN_EVALUATION
    batch: int = BATCH
    extensions: int = EXTENSIONS


def median_final(runs: Runs) -> float:
    return float(np.median(runs.score[:, -1]))


def _stable_rate(finished: dict[float, float]) -> float:
    """The largest rate at which at least ``STABLE_SHARE`` of the runs finished."""
    good = [r for r, share in finished.items() if share >= STABLE_SHARE]
    return float(max(good)) if good else float("nan")


def print_now(line: str) -> None:
    """Prints a progress line at once (a log file sees it while the run goes)."""
    print(line, flush=True)


class Progress:
    """Progress lines of a long run: arm, block, elapsed and remaining time."""

    def __init__(self, name: str, arms: int, log: Callable[[str], None]):
        self.name, self.arms, self.log = name, arms, log
        self.start = time.perf_counter()
        self.done = 0

    def __call__(self, label: str, block: str) -> None:
        """Logs that ``label`` (arm ``done + 1`` of ``arms``) starts ``block``."""
        elapsed = time.perf_counter() - self.start
        left = (
            f", about {elapsed / self.done * (self.arms - self.done):.0f} s left"
            if self.done
            else ""
        )
        self.log(
            f"[{self.name}] arm {self.done + 1}/{self.arms} {label}: {block}; "
            f"{elapsed:.0f} s elapsed{left}"
        )


def tune_rate(
    score_at: Callable[[Sequence[float]], dict[float, Runs]],
    rates: Sequence[float],
    *,
    extensions: int,
    known: dict[float, Runs] | None = None,
) -> RateChoice:
    """An arm's learning rate: :func:`stats.select` over the rates, extending past an edge.

    Where the chosen rate is the grid's smallest or largest, the next rate beyond it (the
    grid's own ratio) is tried, up to ``extensions`` times, until the choice is interior.

    Args:
      score_at: trains the arm at these rates on the calibration seeds, the runs per rate.
      rates: the problem's grid (ascending, log-spaced).
      extensions: the most rates added beyond the grid.
      known: runs already trained, by rate (the fixed grid's).

    Returns:
      A :class:`RateChoice`.
    """
    rates = tuple(sorted(rates))
    factor = rates[1] / rates[0] if len(rates) > 1 else 3.0
    runs = dict(known or {})
    runs.update(score_at([r for r in rates if r not in runs]))
    added = 0
    while True:
        tried = tuple(sorted(runs))
        candidates = [stats.Candidate(r, runs[r].validation_score[:, -1], (r,)) for r in tried]
        chosen, how = stats.select(candidates)
        rate = float(chosen.key)
        if how == "none finished" or len(tried) == 1:
            status = how if how == "none finished" else "interior"
            break
        beyond = rate * factor if rate == tried[-1] else rate / factor if rate == tried[0] else None
        if beyond is None:
            status = f"extended {added}" if added else "interior"
            break
        if added == extensions:
            status = "edge"
            break
        runs.update(score_at([float(f"{beyond:.3g}")]))
        added += 1
    return RateChoice(
        rate=rate,
        tried=tried,
        scores={r: runs[r].validation_score[:, -1] for r in tried},
        finished={r: float(runs[r].finished.mean()) for r in tried},
        status=status,
        how=how,
        mean_weights={r: _mean_finished(runs[r]) for r in tried},
    )


def _mean_finished(runs: Runs) -> np.ndarray:
    """The time-averaged weights over the finished runs (nan where none finished)."""
    if not runs.finished.any():
        return np.full(runs.mean_weights.shape[1], np.nan)
    return runs.mean_weights[runs.finished].mean(axis=0)


def fixed_settings(problem: Problem) -> tuple[list[np.ndarray], int]:
    """The fixed grid's weight vectors (``s * sum(base) * r``) and the base weights' index."""
    terms, total = problem.terms, sum(problem.base.values())
    base_vec = np.asarray([problem.base[k] for k in terms], np.float32)
    settings = []
    for ratio in problem.ratios:
        r = np.asarray([ratio[k] for k in terms], np.float64)
        for s in problem.scales:
            settings.append((s * total * r / r.sum()).astype(np.float32))
    is_base = [bool(np.allclose(w, base_vec, rtol=1e-5)) for w in settings]
    if not any(is_base):
        settings.append(base_vec)
        is_base.append(True)
    return settings, is_base.index(True)


def by_rate(runs: Runs, rates: np.ndarray) -> dict[float, Runs]:
    """The runs split by learning rate."""
    return {float(r): take(runs, np.flatnonzero(rates == r)) for r in np.unique(rates)}


def run_fixed_grid(
    problem: Problem, fixed: Trainer, settings: list[np.ndarray], plan: Plan
) -> dict[int, dict[float, Runs]]:
    """Stage 1: every weight setting at every rate on the calibration seeds."""
    cells = [
        (g, lr, seed)
        for g in range(len(settings))
        for lr in problem.rates
        for seed in plan.calibration_seeds
    ]
    runs = fixed(
        seeds=[c[2] for c in cells],
        rates=[c[1] for c in cells],
        fixed=np.stack([settings[c[0]] for c in cells]),
    )
    cell_g = np.asarray([c[0] for c in cells])
    rates = np.asarray([c[1] for c in cells], np.float64)
    return {
        g: by_rate(take(runs, np.flatnonzero(cell_g == g)), rates[cell_g == g])
        for g in range(len(settings))
    }


def fixed_score_at(
    fixed: Trainer, weights: np.ndarray, seeds: Sequence[int]
) -> Callable[[Sequence[float]], dict[float, Runs]]:
    """A :func:`tune_rate` ``score_at`` for fixed weights on the fixed trainer."""

    def score_at(rates: Sequence[float]) -> dict[float, Runs]:
        if not rates:
            return {}
        cells = [(lr, seed) for lr in rates for seed in seeds]
        runs = fixed(
            seeds=[c[1] for c in cells],
            rates=[c[0] for c in cells],
            fixed=np.tile(weights, (len(cells), 1)),
        )
        return by_rate(runs, np.asarray([c[0] for c in cells], np.float64))

    return score_at


def choose_fixed(
    problem: Problem,
    fixed: Trainer,
    settings: list[np.ndarray],
    grid_runs: dict[int, dict[float, Runs]],
    g: int | None,
    plan: Plan,
) -> tuple[int, RateChoice, str]:
    """Stage 2: the best fixed setting (``g`` None) or the base's rate (``g`` its index).

    The best setting is :func:`stats.select` over every (weights, rate) cell (caution: rate,
    then scale); its rate is then bracketed by :func:`tune_rate` (the grid's runs reused).

    Returns:
      ``(index of the setting, its rate, how the setting was chosen)``.
    """
    total = sum(problem.base.values())
    how = "base"
    if g is None:
        candidates = [
            stats.Candidate(
                (i, lr), runs.validation_score[:, -1], (lr, float(settings[i].sum() / total))
            )
            for i, per_rate in grid_runs.items()
            for lr, runs in per_rate.items()
        ]
        chosen, how = stats.select(candidates)
        g = chosen.key[0]
    choice = tune_rate(
        fixed_score_at(fixed, settings[g], plan.calibration_seeds),
        problem.rates,
        extensions=plan.extensions,
        known=grid_runs[g],
    )
    return g, choice, how


def evaluate_fixed(fixed: Trainer, weights: np.ndarray, rate: float, seeds: Sequence[int]) -> Runs:
    """Fixed weights at one rate on the evaluation seeds (the fixed trainer: no compile)."""
    return fixed(
        seeds=list(seeds), rates=[rate] * len(seeds), fixed=np.tile(weights, (len(seeds), 1))
    )


def evaluation_seeds_for(best: Runs, plan: Plan) -> tuple[int, ...]:
    """Stage 3: the evaluation seeds: the first ``min_evaluation``, all where the tuned arm's
    one-run spread (robust sigma over median) is above :data:`NOISY`."""
    scores = best.score[:, -1]
    spread = stats.robust_sigma(scores) / abs(float(np.median(scores)))
    if np.isfinite(spread) and spread <= NOISY:
        return plan.evaluation_seeds[: plan.min_evaluation]
    return plan.evaluation_seeds


def fixed_arm(
    label: str,
    problem: Problem,
    weights: np.ndarray,
    choice: RateChoice,
    runs: Runs,
    step_s: float,
    runs_needed: int,
) -> ArmResult:
    """The :class:`ArmResult` of a fixed arm (base or best fixed)."""
    return ArmResult(
        label=label,
        kind="fixed",
        rate=choice.rate,
        weights=dict(zip(problem.terms, map(float, weights), strict=True)),
        runs=runs,
        runs_needed=runs_needed,
        step_s=step_s,
        stable_rate=_stable_rate(choice.finished),
        calibration_score=float(np.median(choice.scores[choice.rate])),
        calibration_scores=tuple(map(float, choice.scores[choice.rate])),
        rates_tried=choice.tried,
        rate_status=choice.status,
        fingerprint=fingerprint.of(None),
    )


def run_method(
    problem: Problem,
    variant: Variant,
    plan: Plan,
    evaluation_seeds: tuple[int, ...],
    progress: Progress,
) -> tuple[ArmResult, RateChoice, float]:
    """Stage 4: one method: its rate on the calibration seeds, then the evaluation seeds.

    Returns:
      ``(the arm's result, its rate choice, compile seconds)``.
    """
    progress(variant.label, "compiling")
    weighting = variant.make(problem)
    method = trainer(problem, weighting, batch=plan.batch)

    def score_at(rates: Sequence[float]) -> dict[float, Runs]:
        if not rates:
            return {}
        progress(variant.label, f"calibration seeds at rates {', '.join(f'{r:g}' for r in rates)}")
        cells = [(lr, seed) for lr in rates for seed in plan.calibration_seeds]
        runs = method(seeds=[c[1] for c in cells], rates=[c[0] for c in cells])
        return by_rate(runs, np.asarray([c[0] for c in cells], np.float64))

    choice = tune_rate(score_at, rates_of(problem, weighting), extensions=plan.extensions)
    progress(variant.label, f"{len(evaluation_seeds)} evaluation seeds at lr {choice.rate:g}")
    runs = method(seeds=list(evaluation_seeds), rates=[choice.rate] * len(evaluation_seeds))
    result = ArmResult(
        label=variant.label,
        kind="method",
        rate=choice.rate,
        weights=None,
        runs=runs,
        runs_needed=len(choice.tried),
        step_s=method.step_s,
        stable_rate=_stable_rate(choice.finished),
        calibration_score=float(np.median(choice.scores[choice.rate])),
        calibration_scores=tuple(map(float, choice.scores[choice.rate])),
        rates_tried=choice.tried,
        rate_status=choice.status,
        guarded=variant.guarded,
        method=variant.method,
    )
    return result, choice, method.compile_s


def replays(
    problem: Problem,
    arm: ArmResult,
    mean_weights: np.ndarray,
    fixed: Trainer,
    evaluation_seeds: tuple[int, ...],
    step_s: float,
) -> list[ArmResult]:
    """Stage 5: an arm's time-averaged calibration weights replayed as fixed weights.

    ``distilled``: normalised to the base weights' total (the ratio it found); ``averaged``:
    as they were (ratio and scale). None where no calibration run at its rate finished.
    """
    if not (np.all(np.isfinite(mean_weights)) and mean_weights.sum() > 0):
        return []
    total = sum(problem.base.values())
    out = []
    for kind, w in (
        ("distilled", mean_weights / mean_weights.sum() * total),
        ("averaged", mean_weights),
    ):
        runs = evaluate_fixed(fixed, w.astype(np.float32), arm.rate, evaluation_seeds)
        out.append(
            ArmResult(
                label=f"{arm.label} ({kind})",
                kind=kind,
                rate=arm.rate,
                weights=dict(zip(problem.terms, map(float, w), strict=True)),
                runs=runs,
                runs_needed=arm.runs_needed,
                step_s=step_s,
                stable_rate=float("nan"),
                calibration_score=float("nan"),
                method=arm.label,
                fingerprint=fingerprint.of(None),
            )
        )
    return out


def evaluate_grid(
    problem: Problem,
    fixed: Trainer,
    settings: list[np.ndarray],
    seeds: Sequence[int],
) -> dict[tuple[int, float], np.ndarray]:
    """Stage 3b: every cell of the grid on the evaluation seeds (final test scores), for the
    runs-spent-choosing table only (no choice reads them)."""
    cells = [(g, lr, seed) for g in range(len(settings)) for lr in problem.rates for seed in seeds]
    runs = fixed(
        seeds=[c[2] for c in cells],
        rates=[c[1] for c in cells],
        fixed=np.stack([settings[c[0]] for c in cells]),
    )
    final = runs.score[:, -1]
    n = len(seeds)
    return {(c[0], c[1]): final[i : i + n] for i, c in enumerate(cells) if i % n == 0}


def grid_table(
    problem: Problem,
    settings: list[np.ndarray],
    grid_runs: dict[int, dict[float, Runs]],
    grid_test: dict[tuple[int, float], np.ndarray],
) -> list[dict[str, Any]]:
    """The fixed grid's cells for the json: weights, rate, scale, calibration (validation)
    scores per calibration seed and test scores per evaluation seed."""
    total = sum(problem.base.values())
    return [
        {
            "weights": dict(zip(problem.terms, map(float, settings[g]), strict=True)),
            "rate": lr,
            "scale": float(settings[g].sum() / total),
            "score": float(np.median(runs.validation_score[:, -1])),
            "scores": [float(x) for x in runs.validation_score[:, -1]],
            "finished": int(runs.finished.sum()),
            "heads": {h: float(np.median(v[:, -1])) for h, v in runs.validation.items()},
            "test_scores": [float(x) for x in grid_test.get((g, lr), [])],
        }
        for g, per_rate in grid_runs.items()
        for lr, runs in sorted(per_rate.items())
    ]


def chosen_variants(arms: Sequence[Arm], labels: Sequence[str] | None) -> list[Variant]:
    """The variants to train, in table order (``labels``: only these)."""
    return [v for v in variants(arms) if labels is None or v.label in labels]


def weighting_of_label(label: str, base: dict[str, float], main: str) -> ao.LossWeighting | OneTerm:
    """The arm ``label`` of :func:`variants` (``"dwa+guards"``, ...) from these base weights and
    main term, for a benchmark that trains the suite's arms outside a :class:`Problem`."""
    arm = next((a for a in ARMS if a.label == label.removesuffix("+guards")), None)
    if arm is None or (label.endswith("+guards") and arm.guards is None):
        raise ValueError(f"no arm {label!r}; the arms are {[v.label for v in variants()]}")
    return build(arm, arm.guards if label.endswith("+guards") else {}, base, main)


def run_problem(
    problem: Problem,
    arms: Sequence[Arm] = ARMS,
    *,
    plan: Plan | None = None,
    labels: Sequence[str] | None = None,
    log: Callable[[str], None] = print_now,
    progress: Callable[[ProblemResult], None] | None = None,
) -> ProblemResult:
    """The protocol on one problem (the module docstring), one stage per function.

    Args:
      problem: the problem.
      arms: the arms to draw from.
      plan: the seeds, width and extensions (default ``Plan()``).
      labels: only these labels of :func:`variants` (e.g. ``"dwa+guards"``).
      log: where progress lines go.
      progress: called with the results so far after the fixed arms and after each method.

    Returns:
      A :class:`ProblemResult`.
    """
    start = time.perf_counter()
    plan = plan or Plan()
    if set(plan.calibration_seeds) & set(plan.evaluation_seeds):
        raise ValueError(
            f"calibration and evaluation seeds must be disjoint, got {plan.calibration_seeds} "
            f"and {plan.evaluation_seeds}"
        )
    chosen = chosen_variants(arms, labels)
    log(f"[{problem.name}] fingerprints of {len(chosen)} arms")
    prints = {v.label: fingerprint.of(v.make) for v in chosen}
    first = {}
    for v in chosen:
        first.setdefault(prints[v.label], v.label)
    aliases = {
        label: tuple(o for o in prints if prints[o] == prints[label] and o != label)
        for label in first.values()
    }
    chosen = [v for v in chosen if first[prints[v.label]] == v.label]
    tracker = Progress(problem.name, len(chosen) + 1, log)

    # 1-3: the fixed grid, the best fixed weights and the base's rate, the evaluation seeds
    tracker("fixed weights", "compiling")
    fixed = trainer(problem, None, batch=plan.batch)
    settings, base_g = fixed_settings(problem)
    tracker("fixed weights", f"grid: {len(settings)} weights x {len(problem.rates)} rates")
    grid_runs = run_fixed_grid(problem, fixed, settings, plan)
    best_g, best_choice, _ = choose_fixed(problem, fixed, settings, grid_runs, None, plan)
    _, base_choice, _ = choose_fixed(problem, fixed, settings, grid_runs, base_g, plan)
    best_runs = evaluate_fixed(
        fixed, settings[best_g], best_choice.rate, plan.evaluation_seeds[: plan.min_evaluation]
    )
    evaluation_seeds = evaluation_seeds_for(best_runs, plan)
    if len(evaluation_seeds) > best_runs.finished.size:
        more = evaluate_fixed(
            fixed, settings[best_g], best_choice.rate, evaluation_seeds[best_runs.finished.size :]
        )
        best_runs = join(best_runs, more)
    base_runs = evaluate_fixed(fixed, settings[base_g], base_choice.rate, evaluation_seeds)
    fixed_step_s = fixed.step_s
    grid_size = sum(len(per_rate) for per_rate in grid_runs.values())
    results = [
        fixed_arm(
            "base",
            problem,
            settings[base_g],
            base_choice,
            base_runs,
            fixed_step_s,
            len(base_choice.tried),
        ),
        fixed_arm(
            "best fixed",
            problem,
            settings[best_g],
            best_choice,
            best_runs,
            fixed_step_s,
            grid_size + len(best_choice.tried) - len(grid_runs[best_g]),
        ),
    ]
    tracker("fixed weights", f"the grid on {len(evaluation_seeds)} evaluation seeds")
    grid_test = evaluate_grid(problem, fixed, settings, evaluation_seeds)
    compile_s = fixed.compile_s
    tracker.done += 1
    grid = grid_table(problem, settings, grid_runs, grid_test)

    def so_far() -> ProblemResult:
        return ProblemResult(
            problem=problem,
            arms=list(results),
            grid=grid,
            calibration_seeds=tuple(plan.calibration_seeds),
            evaluation_seeds=evaluation_seeds,
            seconds=time.perf_counter() - start,
            compile_s=compile_s,
        )

    if progress is not None:
        progress(so_far())

    # 4-5: every method, then its replays
    for variant in chosen:
        arm, choice, seconds = run_method(problem, variant, plan, evaluation_seeds, tracker)
        arm.fingerprint, arm.aliases = prints[variant.label], aliases[variant.label]
        compile_s += seconds
        at_rate = choice.scores[choice.rate]
        log(
            f"[{problem.name}] {variant.label}: lr {arm.rate:g} ({choice.status}), calibration "
            f"median {np.median(at_rate):.4g}, test median {median_final(arm.runs):.4g}"
        )
        results.append(arm)
        tracker.done += 1
        mean = choice.mean_weights[choice.rate]
        if not isinstance(variant.make(problem), OneTerm):  # no weights to replay
            results += replays(problem, arm, mean, fixed, evaluation_seeds, fixed_step_s)
        if progress is not None:
            progress(so_far())
    return so_far()
