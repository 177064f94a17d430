"""The benchmark harness: one way to train a problem with fixed or adaptive loss weights.

:func:`train` trains one problem (:mod:`benchmarks.problems`) with fixed weights or with one
weighting, over many runs at once: one ``jit`` per call, ``vmap`` over runs (each run its own
seed, learning rate and, for fixed weights, weight vector: all traced, so one compile serves a
whole grid), ``lax.scan`` over steps. A weighting that needs gradient statistics
(``weighting.needs``: the Gramian methods, GradNorm, EnCodec, learning-rate annealing) gets
per-term gradients through ``ao.weight_gradients``; the others, and fixed weights, one backward
pass of the weighted loss (the gradient's global norm goes to ``update``, for the spike guard).

:func:`run_problem` runs the protocol of Kurin et al. (2022), Xin et al. (2022) and Gama &
Grassi (2025) on one problem:

1. fixed weights ``w = s * sum(base) * r`` over the problem's grids of ratios ``r`` (summing to
   1), scales ``s`` and learning rates, on the calibration seeds: the best setting (lowest
   median score) is ``best fixed``, the base weights' best rate is ``base``;
2. every arm of :data:`ARMS` (every ``*_weights`` preset of the library, bare and under the
   guards its docstring recommends) over the learning-rate grid on the calibration seeds, then
   at its best rate (lowest median score) on the evaluation seeds, with the same compile (a
   problem with ``stability`` set trains every rate on the evaluation seeds too);
3. per adaptive arm, two fixed-weight replays of its calibration runs at its learning rate: its
   time-averaged weights normalised to the base weights' total (``distilled``: the ratio it
   found) and as they were (``averaged``: ratio and scale);
4. the fixed arms (base and best fixed at their chosen rates, or every rate with
   ``stability``; the replays at their arm's rate) on the evaluation seeds.

Every arm is then scored on the evaluation seeds (disjoint from the calibration seeds): median
and range of the score, regret against the best fixed weights at equal steps and at equal
wall-clock (a slower arm is read at the checkpoint its time reaches), runs needed to choose its
setting, and the largest learning rate at which at least 90 % of its runs finish (on the
evaluation seeds with ``stability``, else on the calibration seeds).

Adding an arm is one line in :data:`ARMS`: ``Arm(label, factory, kwargs, guards)``; the factory
is called as ``factory(base, **kwargs)`` for the bare arm and ``factory(base, **kwargs,
**guards)`` for the guarded one (``guards=None``: no guarded arm). A keyword whose value is
:data:`MAIN` receives the problem's main term. For example, a setting of ``ao.guarded``
measured under ``ao.stable_weights`` is ``Arm("stable ramp 300", ao.stable_weights,
dict(ramp_steps=300))``, and a balancer with recommended guards ``Arm("dwa", ao.dwa_weights,
guards=STANDARD)``; then ``python -m benchmarks.report --arms "stable ramp 300,dwa,dwa+guards"
--merge --out results`` adds their rows to the committed tables.
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
from benchmarks.problems import Problem

PyTree = Any
CALIBRATION_SEEDS = (100, 101, 102)
EVALUATION_SEEDS = tuple(range(10))
CHECKPOINTS = 10  # task metrics are recorded at this many points during training (and at 0)
STABLE_SHARE = 0.9  # a learning rate is stable when at least this share of the runs finish
MAIN = "<main term>"  # placeholder for the problem's main term in an arm's keyword arguments


# The arms ---------------------------------------------------------------------------------------

STANDARD = dict(
    bounds=(0.2, 2.0), max_change=0.1, warmup_steps=100, cooling_period=10, spike_threshold=3.0
)
SEED_START = dict(ramp_steps=0, spike_prior=None)  # as the seed had it: no slow start


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
    Arm("dwa", ao.dwa_weights, guards=STANDARD),
    Arm("softadapt", ao.softadapt_weights, guards=STANDARD),
    Arm("relobralo", ao.relobralo_weights, guards=STANDARD),
    Arm("uncertainty", ao.uncertainty_weights, guards=STANDARD | dict(bounds=(0.1, 10.0))),
    Arm("famo", ao.famo_weights, guards=dict(bounds=(0.1, 10.0))),
    Arm("imtl_l", ao.imtl_l_weights, guards=dict(bounds=(0.1, 10.0))),
    Arm("gls", ao.gls_weights, guards=dict(bounds=(0.1, 10.0))),
    Arm("rlw", ao.rlw_weights, guards=dict(bounds=(0.1, 10.0))),
    Arm("uw_so", ao.uw_so_weights),
    Arm("normalized", ao.normalized_weights),
    # gradient-norm balancers
    Arm("gradnorm", ao.gradnorm_weights, guards=STANDARD),
    Arm(
        "encodec",
        ao.encodec_weights,
        guards=dict(
            bounds=(0.1, 10.0),
            max_change=0.05,
            warmup_steps=100,
            cooling_period=50,
            min_stable_steps=10,
            auto_rollback=True,
        ),
    ),
    # the same guards with bounds that reach the ratios of terms on different scales
    Arm(
        "encodec wide",
        ao.encodec_weights,
        guards=dict(
            bounds=(1e-3, 1e3),
            max_change=0.05,
            warmup_steps=100,
            cooling_period=50,
            min_stable_steps=10,
            auto_rollback=True,
        ),
    ),
    Arm(
        "lr_annealing",
        ao.lr_annealing_weights,
        dict(main=MAIN),
        guards=dict(max_weight=1e3, cooling_period=10, auto_rollback=True),
    ),
    Arm("metabalance", ao.metabalance_weights, dict(main=MAIN)),
    # Gramian methods (no recommended guards: bare)
    Arm("mgda", ao.mgda_weights),
    Arm("upgrad", ao.upgrad_weights),
    Arm("dualproj", ao.dualproj_weights),
    Arm("imtl_g", ao.imtl_g_weights),
    Arm("aligned_mtl", ao.aligned_mtl_weights),
    Arm("cagrad", ao.cagrad_weights, dict(c=0.4)),
    Arm("pcgrad", ao.pcgrad_weights),
    Arm("config", ao.config_weights),
    Arm("nash_mtl", ao.nash_mtl_weights),
)
"""Every method of the suite: each ``*_weights`` preset of the library, with the guards its
docstring recommends (FAMO, IMTL-L, GLS and RLW recommend "bounds": here ``(0.1, 10.0)``)."""


class Variant(NamedTuple):
    """One arm as trained: a label and a function of the problem giving its weighting."""

    label: str
    method: str
    guarded: bool
    make: Callable[[Problem], ao.LossWeighting]


def variants(arms: Sequence[Arm] = ARMS) -> list[Variant]:
    """Every arm bare and, where it has recommended guards, guarded (label ``+guards``)."""

    def maker(arm: Arm, guards: dict[str, Any]):
        def make(problem: Problem) -> ao.LossWeighting:
            kwargs = {k: problem.main if v is MAIN else v for k, v in arm.kwargs.items()}
            return arm.factory(problem.base, **kwargs, **guards)

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
    finished: np.ndarray  # (runs,) every loss and the final parameters finite
    first_failure: np.ndarray  # (runs,) first step with a non-finite loss or parameter, or -1
    mean_weights: np.ndarray  # (runs, terms) the weights averaged over the steps
    weights: np.ndarray  # (runs, CHECKPOINTS, terms) the weights at each checkpoint
    spikes: np.ndarray  # (runs,) spike-guard cuts, summed over terms
    nonfinite_steps: np.ndarray  # (runs, 2, terms) first and last non-finite step (0: none)
    trace: np.ndarray | None  # (runs, steps, terms) the weights at every step, when asked
    compile_s: float
    run_s: float

    @property
    def score(self) -> np.ndarray:
        """(runs, CHECKPOINTS + 1): the mean of the heads' metrics; a failed run is +inf."""
        score = np.mean(np.stack(list(self.metrics.values())), axis=0)
        return np.where(self.finished[:, None], score, np.inf)


