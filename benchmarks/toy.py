"""The two-task toy of CAGrad: which weighting reaches the Pareto set, from five starts.

The problem is CAGrad's toy (Liu et al. 2021, ``toy.py`` of Cranial-XIX/CAGrad) as Nash-MTL
(Navon et al. 2022) and FAMO (Liu et al. 2023) run it (``experiments/toy`` of
AvivNavon/nash-mtl and Cranial-XIX/FAMO): two losses of ``x = (x1, x2)``, the first scaled by
``0.1``, the same five starting points, Adam with learning rate ``1e-3`` for 50 000 steps (the
default step count of FAMO's toy; Nash-MTL's is 35 000, CAGrad's 100 000). The minima of the
two losses are at ``(7, -8.43)`` and ``(-7, -8.43)``; the Pareto set is the curve between them,
``x2 = x2*(x1)`` for ``|x1| <= 7`` (``x2*(0) = -8.355``), computed here to 1e-9.

Each weighting gives the update direction ``w1 grad f1 + w2 grad f2``, fed to Adam:

- ``equal``: fixed weights ``(1, 1)`` (the authors' "LS");
- the Gramian methods of ``adaptive_optax`` (MGDA, UPGrad, DualProj, IMTL-G, Aligned-MTL,
  CAGrad with ``c = 0.4``, PCGrad, ConFIG, Nash-MTL with ``max_norm = 1``, as in the authors'
  runs), bare, their weights computed from this step's Gramian and applied at once (each
  method's algorithm); see :func:`gramian_step`;
- the loss-only methods of ``adaptive_optax`` (DWA, uncertainty weighting, SoftAdapt,
  ReLoBRaLo, and FAMO, IMTL-L, RLW and GLS when the installed version has them), bare, with the
  library's convention: the weights in the state weight this step, and ``update`` with this
  step's losses gives the next step's. The toy's losses are negative (down to -20), which those
  methods do not expect: they see the losses minus FAMO's floors ``(-2.1, -21)`` (the floors
  FAMO's authors pass to ``set_min_losses``), which are positive; FAMO itself gets the losses
  and those floors, as its authors run it;
- ``imtl_g signed``, ``aligned_mtl signed``, ``config signed``: the solvers' weights applied
  directly, negative ones included. These are not weightings of the library, whose weights
  are non-negative (the guards clip a negative proposal to 0); the rows show what the clipping
  changes.

A start *reaches* the Pareto set when the final point is within ``0.05`` of it (Euclidean, in
``x``). Run::

    python -m benchmarks.toy                     # writes out/toy/toy.md and out/toy/toy.png
    python -m benchmarks.toy --out results       # the committed results/toy.{md,png}
    python -m benchmarks.toy --steps 2000 --methods mgda,equal   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao
from adaptive_optax._src import gramian as solvers

SCALE = 0.1  # the factor of the first loss in Nash-MTL's and FAMO's runs
LOWER = 5e-6
STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
STEPS = 50_000
LR = 1e-3
TOLERANCE = 0.05  # distance to the Pareto set below which a start has reached it
FLOORS = {"f1": -21.0 * SCALE, "f2": -21.0}  # FAMO's min_losses in the authors' toy
BASE = {"f1": 1.0, "f2": 1.0}
RECORD_EVERY = 10  # trajectory points kept for the figure


def toy_losses(x: jax.Array) -> jax.Array:
    """``(f1, f2)`` at ``x = (x1, x2)``: the toy of CAGrad, ``f1`` scaled by ``SCALE``."""
    x1, x2 = x[0], x[1]
    f1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), LOWER)) + 6
    f2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), LOWER)) + 6
    c1 = jnp.maximum(jnp.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c2 = jnp.maximum(jnp.tanh(-x2 * 0.5), 0)
    return jnp.stack([(f1 * c1 + f1_sq * c2) * SCALE, f2 * c1 + f2_sq * c2])


def pareto_set(points: int = 2801) -> np.ndarray:
    """``(points, 2)`` samples of the Pareto set: ``(x1, x2*(x1))`` for ``x1`` in ``[-7, 7]``.

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