def _all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class Trainer(NamedTuple):
    """A compiled trainer of one problem and weighting, for chunks of ``batch`` runs."""

    problem: Problem
    compiled: Any
    batch: int
    steps: int
    compile_s: float

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
        start = time.perf_counter()
        outs = []
        for i in range(0, n + pad, self.batch):
            part = slice(i, i + self.batch)
            out = self.compiled(seeds[part], rates[part], fixed[part].astype(np.float32))
            outs.append(jax.tree.map(np.asarray, jax.block_until_ready(out)))
        run_s = time.perf_counter() - start
        out = jax.tree.map(lambda *x: np.concatenate(x)[:n], *outs)
        metrics, finished, first, mean_w, weights, spikes, nonfinite, trace = out
        trace = trace if trace.ndim == 3 else None
        return Runs(
            metrics,
            finished,
            first,
            mean_w,
            weights,
            spikes,
            nonfinite,
            trace,
            self.compile_s,
            run_s,
        )


def trainer(
    problem: Problem,
    weighting: ao.LossWeighting | None,
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
      weighting: the weighting, or None for fixed weights.
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
    per_term = weighting is not None and bool(weighting.needs)

    def optimizer(lr):
        tx = problem.optimizer(lr)
        return ao.apply_if_finite(tx) if skip_nonfinite else tx

    def losses_at(params, key, t):
        return problem.losses(params, jax.random.fold_in(key, t), t)

    def one(seed, lr, w):
        init_key, data_key = jax.random.split(jax.random.key(seed))
        params = problem.init(init_key)
        fixed_weights = {k: w[i] for i, k in enumerate(terms)}  # w is in the order of terms
        if per_term:
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
            if per_term:

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

        def block(carry, i):
            carry, (ok, vectors) = jax.lax.scan(step, carry, i * chunk + jnp.arange(chunk))
            return carry, (problem.metrics(carry[0]), ok, vectors)

        carry = (params, tx.init(params), state)
        metrics0 = problem.metrics(params)
        carry, (metrics, ok, vectors) = jax.lax.scan(block, carry, jnp.arange(CHECKPOINTS))
        ok = ok.reshape(-1)
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), metrics0, metrics)
        spikes = jnp.int32(0)
        nonfinite = jnp.zeros((2, len(terms)), jnp.int32)
        if weighting is not None:
            state = ao.find_state(carry[1]) if per_term else carry[2]
            spikes = jnp.sum(state.counters.spikes)
            counters = state.counters
            nonfinite = jnp.stack([counters.first_nonfinite_step, counters.last_nonfinite_step])
        first = jnp.where(jnp.all(ok), -1, jnp.argmin(ok))
        vectors = vectors.reshape(-1, len(terms))
        return (
            metrics,
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
    return Trainer(problem, compiled, batch, steps, time.perf_counter() - start)


def train(
    problem: Problem,
    weighting: ao.LossWeighting | None,
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
        finished=pick(runs.finished),
        first_failure=pick(runs.first_failure),
        mean_weights=pick(runs.mean_weights),
        weights=pick(runs.weights),
        spikes=pick(runs.spikes),
        nonfinite_steps=pick(runs.nonfinite_steps),
        trace=None if runs.trace is None else pick(runs.trace),
    )


# The protocol -----------------------------------------------------------------------------------


@dataclasses.dataclass
class ArmResult:
    """One arm of one problem on the evaluation seeds, and how its setting was chosen."""

    label: str
    kind: str  # "fixed", "method", "distilled" or "averaged"
    rate: float
    weights: dict[str, float] | None  # fixed arms: the weights
    runs: Runs  # evaluation runs at the chosen rate
    runs_needed: int  # training runs (per seed) to choose the setting
    step_s: float  # seconds per run-step, batched
    stable_rate: float  # largest rate of the grid with >= STABLE_SHARE runs finished; nan if none
    calibration_score: float  # median final score on the calibration seeds at ``rate``
    guarded: bool = False
    method: str = ""


@dataclasses.dataclass
class ProblemResult:
    problem: Problem
    arms: list[ArmResult]
    grid: list[dict[str, Any]]  # the fixed grid on calibration seeds: weights, rate, median score
    calibration_seeds: tuple[int, ...]
    evaluation_seeds: tuple[int, ...]
    seconds: float
    compile_s: float

    def arm(self, label: str) -> ArmResult:
        return next(a for a in self.arms if a.label == label)


def median_final(runs: Runs) -> float:
    return float(np.median(runs.score[:, -1]))


def _stable_rate(rates: np.ndarray, finished: np.ndarray) -> float:
    """The largest rate at which at least ``STABLE_SHARE`` of the runs finished."""
    good = [r for r in np.unique(rates) if finished[rates == r].mean() >= STABLE_SHARE]
    return float(max(good)) if good else float("nan")


def _best(scores: dict[Any, float]) -> Any:
    """The key of the lowest score (ties: the first)."""
    keys = list(scores)
    return keys[int(np.argmin([scores[k] for k in keys]))]


def run_problem(
    problem: Problem,
    arms: Sequence[Arm] = ARMS,
    *,
    calibration_seeds: Sequence[int] = CALIBRATION_SEEDS,
    evaluation_seeds: Sequence[int] = EVALUATION_SEEDS,
    labels: Sequence[str] | None = None,
    batch: int = 64,
    log: Callable[[str], None] = print,
    progress: Callable[[ProblemResult], None] | None = None,
) -> ProblemResult:
    """The protocol on one problem (see the module docstring).

    ``labels`` restricts the arms to these labels of :func:`variants` (e.g. ``"dwa+guards"``);
    ``progress`` is called with the results so far after the fixed arms and after each method.
    """
    start = time.perf_counter()
    calibration_seeds, evaluation_seeds = tuple(calibration_seeds), tuple(evaluation_seeds)
    if set(calibration_seeds) & set(evaluation_seeds):
        raise ValueError(
            f"calibration and evaluation seeds must be disjoint, got {calibration_seeds} "
            f"and {evaluation_seeds}"
        )
    terms = problem.terms
    total = sum(problem.base.values())
    rates = tuple(problem.rates)
    base_vec = np.asarray([problem.base[k] for k in terms], np.float32)

    # 1. the fixed grid on the calibration seeds
    settings = []
    for ratio in problem.ratios:
        r = np.asarray([ratio[k] for k in terms], np.float64)
        r = r / r.sum()
        for s in problem.scales:
            settings.append((s * total * r).astype(np.float32))
    is_base = [
        bool(np.allclose(w, base_vec, rtol=1e-5)) for w in settings
    ]  # the base weights may be in the grid
    if not any(is_base):
        settings.append(base_vec)
        is_base.append(True)
    cells = [
        (g, lr, seed) for g in range(len(settings)) for lr in rates for seed in calibration_seeds
    ]
    fixed_trainer = trainer(problem, None, batch=min(batch, len(cells)))
    grid_runs = fixed_trainer(
        seeds=[c[2] for c in cells],
        rates=[c[1] for c in cells],
        fixed=np.stack([settings[c[0]] for c in cells]),
    )
    compile_s = grid_runs.compile_s
    fixed_step_s = grid_runs.run_s / (fixed_trainer.slots(len(cells)) * fixed_trainer.steps)
    log(
        f"[{problem.name}] fixed grid: {len(settings)} weights x {len(rates)} rates x "
        f"{len(calibration_seeds)} seeds, compile {grid_runs.compile_s:.0f} s, "
        f"run {grid_runs.run_s:.0f} s"
    )
    cell_g = np.asarray([c[0] for c in cells])
    cell_lr = np.asarray([c[1] for c in cells])
    grid_scores = {}
    for g in range(len(settings)):
        for lr in rates:
            mask = (cell_g == g) & (cell_lr == lr)
            grid_scores[(g, lr)] = float(np.median(grid_runs.score[mask, -1]))
    best_g, best_lr = _best(grid_scores)
    base_g = is_base.index(True)
    base_lr = _best({lr: grid_scores[(base_g, lr)] for lr in rates})
    grid = [
        {
            "weights": dict(zip(terms, map(float, settings[g]), strict=True)),
            "rate": lr,
            "score": grid_scores[(g, lr)],
            "heads": {
                h: float(np.median(v[(cell_g == g) & (cell_lr == lr), -1]))
                for h, v in grid_runs.metrics.items()
            },
        }
        for g in range(len(settings))
        for lr in rates
    ]

    # the fixed arms on the evaluation seeds (the fixed trainer: no new compile): base and best
    # fixed at their chosen rates (every rate with ``problem.stability``), then each replay
    def evaluate_fixed(arms_f: list[tuple[str, str, np.ndarray, float | None]]) -> list:
        cells_f = []
        for index, (*_, lr) in enumerate(arms_f):
            every = rates if problem.stability and lr is None else ()
            for r in every or (lr if lr is not None else (base_lr, best_lr)[index],):
                cells_f += [(index, r, seed) for seed in evaluation_seeds]
        runs_f = fixed_trainer(
            seeds=[c[2] for c in cells_f],
            rates=[c[1] for c in cells_f],
            fixed=np.stack([arms_f[c[0]][2] for c in cells_f]),
        )
        f_index = np.asarray([c[0] for c in cells_f])
        f_lr = np.asarray([c[1] for c in cells_f])
        out = []
        for index, (label, kind, w, lr) in enumerate(arms_f):
            grid_key = (
                {0: (base_g, base_lr), 1: (best_g, best_lr)}.get(index) if lr is None else None
            )
            lr = grid_key[1] if grid_key else lr
            mine = f_index == index
            if grid_key is None:
                stable = float("nan")
            elif problem.stability:
                stable = _stable_rate(f_lr[mine], runs_f.finished[mine])
            else:
                in_grid = cell_g == grid_key[0]
                stable = _stable_rate(cell_lr[in_grid], grid_runs.finished[in_grid])
            out.append(
                ArmResult(
                    label=label,
                    kind=kind,
                    rate=lr,
                    weights=dict(zip(terms, map(float, w), strict=True)),
                    runs=take(runs_f, np.flatnonzero(mine & (f_lr == lr))),
                    runs_needed=len(settings) * len(rates)
                    if index == 1 and grid_key
                    else len(rates),
                    step_s=fixed_step_s,
                    stable_rate=stable,
                    calibration_score=grid_scores[grid_key] if grid_key else float("nan"),
                    method="" if grid_key else label.split(" (")[0],
                )
            )
        return out

    fixed_results = evaluate_fixed(
        [("base", "fixed", base_vec, None), ("best fixed", "fixed", settings[best_g], None)]
    )
    log(f"[{problem.name}] base and best fixed on the evaluation seeds")
    results: list[ArmResult] = []
    replay_results: list[ArmResult] = []

    def so_far() -> ProblemResult:
        return ProblemResult(
            problem=problem,
            arms=fixed_results + results + replay_results,
            grid=grid,
            calibration_seeds=calibration_seeds,
            evaluation_seeds=evaluation_seeds,
            seconds=time.perf_counter() - start,
            compile_s=compile_s,
        )

    if progress is not None:
        progress(so_far())

    # 2. every method over the rates on the calibration seeds, then at its best rate on the
    # evaluation seeds (one compile); with ``problem.stability``, every rate on every seed
    for variant in variants(arms):
        if labels is not None and variant.label not in labels:
            continue
        weighting = variant.make(problem)
        seeds_all = calibration_seeds + (evaluation_seeds if problem.stability else ())
        cells_m = [(lr, seed) for lr in rates for seed in seeds_all]
        size = len(cells_m) if problem.stability else max(len(cells_m), len(evaluation_seeds))
        method_trainer = trainer(problem, weighting, batch=min(batch, size))
        runs = method_trainer(seeds=[c[1] for c in cells_m], rates=[c[0] for c in cells_m])
        compile_s += runs.compile_s
        lr_of = np.asarray([c[0] for c in cells_m])
        calibration = np.isin([c[1] for c in cells_m], calibration_seeds)
        scores = {lr: float(np.median(runs.score[(lr_of == lr) & calibration, -1])) for lr in rates}
        lr = _best(scores)
        run_s, slots = runs.run_s, method_trainer.slots(len(cells_m))
        if problem.stability:
            evaluation = take(runs, np.flatnonzero((lr_of == lr) & ~calibration))
            stable = _stable_rate(lr_of[~calibration], runs.finished[~calibration])
        else:
            evaluation = method_trainer(
                seeds=list(evaluation_seeds), rates=[lr] * len(evaluation_seeds)
            )
            run_s, slots = (
                run_s + evaluation.run_s,
                slots + method_trainer.slots(len(evaluation_seeds)),
            )
            stable = _stable_rate(lr_of, runs.finished)
        results.append(
            ArmResult(
                label=variant.label,
                kind="method",
                rate=lr,
                weights=None,
                runs=evaluation,
                runs_needed=len(rates),
                step_s=run_s / (slots * method_trainer.steps),
                stable_rate=stable,
                calibration_score=scores[lr],
                guarded=variant.guarded,
                method=variant.method,
            )
        )
        log(
            f"[{problem.name}] {variant.label}: lr {lr:g}, calibration median "
            f"{scores[lr]:.4g}, compile {runs.compile_s:.0f} s, run {runs.run_s:.0f} s"
        )
        cal_at = (lr_of == lr) & calibration & runs.finished
        if cal_at.any():
            mean = runs.mean_weights[cal_at].mean(axis=0)
            if np.all(np.isfinite(mean)) and mean.sum() > 0:
                replay_results += evaluate_fixed(
                    [
                        (
                            f"{variant.label} (distilled)",
                            "distilled",
                            mean / mean.sum() * total,
                            lr,
                        ),
                        (f"{variant.label} (averaged)", "averaged", mean, lr),
                    ]
                )
        if progress is not None:
            progress(so_far())

    return so_far()


# Scoring ----------------------------------------------------------------------------------------


def regret(problem: Problem, score: float, best: float) -> float:
    """Regret of a median score against the best fixed weights' (>= 0 means worse)."""
    if problem.regret == "absolute":
        return score - best
    if not np.isfinite(score):
        return float("inf")
    return score / best - 1.0 if best > 0 else float("nan")


def equal_time_score(arm: ArmResult, reference_step_s: float) -> float:
    """The arm's median score at the checkpoint its time reaches in the fixed arm's time.

    The fixed weights' full run takes ``steps * reference_step_s``; an arm ``c`` times slower
    per step gets ``steps / c`` steps of it: it is read at the last checkpoint at or before that
    (checkpoint 0 being the initial parameters).
    """
    ratio = max(arm.step_s / reference_step_s, 1.0) if reference_step_s > 0 else 1.0
    index = int(np.floor(CHECKPOINTS / ratio + 1e-9))
    return float(np.median(arm.runs.score[:, index]))