def distance_to(front: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``x`` to the polyline ``front``."""
    a, b = front[:-1], front[1:]
    ab = b - a
    ap = x[:, None, :] - a[None]
    t = np.clip(np.sum(ap * ab, -1) / np.sum(ab * ab, -1), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.min(np.linalg.norm(x[:, None, :] - closest, axis=-1), axis=1)


# ---------------------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
    """A weighting of the benchmark and how its step uses it."""

    weighting: ao.LossWeighting | None  # None: fixed weights (1, 1), or ``solver``'s
    gramian: bool = False  # weights from this step's Gramian, applied at once
    shifted: bool = True  # loss-only: fed the losses minus FLOORS
    solver: Callable[[jax.Array], jax.Array] | None = None  # signed weights from the Gramian


def methods() -> dict[str, Method]:
    """Every method of the benchmark that the installed ``adaptive_optax`` has."""
    out = {"equal": Method(None)}
    gramian = {
        "mgda": lambda: ao.mgda_weights(BASE),
        "upgrad": lambda: ao.upgrad_weights(BASE),
        "dualproj": lambda: ao.dualproj_weights(BASE),
        "imtl_g": lambda: ao.imtl_g_weights(BASE),
        "aligned_mtl": lambda: ao.aligned_mtl_weights(BASE),
        "cagrad": lambda: ao.cagrad_weights(BASE, c=0.4),
        "pcgrad": lambda: ao.pcgrad_weights(BASE),
        "config": lambda: ao.config_weights(BASE),
        "nash_mtl": lambda: ao.nash_mtl_weights(BASE, max_norm=1.0),
    }
    out |= {name: Method(make(), gramian=True) for name, make in gramian.items()}
    signed = {
        "imtl_g": solvers.imtl_g_from_gramian,
        "aligned_mtl": solvers.aligned_mtl_from_gramian,
        "config": solvers.config_from_gramian,
    }
    out |= {f"{name} signed": Method(None, solver=solve) for name, solve in signed.items()}
    loss_only: dict[str, tuple[str, Callable[[Callable], ao.LossWeighting], bool]] = {
        "dwa": ("dwa_weights", lambda f: f(BASE, temperature=2.0), True),
        "uncertainty": ("uncertainty_weights", lambda f: f(BASE), True),
        "softadapt": ("softadapt_weights", lambda f: f(BASE), True),
        "relobralo": ("relobralo_weights", lambda f: f(BASE), True),
        # in the library once merged: FAMO as its authors run the toy (no weight decay)
        "famo": ("famo_weights", lambda f: f(BASE, weight_decay=0.0, min_losses=FLOORS), False),
        "imtl_l": ("imtl_l_weights", lambda f: f(BASE), True),
        "rlw": ("rlw_weights", lambda f: f(BASE), True),
        "gls": ("gls_weights", lambda f: f(BASE), True),
    }
    for name, (factory, make, shifted) in loss_only.items():
        if hasattr(ao, factory):
            out[name] = Method(make(getattr(ao, factory)), shifted=shifted)
    return out


def gramian_step(weighting: ao.LossWeighting, losses, jacobian, state):
    """The Gramian methods' step: ``update`` with this step's Gramian, then its weights.

    Through :func:`adaptive_optax.weight_gradients` the weights from step ``t``'s Gramian
    weight step ``t + 1`` (the library's convention for every weighting); the methods compute
    them from the current gradients, which a step that calls ``update`` first does.
    """
    gramian = jacobian @ jacobian.T
    weights, state = weighting.update(losses, state, grad_stats={"gramian": gramian})
    return jnp.stack([weights["f1"], weights["f2"]]), state


def run_method(method: Method, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """All starts at once (``vmap``), all steps in one ``lax.scan``: the final points and the
    trajectories (every ``RECORD_EVERY`` steps), as NumPy arrays."""
    tx = optax.adam(LR)
    weighting = method.weighting
    floors = jnp.asarray([FLOORS["f1"], FLOORS["f2"]])

    def step(carry, _):
        x, opt_state, state = carry
        losses, jacobian = toy_losses(x), jax.jacrev(toy_losses)(x)
        if method.solver is not None:
            weights = method.solver(jacobian @ jacobian.T)
        elif weighting is None:
            weights = jnp.ones(2)
        elif method.gramian:
            terms = {"f1": losses[0], "f2": losses[1]}
            weights, state = gramian_step(weighting, terms, jacobian, state)
        else:
            seen = losses - floors if method.shifted else losses
            weights = jnp.stack(jax.tree.leaves(state.weights))
            _, state = weighting.update({"f1": seen[0], "f2": seen[1]}, state)
        updates, opt_state = tx.update(weights @ jacobian, opt_state, x)
        return (optax.apply_updates(x, updates), opt_state, state), x

    def run(x0):
        state = () if weighting is None else weighting.init()
        carry = (x0, tx.init(x0), state)

        def block(carry, _):
            carry, xs = jax.lax.scan(step, carry, None, length=RECORD_EVERY)
            return carry, xs[0]

        (x, _, _), trajectory = jax.lax.scan(block, carry, None, length=steps // RECORD_EVERY)
        return x, trajectory

    starts = jnp.asarray(STARTS, jnp.float32)
    final, trajectory = jax.jit(jax.vmap(run))(starts)
    return np.asarray(final, np.float64), np.asarray(trajectory, np.float64)


# ---------------------------------------------------------------------------------- outputs


@dataclasses.dataclass(frozen=True)
class Result:
    final: np.ndarray  # (starts, 2)
    losses: np.ndarray  # (starts, 2): f1 (scaled), f2 at the final point
    distance: np.ndarray  # (starts,)
    trajectory: np.ndarray  # (starts, points, 2)
    seconds: float

    @property
    def reached(self) -> np.ndarray:
        return self.distance < TOLERANCE


def evaluate(final: np.ndarray, trajectory: np.ndarray, seconds: float) -> Result:
    losses = np.asarray(jax.vmap(toy_losses)(jnp.asarray(final, jnp.float32)), np.float64)
    return Result(final, losses, distance_to(pareto_set(), final), trajectory, seconds)


def start_label(i: int) -> str:
    x1, x2 = STARTS[i]
    return f"({x1:g}, {x2:g})"


def table(results: dict[str, Result]) -> str:
    """Markdown: per method, each start's final point and whether it reached the set."""
    head = "| method | reached | " + " | ".join(map(start_label, range(len(STARTS)))) + " |"
    lines = [head, "|---" * (len(STARTS) + 2) + "|"]
    for name, r in results.items():
        cells = [
            f"{'yes' if ok else '**no**'} ({x[0]:.2f}, {x[1]:.2f})"
            for ok, x in zip(r.reached, r.final, strict=True)
        ]
        lines.append(
            f"| {name} | {int(r.reached.sum())}/{len(STARTS)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def detail(results: dict[str, Result]) -> str:
    """Markdown: per method and start, the final point, losses and distance to the set."""
    lines = [
        "| method | start | final x | f1 (x0.1) | f2 | distance | reached |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for i in range(len(STARTS)):
            x, f = r.final[i], r.losses[i]
            lines.append(
                f"| {name} | {start_label(i)} | ({x[0]:.3f}, {x[1]:.3f}) | {f[0]:.4f} | "
                f"{f[1]:.4f} | {r.distance[i]:.3g} | {'yes' if r.reached[i] else 'no'} |"
            )
    return "\n".join(lines)


def figure(results: dict[str, Result], path: pathlib.Path) -> None:
    """One panel per method: the trajectories over the contours of ``f1 + f2``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-10.0, 10.0, 241)
    xx, yy = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=1), jnp.float32)
    total = np.asarray(jax.vmap(toy_losses)(points).sum(axis=1)).reshape(xx.shape)
    front = pareto_set()
    cols = 4
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (name, r) in zip(axes.flat, results.items(), strict=False):
        ax.contour(xx, yy, total, levels=20, linewidths=0.5, cmap="viridis")
        ax.plot(front[:, 0], front[:, 1], color="0.5", linewidth=4, zorder=1)
        for i, path_i in enumerate(r.trajectory):
            ax.plot(path_i[:, 0], path_i[:, 1], color=colors(i), linewidth=1.2, zorder=2)
            ax.plot(*STARTS[i], "o", color="k", markersize=4, zorder=3)
            ax.plot(*r.final[i], "x" if not r.reached[i] else "*", color=colors(i), zorder=4)
        ax.set_title(f"{name}: {int(r.reached.sum())}/{len(STARTS)}", fontsize=10)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_xticks([-10, 0, 10])
        ax.set_yticks([-10, 0, 10])
    for ax in axes.flat[len(results) :]:
        ax.axis("off")
    fig.suptitle(
        "CAGrad's toy (f1 scaled by 0.1): trajectories over the contours of f1 + f2; "
        "gray: the Pareto set",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out", "toy"))
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < RECORD_EVERY or args.steps % RECORD_EVERY:
        parser.error(f"--steps must be a positive multiple of {RECORD_EVERY}, got {args.steps}")
    available = methods()
    chosen = [m for m in args.methods.split(",") if m] or list(available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        parser.error(f"unknown methods {unknown}; available: {sorted(available)}")

    results = {}
    for name in chosen:
        start = time.perf_counter()
        final, trajectory = run_method(available[name], args.steps)
        results[name] = evaluate(final, trajectory, time.perf_counter() - start)
        r = results[name]
        print(f"{name:>12}: {int(r.reached.sum())}/{len(STARTS)} in {r.seconds:.1f} s", flush=True)

    header = (
        f"# CAGrad's two-task toy: {args.steps} Adam steps (lr {LR:g}) from five starts\n\n"
        "Written by `python -m benchmarks.toy` (see its docstring for the setup). A start reaches "
        f"the Pareto set when the final point is within {TOLERANCE:g} of it; the table gives "
        "the final point `(x1, x2)`.\n\n"
    )
    body = table(results) + "\n\n## Final losses and distances\n\n" + detail(results)
    seconds = ", ".join(f"{name} {r.seconds:.0f} s" for name, r in results.items())
    footer = f"\n\nWall time per method (compilation included, one CPU process): {seconds}.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy.md").write_text(header + body + footer)
    print(table(results))
    if not args.no_figure:
        figure(results, args.out / "toy.png")
    return results


if __name__ == "__main__":
    main()
