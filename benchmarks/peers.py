"""TorchJD's UPGrad step beside ours, on the same problem and the same machine.

Install (a separate virtual environment keeps torch out of the test environment; torch's CPU
build, since a plain ``torch`` requirement pulls the CUDA build, several GB)::

    python3 -m venv /work/venv-peers
    /work/venv-peers/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /work/venv-peers/bin/pip install -e '.[peers]'

Run: ``/work/venv-peers/bin/python -m benchmarks.peers`` (``--quick`` for a smoke run; add
``--markdown results/peers_cpu.md`` to write the tables). Not part of the test command.

The problem: an MLP trunk (256 -> 1024 -> 640, ReLU, 0.92M parameters) with K linear heads
(640 -> 16), one mean-squared-error term per head, batch 64, Adam. Every arm runs in this
process, single-threaded on a CPU (``torch.set_num_threads(1)`` and XLA's CPU client without
Eigen's thread pool; on a device machine JAX runs on the GPU, and torch too if its build has
CUDA), timed in interleaved rounds: blocked (the host waits for each step) and
pipelined (``--pipeline`` steps dispatched back to back, one wait). Medians, and ratios within
one run. Printed:

1. ms per training step, K in {2, 4, 8}: JAX's plain step (one ``grad`` of the summed
   losses), torch's, TorchJD's (``autojac.backward`` + ``jac_to_grad(UPGrad())``), ours
   (``ao.per_term_grads`` -> ``ao.weight_gradients(ao.upgrad_weights(...))`` -> Adam), the
   old pattern with ``jax.jacrev``, and the representation-level path
   (``ao.representation_grads`` at the trunk's output);
2. the per-term gradients alone against one ``grad`` of the sum (``per_term_grads`` and
   ``jax.jacrev``);
3. the solvers alone (UPGrad and MGDA from a Gramian), K up to 32, against TorchJD's, with
   UPGrad's interior-point solver of before issue 28 beside them and UPGrad inside a compiled
   ``lax.map``; ``--solvers`` runs this table alone;
4. peak resident memory of K=8 steps, each arm in a fresh process (``--memory``), under
   glibc's default allocator settings and with its mmap threshold fixed;
5. the amortized step (``ao.amortized_grads``: the per-term gradients every 10 steps, one
   backward pass of the weighted loss on the others) beside JAX's plain step and the per-term
   step with UPGrad's weights every 10 steps (``ao.upgrad_weights(base, every=10)``), each
   timed over blocks of 10 steps (one recompute step in each). ``--amortized`` runs this table
   alone, with JAX only (torch need not be installed): ``python -m benchmarks.peers
   --amortized --markdown results/amortized_cpu.md``;
6. scaling (``--scaling``): the step as K grows (2 to 32) and as the parameters grow (the
   trunk's widths scaled: about 0.13M to 9.2M parameters at K = 8), ours beside TorchJD's, and
   the curves in a PNG beside the Markdown file (where matplotlib is installed); then issue
   28's targets, each with its figure from the tables. The whole: ``python -m benchmarks.peers
   --memory --scaling --markdown results/peers_cpu.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

if "jax" not in sys.modules:  # single-threaded XLA, as torch below; set before jax starts
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao

BATCH, INPUT, HIDDEN, FEATURES, OUTPUT = 64, 256, 1024, 640, 16
LR = 1e-3


def widths(width: float) -> tuple[int, int]:
    """The trunk's hidden and feature widths at ``width`` times the default ones."""
    return max(1, round(HIDDEN * width)), max(1, round(FEATURES * width))


def parameter_count(k: int, width: float) -> int:
    """Parameters of the trunk and ``k`` heads at ``width``."""
    hidden, features = widths(width)
    return (INPUT + 1) * hidden + (hidden + 1) * features + k * (features + 1) * OUTPUT


def problem(k: int, seed: int = 0, width: float = 1.0) -> dict:
    """Parameters and a batch, as NumPy arrays (the same values for both frameworks).

    Args:
      k: the number of heads (loss terms).
      seed: the NumPy seed of the values.
      width: the trunk's widths as a multiple of ``HIDDEN`` and ``FEATURES`` (1: 0.92M
        parameters at K = 8; the scaling table's larger and smaller models).

    Returns:
      ``{"params": ..., "x": ..., "y": ...}``: the trunk and the ``k`` heads, a batch and one
      target per head.
    """
    hidden, features = widths(width)
    rng = np.random.default_rng(seed)

    def dense(n_in, n_out):
        return {
            "w": (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
            "b": np.zeros(n_out, np.float32),
        }

    return {
        "params": {
            "trunk": [dense(INPUT, hidden), dense(hidden, features)],
            "heads": {f"t{i}": dense(features, OUTPUT) for i in range(k)},
        },
        "x": rng.standard_normal((BATCH, INPUT)).astype(np.float32),
        "y": {f"t{i}": rng.standard_normal((BATCH, OUTPUT)).astype(np.float32) for i in range(k)},
    }


# ----------------------------------------------------------------------------------------- JAX


def encode(params, x, y):
    del y
    for layer in params["trunk"]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x


def decode(params, z, x, y):
    del x
    return {
        t: jnp.mean((z @ head["w"] + head["b"] - y[t]) ** 2) for t, head in params["heads"].items()
    }


def losses_fn(params, x, y):
    return decode(params, encode(params, x, y), x, y)


def jax_steps(k: int, width: float = 1.0) -> dict:
    """Name -> (jitted step, initial carry); each step maps the carry to the next one."""
    data = jax.tree.map(jnp.asarray, problem(k, width=width))
    params, x, y = data["params"], data["x"], data["y"]
    base = {t: 1.0 for t in y}
    terms = jax.tree.structure(base)
    adam = optax.adam(LR)
    upgrad = ao.upgrad_weights(base)
    chained = optax.chain(ao.weight_gradients(upgrad), adam)

    def plain(carry):
        params, opt_state = carry
        grads = jax.grad(lambda p: sum(losses_fn(p, x, y).values()))(params)
        updates, opt_state = adam.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def documented(per_term):
        def step(carry):
            params, opt_state = carry
            losses, grads = per_term(params)
            updates, opt_state = chained.update(grads, opt_state, params, losses=losses)
            return optax.apply_updates(params, updates), opt_state

        return step

    def fast(params):
        return ao.per_term_grads(losses_fn)(params, x, y)

    def jacrev(params):
        return losses_fn(params, x, y), jax.jacrev(losses_fn)(params, x, y)

    def representation(carry):
        params, opt_state, weight_state = carry
        losses, grads, backward = ao.representation_grads(encode, decode)(params, x, y)
        stats = ao.gradient_statistics(grads, upgrad.needs, terms)
        weights, weight_state = upgrad.update(losses, weight_state, grad_stats=stats)
        updates, opt_state = adam.update(backward(weights), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, weight_state

    return {
        "jax plain": (jax.jit(plain), (params, adam.init(params))),
        "ours per_term_grads": (jax.jit(documented(fast)), (params, chained.init(params))),
        "ours jacrev": (jax.jit(documented(jacrev)), (params, chained.init(params))),
        "ours representation": (
            jax.jit(representation),
            (params, adam.init(params), upgrad.init()),
        ),
    }


EVERY = 10  # the amortized table: weights recomputed every EVERY steps


def amortized_steps(k: int, every: int = EVERY, width: float = 1.0) -> dict:
    """Name -> (jitted step, initial carry) for table 5: JAX's plain step, the per-term step
    with UPGrad's weights every ``every`` steps, and the amortized step."""
    data = jax.tree.map(jnp.asarray, problem(k, width=width))
    params, x, y = data["params"], data["x"], data["y"]
    base = {t: 1.0 for t in y}
    adam = optax.adam(LR)
    chained = optax.chain(ao.weight_gradients(ao.upgrad_weights(base, every=every)), adam)
    amortized = ao.amortized_grads(losses_fn, ao.upgrad_weights(base), every=every)

    def plain(carry):
        params, opt_state = carry
        grads = jax.grad(lambda p: sum(losses_fn(p, x, y).values()))(params)
        updates, opt_state = adam.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def per_term(carry):
        params, opt_state = carry
        losses, grads = ao.per_term_grads(losses_fn)(params, x, y)
        updates, opt_state = chained.update(grads, opt_state, params, losses=losses)
        return optax.apply_updates(params, updates), opt_state

    def amortized_step(carry):
        params, opt_state, state = carry
        losses, grads, state = amortized.update(state, params, x, y)
        updates, opt_state = adam.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state

    return {
        "jax plain": (jax.jit(plain), (params, adam.init(params))),
        f"ours per_term_grads, weights every {every}": (
            jax.jit(per_term),
            (params, chained.init(params)),
        ),
        f"ours amortized_grads, every {every}": (
            jax.jit(amortized_step),
            (params, adam.init(params), amortized.init()),
        ),
    }


def amortized_parts(k: int) -> dict:
    """Name -> (jitted function of the parameters, parameters) for table 5's breakdown: one
    ``grad`` of the sum, the amortized step's two branches alone (a held-weights step; a
    recompute step, which is the per-term step) and the per-term gradients alone; no Adam."""
    data = jax.tree.map(jnp.asarray, problem(k))
    params, x, y = data["params"], data["x"], data["y"]
    base = {t: 1.0 for t in y}
    upgrad = ao.upgrad_weights(base)
    never = ao.amortized_grads(losses_fn, upgrad, every=2**30)  # step 1 recomputes, then holds
    always = ao.amortized_grads(losses_fn, upgrad, every=1)
    _, _, held = jax.jit(never.update)(never.init(), params, x, y)
    start = always.init()
    return {
        "grad of the sum": (
            jax.jit(jax.grad(lambda p: sum(losses_fn(p, x, y).values()))),
            params,
        ),
        "held-weights step": (jax.jit(lambda p: never.update(held, p, x, y)[1]), params),
        "recompute step": (jax.jit(lambda p: always.update(start, p, x, y)[1]), params),
        "ao.per_term_grads alone": (
            jax.jit(lambda p: ao.per_term_grads(losses_fn)(p, x, y)),
            params,
        ),
    }


def averaged(arms: dict, rounds: int, steps: int, *, block_each: bool) -> dict:
    """Median over interleaved rounds of the mean seconds per step over ``steps`` steps,
    waiting for each step (``block_each``) or once at the end (pipelined)."""
    carries = {name: _ready(fn(carry)) for name, (fn, carry) in arms.items()}  # compile, warm
    times = {name: [] for name in arms}
    for _ in range(rounds):
        for name, (fn, _) in arms.items():
            carry = carries[name]
            start = time.perf_counter()
            for _ in range(steps):
                carry = fn(carry)
                if block_each:
                    _ready(carry)
            _ready(carry)
            times[name].append((time.perf_counter() - start) / steps)
            carries[name] = carry
    return {name: statistics.median(t) for name, t in times.items()}


def amortized_table(ks: list, rounds: int, emit, every: int = EVERY) -> dict:
    """Table 5: ms per step averaged over blocks of ``every`` steps, and ratios to the plain
    step, blocked and pipelined; returns ``{(mode, k): {arm: seconds per step}}``."""
    emit(
        f"5. The amortized step: ms per step, mean over blocks of {every} steps (one "
        f"recompute step each), median of {rounds} interleaved rounds; ratio to JAX's plain "
        "step in parentheses"
    )
    emit()
    times = {
        (mode, k): averaged(amortized_steps(k, every), rounds, every, block_each=mode == "blocked")
        for mode in ("blocked", "pipelined")
        for k in ks
    }
    names = list(times["blocked", ks[0]])
    emit(
        "| ms per step | "
        + " | ".join(f"K={k} {m}" for m in ("blocked", "pipelined") for k in ks)
        + " |"
    )
    emit("|---" * (1 + 2 * len(ks)) + "|")
    for name in names:
        cells = [
            f"{times[m, k][name] * 1e3:.1f} ({times[m, k][name] / times[m, k]['jax plain']:.2f})"
            for m in ("blocked", "pipelined")
            for k in ks
        ]
        emit(f"| {name} | " + " | ".join(cells) + " |")
    emit()
    emit(
        f"5b. Its parts, without Adam: ms per call, median of {rounds * 2} interleaved calls; "
        "ratio to one `grad` of the sum in parentheses"
    )
    emit()
    parts = {k: interleaved_calls(amortized_parts(k), rounds * 2) for k in ks}
    names = list(parts[ks[0]])
    emit("| K | " + " | ".join(names) + " |")
    emit("|---" * (1 + len(names)) + "|")
    for k in ks:
        base = parts[k]["grad of the sum"][0]
        cells = [f"{parts[k][n][0] * 1e3:.1f} ({parts[k][n][0] / base:.2f})" for n in names]
        emit(f"| {k} | " + " | ".join(cells) + " |")
    emit()
    return times


def jax_gradients(k: int) -> dict:
    """Name -> (jitted function of the parameters, parameters): the gradients alone."""
    data = jax.tree.map(jnp.asarray, problem(k))
    params, x, y = data["params"], data["x"], data["y"]
    return {
        "grad of the sum": (
            jax.jit(jax.grad(lambda p: sum(losses_fn(p, x, y).values()))),
            params,
        ),
        "ao.per_term_grads": (jax.jit(lambda p: ao.per_term_grads(losses_fn)(p, x, y)), params),
        "jax.jacrev": (jax.jit(lambda p: jax.jacrev(losses_fn)(p, x, y)), params),
    }


# --------------------------------------------------------------------------------------- torch


def torch_steps(k: int, width: float = 1.0) -> dict:
    """Name -> (step, initial carry) for torch's plain step and TorchJD's UPGrad step."""
    import torch
    from torchjd.aggregation import UPGrad
    from torchjd.autojac import backward, jac_to_grad

    torch.set_num_threads(1)
    device = _torch_device()
    data = problem(k, width=width)
    hidden, features = widths(width)

    def build():
        trunk = torch.nn.Sequential(
            torch.nn.Linear(INPUT, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, features),
            torch.nn.ReLU(),
        )
        heads = torch.nn.ModuleDict({t: torch.nn.Linear(features, OUTPUT) for t in data["y"]})
        with torch.no_grad():
            layers = [trunk[0], trunk[2], *heads.values()]
            values = [*data["params"]["trunk"], *data["params"]["heads"].values()]
            for layer, value in zip(layers, values, strict=True):
                layer.weight.copy_(torch.from_numpy(value["w"].T))
                layer.bias.copy_(torch.from_numpy(value["b"]))
        trunk, heads = trunk.to(device), heads.to(device)
        params = [*trunk.parameters(), *heads.parameters()]
        return trunk, heads, params, torch.optim.Adam(params, lr=LR)

    x = torch.from_numpy(data["x"]).to(device)
    y = {t: torch.from_numpy(v).to(device) for t, v in data["y"].items()}

    def losses(trunk, heads):
        z = trunk(x)
        return [torch.mean((heads[t](z) - y[t]) ** 2) for t in y]

    def plain(carry):
        trunk, heads, params, opt = carry
        opt.zero_grad()
        sum(losses(trunk, heads)).backward()
        opt.step()
        return carry

    aggregator = UPGrad()

    def torchjd_step(carry):
        trunk, heads, params, opt = carry
        opt.zero_grad()
        backward(losses(trunk, heads))
        jac_to_grad(params, aggregator)
        opt.step()
        return carry

    return {"torch plain": (plain, build()), "TorchJD UPGrad": (torchjd_step, build())}


# -------------------------------------------------------------------------------------- timing


def _torch_device() -> str:
    """``"cuda"`` where torch sees a GPU (a CUDA build on a device machine), else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _ready(value):
    """Waits for JAX's asynchronous results and torch's CUDA stream (CPU torch is synchronous)."""
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.synchronize()
    return jax.block_until_ready(value)


def interleaved(arms: dict, rounds: int, steps: int) -> dict:
    """Median seconds per step of each arm, timed in interleaved rounds of ``steps`` steps."""
    carries = {name: _ready(fn(carry)) for name, (fn, carry) in arms.items()}  # compile, warm
    times = {name: [] for name in arms}
    for _ in range(rounds):
        for name, (fn, _) in arms.items():
            carry = carries[name]
            start = time.perf_counter()
            for _ in range(steps):
                carry = fn(carry)
            _ready(carry)
            times[name].append((time.perf_counter() - start) / steps)
            carries[name] = carry
    return {name: statistics.median(t) for name, t in times.items()}


def interleaved_calls(arms: dict, rounds: int) -> dict:
    """Median seconds per call of ``fn(arg)`` for each arm, in interleaved rounds."""
    for fn, arg in arms.values():
        _ready(fn(arg))
    times = {name: [] for name in arms}
    for _ in range(rounds):
        for name, (fn, arg) in arms.items():
            start = time.perf_counter()
            _ready(fn(arg))
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def random_gramian(k: int, seed: int) -> np.ndarray:
    """The Gramian of ``k`` conflicting gradients in 64 dimensions."""
    rng = np.random.default_rng(seed)
    jac = rng.standard_normal((k, 64)) + 0.3 * rng.standard_normal(64)
    return (jac @ jac.T).astype(np.float32)


#: Gramians per compiled call in the "in a compiled step" column of the solver table.
SCANNED = 16
#: Numbers of terms of the solver table.
SOLVER_KS = (2, 3, 4, 5, 8, 16, 24, 32)


def upgrad_interior_point(gramian, iterations: int = 25):
    """UPGrad's weights by the solver it had before issue 28: the primal-dual interior-point
    method (``nonneg_qp``, 25 iterations), vmapped over the K rows; for the solver table."""
    from adaptive_optax._src.balancers.gramian import _shared

    n = _shared.normalize(gramian)
    k = n.gramian.shape[0]
    q = n.gramian + _shared.REG_EPS * jnp.eye(k, dtype=n.gramian.dtype)

    def row(u):
        c = q @ u
        return u + _shared.nonneg_qp(q, c, simplex=False, iterations=iterations, active=n.active)

    rows = jnp.diag(_shared.uniform(n.active, n.gramian.dtype))
    return _shared.finish(jnp.sum(jax.vmap(row)(rows), axis=0), n)


def solver_times(k: int, rounds: int) -> dict:
    """Median and least microseconds per call of each solver on one ``(k, k)`` Gramian; the
    ``... scanned`` arms solve ``SCANNED`` Gramians in one compiled ``lax.map`` (per solve)."""
    import torch
    from torchjd.aggregation import MGDAWeighting, UPGradWeighting

    torch.set_num_threads(1)
    gramian = random_gramian(k, seed=k)
    ours_up = jax.jit(ao._src.balancers.gramian.upgrad_from_gramian)
    before_up = jax.jit(upgrad_interior_point)
    ours_mgda = jax.jit(ao._src.balancers.gramian.mgda_from_gramian)
    theirs_up, theirs_mgda = UPGradWeighting(), MGDAWeighting()
    g_jax, g_torch = jnp.asarray(gramian), torch.from_numpy(gramian)
    stack = jnp.asarray(np.stack([random_gramian(k, seed=1000 * k + i) for i in range(SCANNED)]))
    arms = {
        "UPGrad ours": (ours_up, g_jax),
        "UPGrad ours before": (before_up, g_jax),
        "UPGrad TorchJD": (theirs_up, g_torch),
        "UPGrad ours scanned": (jax.jit(lambda g: jax.lax.map(ours_up, g)), stack),
        "UPGrad ours before scanned": (jax.jit(lambda g: jax.lax.map(before_up, g)), stack),
        "MGDA ours": (ours_mgda, g_jax),
        "MGDA TorchJD": (theirs_mgda, g_torch),
    }
    times = interleaved_calls(arms, rounds)
    out = {}
    for name, t in times.items():
        per = SCANNED if name.endswith("scanned") else 1
        out[name] = (t[0] * 1e6 / per, t[1] * 1e6 / per)
    return out


def solver_table(rounds: int, emit) -> dict:
    """Table 3: the solvers alone; returns ``{k: solver_times(k, rounds)}``."""
    emit(
        f"3. Solvers alone, us per call on one Gramian: median (least) of {rounds} interleaved "
        f"calls. UPGrad ours: the principal-pivoting solver (issue 28); before: the "
        f"interior-point solver it replaced (25 iterations); compiled: per solve, "
        f"{SCANNED} Gramians solved in one jitted `lax.map` (no dispatch), against TorchJD per call"
    )
    emit()
    emit(
        "| K | UPGrad ours | before | TorchJD | ours / TorchJD | compiled ours | compiled "
        "before | compiled ours / TorchJD | MGDA ours | MGDA TorchJD | ratio |"
    )
    emit("|---|---|---|---|---|---|---|---|---|---|---|")
    out = {}
    for k in SOLVER_KS:
        t = out[k] = solver_times(k, rounds)

        def cell(name, t=t):
            return f"{t[name][0]:.0f} ({t[name][1]:.0f})"

        def ratio(a, b, t=t):
            return f"{t[a][0] / t[b][0]:.2f} ({t[a][1] / t[b][1]:.2f})"

        cells = [
            cell("UPGrad ours"),
            cell("UPGrad ours before"),
            cell("UPGrad TorchJD"),
            ratio("UPGrad ours", "UPGrad TorchJD"),
            cell("UPGrad ours scanned"),
            cell("UPGrad ours before scanned"),
            ratio("UPGrad ours scanned", "UPGrad TorchJD"),
            cell("MGDA ours"),
            cell("MGDA TorchJD"),
            ratio("MGDA ours", "MGDA TorchJD"),
        ]
        emit(f"| {k} | " + " | ".join(cells) + " |")
    emit()
    return out


# -------------------------------------------------------------------------------------- memory


def _status_mib(field: str) -> float:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``: the peak), in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    """Returns freed heap to the system (``malloc_trim``), then resets the peak."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set size, to the current one


def memory_arm(arm: str, k: int, steps: int) -> None:
    """Runs ``steps`` steps of one arm; prints, in MiB, the resident size after the imports and
    the rises above it: the peak over the first step (compilation included), the resident size
    at rest after it, and the peak over the later steps (Linux).

    Both frameworks are imported in every such process, so that they share one baseline;
    the peak is reset after the imports and after the first step (``/proc/self/clear_refs``),
    once the heap freed by then (the compiler's, for JAX) is given back (``malloc_trim``).
    """
    import torch  # noqa: F401

    before = _status_mib("VmRSS")
    _reset_peak()
    first = rest = later = before
    if arm != "imports only":
        arms = jax_steps(k) if arm.startswith(("jax", "ours")) else torch_steps(k)
        fn, carry = arms[arm]
        del arms
        carry = _ready(fn(carry))
        first = _status_mib("VmHWM")
        _reset_peak()
        rest = _status_mib("VmRSS")
        for _ in range(steps):
            carry = fn(carry)
        _ready(carry)
        later = _status_mib("VmHWM")
    print(f"{before} {first - before} {rest - before} {later - before}")


MEMORY_ARMS = (
    "imports only",
    "jax plain",
    "ours per_term_grads",
    "ours representation",
    "torch plain",
    "TorchJD UPGrad",
)

#: glibc's initial mmap threshold, fixed: the memory table's second setting. Set by an
#: environment variable, it turns off glibc's dynamic threshold, which after a large buffer is
#: freed serves the next ones from the heap and keeps that heap resident.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def peak_memory(
    arm: str, k: int, steps: int, env: dict | None = None
) -> tuple[float, float, float, float]:
    """What :func:`memory_arm` prints for ``arm``, run alone in a fresh process (with the
    environment variables ``env`` added)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", "--memory-arm", arm, "-k", str(k)],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**os.environ, "PEERS_STEPS": str(steps), **(env or {})},
    )
    before, first, rest, later = out.stdout.strip().splitlines()[-1].split()
    return float(before), float(first), float(rest), float(later)


def memory_table(emit, k: int = 8, steps: int = 20) -> dict:
    """Table 4: peak resident memory of each arm, each alone in a fresh process, under glibc's
    default allocator settings and with its mmap threshold fixed; returns the figures."""
    threshold = " ".join(f"{key}={value}" for key, value in FIXED_MMAP_THRESHOLD.items())
    emit(
        f"4. Peak resident memory, K={k}, each arm alone in a fresh process with both "
        "frameworks imported: MiB above the resident size after the imports, during the "
        "first step (compilation included), at rest after it (freed heap returned to the "
        f"system), and during the {steps} steps after it; the last column again with glibc's "
        f"mmap threshold fixed (`{threshold}`, "
        "its initial value: large buffers are mapped and unmapped at each step instead of "
        "kept in the heap)"
    )
    emit()
    emit(
        "| arm | resident after imports | first step | at rest after it | later steps | "
        "later steps, fixed mmap threshold |"
    )
    emit("|---|---|---|---|---|---|")
    out = {}
    for arm in MEMORY_ARMS:
        before, first, rest, later = peak_memory(arm, k, steps)
        fixed = peak_memory(arm, k, steps, FIXED_MMAP_THRESHOLD)[3]
        out[arm] = (before, first, rest, later, fixed)
        emit(f"| {arm} | {before:.0f} | +{first:.0f} | +{rest:.0f} | +{later:.0f} | +{fixed:.0f} |")
    emit()
    return out


# ------------------------------------------------------------------------------------- scaling

#: Numbers of terms of the scaling table (the trunk at its default width).
SCALING_KS = (2, 4, 8, 16, 32)
#: Trunk widths of the scaling table, as multiples of the default: about 0.13M, 1.0M, 3.3M and
#: 9.2M parameters with K = 8 heads.
SCALING_WIDTHS = (0.25, 1.0, 2.0, 3.5)


def amortized_name(every: int = EVERY) -> str:
    """The amortized arm's name in tables 5 and 6."""
    return f"ours amortized_grads, every {every}"


def scaling_arms(k: int, width: float, every: int = EVERY) -> dict:
    """Name -> (step, initial carry): JAX's plain step, ours (UPGrad's weights every step),
    the amortized step, torch's plain step and TorchJD's UPGrad step, at ``k`` terms and
    ``width``."""
    jax_arms = jax_steps(k, width)
    amortized = amortized_steps(k, every, width)
    return {
        "jax plain": jax_arms["jax plain"],
        "ours per_term_grads": jax_arms["ours per_term_grads"],
        amortized_name(every): amortized[amortized_name(every)],
        **torch_steps(k, width),
    }


def scaling_table(rounds: int, emit, every: int = EVERY) -> dict:
    """Table 6: ms per step as K grows (default width) and as the parameters grow (K = 8);
    returns ``{"k": {k: {arm: s}}, "width": {width: {arm: s}}}``."""
    big = max(2, rounds - 1)
    emit(
        f"6. Scaling: ms per step, mean over blocks of {every} steps, the host waiting for "
        f"each step, median of {rounds} interleaved rounds ({big} for the models wider than "
        "the default); ours: the documented UPGrad step (`per_term_grads` -> "
        f"`weight_gradients(upgrad_weights(...))`, weights every step), and `amortized_grads` "
        f"with weights every {every} steps; ratios below the rows"
    )
    emit()
    out = {"k": {}, "width": {}}
    for k in SCALING_KS:
        out["k"][k] = averaged(scaling_arms(k, 1.0, every), rounds, every, block_each=True)
    for width in SCALING_WIDTHS:
        n = rounds if width <= 1.0 else big
        out["width"][width] = averaged(scaling_arms(8, width, every), n, every, block_each=True)

    def rows(table: dict, header: str, label) -> None:
        keys = list(table)
        emit(f"| {header} | " + " | ".join(label(key) for key in keys) + " |")
        emit("|---" * (1 + len(keys)) + "|")
        for name in table[keys[0]]:
            emit(
                f"| {name} | " + " | ".join(f"{table[key][name] * 1e3:.1f}" for key in keys) + " |"
            )
        for num, den in (
            ("ours per_term_grads", "TorchJD UPGrad"),
            (amortized_name(every), "TorchJD UPGrad"),
            ("ours per_term_grads", "jax plain"),
            (amortized_name(every), "jax plain"),
            ("TorchJD UPGrad", "torch plain"),
        ):
            cells = [f"{table[key][num] / table[key][den]:.2f}" for key in keys]
            emit(f"| {num} / {den} | " + " | ".join(cells) + " |")
        emit()

    emit("6a. As K grows (the trunk's 0.92M parameters and 10K per head)")
    emit()
    rows(out["k"], "ms per step", lambda k: f"K={k} ({parameter_count(k, 1.0) / 1e6:.2f}M)")
    emit("6b. As the parameters grow, K = 8 (the trunk's widths scaled)")
    emit()
    rows(
        out["width"],
        "ms per step",
        lambda w: f"{parameter_count(8, w) / 1e6:.2f}M ({widths(w)[0]}/{widths(w)[1]})",
    )
    return out


def plot_scaling(path: str, scaling: dict, solvers: dict | None, every: int = EVERY) -> bool:
    """Draws table 6 (and table 3's UPGrad solvers, if given) as curves into ``path``, a PNG;
    returns False where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = 3 if solvers else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    styles = {
        "jax plain": ("tab:blue", ":"),
        "ours per_term_grads": ("tab:blue", "-"),
        amortized_name(every): ("tab:green", "-"),
        "torch plain": ("tab:red", ":"),
        "TorchJD UPGrad": ("tab:red", "-"),
    }
    for ax, key, xs, xlabel in (
        (axes[0], "k", list(scaling["k"]), "K (loss terms); a 0.92M trunk, 10K per head"),
        (
            axes[1],
            "width",
            list(scaling["width"]),
            "parameters (K = 8)",
        ),
    ):
        at = xs if key == "k" else [parameter_count(8, w) for w in xs]
        for name, (color, line) in styles.items():
            ys = [scaling[key][x][name] * 1e3 for x in xs]
            ax.plot(at, ys, line, color=color, marker="o", label=name)
        ax.set_xscale("log", base=2 if key == "k" else 10)
        if key == "k":
            ax.set_xticks(at, [str(x) for x in at])
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ms per training step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    if solvers:
        ks = list(solvers)
        for name, color in (("UPGrad ours", "tab:blue"), ("UPGrad TorchJD", "tab:red")):
            axes[2].plot(ks, [solvers[k][name][0] for k in ks], "-o", color=color, label=name)
        axes[2].plot(
            ks,
            [solvers[k]["UPGrad ours scanned"][0] for k in ks],
            "--o",
            color="tab:blue",
            label="UPGrad ours, compiled",
        )
        axes[2].set_xscale("log", base=2)
        axes[2].set_xticks(ks, [str(k) for k in ks])
        axes[2].set_yscale("log")
        axes[2].set_xlabel("K")
        axes[2].set_ylabel("us per solve (median)")
        axes[2].legend(fontsize=7)
        axes[2].grid(True, which="both", alpha=0.3)
    fig.suptitle("benchmarks/peers.py: the step's cost with K and with parameters, beside TorchJD")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def targets_table(emit, amortized: dict, solvers: dict, memory: dict | None, k: int = 8) -> None:
    """Issue 28's targets, each with this run's figure and whether it is met (computed from
    the tables above)."""

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    emit("## Against the targets of issue 28 (from the tables above)")
    emit()
    emit("| Target | This run | |")
    emit("|---|---|---|")
    name = amortized_name()
    ratios = [
        amortized[mode, k][name] / amortized[mode, k]["jax plain"]
        for mode in ("blocked", "pipelined")
        if (mode, k) in amortized
    ]
    if ratios:
        emit(
            f"| UPGrad, weights every {EVERY} (`amortized_grads`), at most 1.3 x a plain step at "
            f"K = {k} (table 5) | " + " blocked, ".join(f"{r:.2f}" for r in ratios) + " pipelined"
            f" | {met(max(ratios) <= 1.3)} |"
        )
    per_call = {kk: t["UPGrad ours"][0] / t["UPGrad TorchJD"][0] for kk, t in solvers.items()}
    worst = max(per_call, key=per_call.get)
    emit(
        f"| UPGrad's solver at most TorchJD's per call at every K to {max(solvers)} (table 3) | "
        f"largest ratio {per_call[worst]:.2f} (K = {worst}) | {met(per_call[worst] <= 1.0)} |"
    )
    if 16 in solvers:
        t = solvers[16]
        ratio = t["UPGrad ours scanned"][0] / t["UPGrad TorchJD"][0]
        emit(
            "| UPGrad's solver inside a compiled step at most half TorchJD's per call at K = 16 "
            f"(table 3) | {ratio:.2f} | {met(ratio <= 0.5)} |"
        )
    if memory:
        ours, theirs = memory["ours per_term_grads"], memory["TorchJD UPGrad"]
        emit(
            f"| The per-term step's peak at K = {k} at most TorchJD's (table 4, later steps) | "
            f"+{ours[3]:.0f} against +{theirs[3]:.0f} MiB (fixed mmap threshold: +{ours[4]:.0f} "
            f"against +{theirs[4]:.0f}) | {met(ours[3] <= theirs[3])} |"
        )
    emit()


# ---------------------------------------------------------------------------------------- main


def load_average() -> str:
    """``os.getloadavg()`` as text (what ``uptime`` prints)."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(*, with_torch: bool = True) -> str:
    from importlib.metadata import version

    where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
    where += f"{platform.system()}; jax {jax.__version__}"
    if not with_torch:
        return where + f" ({jax.devices()[0].platform}); one thread"

    import torch
    import torchjd  # noqa: F401

    where += f", torch {torch.__version__}, torchjd {version('torchjd')}"
    return where + f" (quadprog {version('quadprog')}); one thread each"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per table")
    parser.add_argument("--pipeline", type=int, default=10, help="steps per pipelined block")
    parser.add_argument("--ks", default="2,4,8", help="numbers of terms of the step tables")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    parser.add_argument(
        "--amortized", action="store_true", help="only table 5, the amortized step (JAX only)"
    )
    parser.add_argument(
        "--every", type=int, default=EVERY, help="table 5: steps between two recomputations"
    )
    parser.add_argument("--solvers", action="store_true", help="only table 3, the solvers")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="also table 6, the step as K and the parameters grow (and its curve, a PNG beside "
        "the Markdown file, where matplotlib is installed)",
    )
    parser.add_argument(
        "--scaling-rounds", type=int, default=3, help="table 6: interleaved rounds (default 3)"
    )
    parser.add_argument("--memory-arm", help=argparse.SUPPRESS)
    parser.add_argument("-k", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_arm:
        memory_arm(args.memory_arm, args.k, int(os.environ.get("PEERS_STEPS", "20")))
        return
    rounds = 3 if args.quick else args.rounds
    ks = [int(k) for k in args.ks.split(",")]
    command = "python -m benchmarks.peers " + " ".join(sys.argv[1:])
    if os.environ.get("GLIBC_TUNABLES"):  # the allocator's settings change what a step costs
        command = f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']} {command}"
    if args.amortized:
        lines = [
            "# The amortized per-term step beside a plain step",
            "",
            f"Command: `{command}` (`benchmarks/peers.py`), {time.strftime('%Y-%m-%d %H:%M %Z')}.",
            "",
            f"Machine: {machine(with_torch=False)}. The machine may be shared with other jobs "
            "while this runs: the arms are interleaved round by round, so a load hits all "
            "arms alike, and the ratios within one run are what to read.",
            "",
            f"Load average (1, 5, 15 min) when the run began: {load_average()}.",
            "",
            f"Problem: the MLP trunk (0.92M parameters) with K linear heads of the other "
            f"tables, batch {BATCH}, Adam; UPGrad's weights recomputed every {args.every} steps.",
            "",
        ]

        def emit_only(line=""):
            print(line, flush=True)
            lines.append(line)

        amortized_table(ks, rounds, emit_only, args.every)
        emit_only(f"Load average (1, 5, 15 min) when the run ended: {load_average()}.")
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write("\n".join(lines) + "\n")
        return
    lines = [
        "# TorchJD's UPGrad step beside ours",
        "",
        f"Command: `{command}` (`benchmarks/peers.py`), {time.strftime('%Y-%m-%d')}.",
        "",
        f"Machine: {machine()}.",
        "",
        f"Load average (1, 5, 15 min) when the run began: {load_average()}; the machine may be "
        "shared with other jobs: the arms are interleaved, so a load hits them alike, and the "
        "ratios within one run are what to read.",
        "",
    ]

    def emit(line=""):
        print(line, flush=True)
        lines.append(line)

    if args.solvers:
        lines[0] = "# The dual-cone and min-norm solvers beside TorchJD's"
        emit("The machine may be shared: the arms are interleaved call by call.")
        emit()
        solver_table(rounds * 20, emit)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write("\n".join(lines) + "\n")
        return
    emit(f"1. ms per training step, median of {rounds} interleaved rounds")
    emit()
    steps = {}
    for mode, per_block in (("blocked", 1), ("pipelined", args.pipeline)):
        for k in ks:
            steps[mode, k] = interleaved({**jax_steps(k), **torch_steps(k)}, rounds, per_block)
    names = list(steps["blocked", ks[0]])
    emit(
        "| ms per step | "
        + " | ".join(f"K={k} {m}" for m in ("blocked", "pipelined") for k in ks)
        + " |"
    )
    emit("|---" * (1 + 2 * len(ks)) + "|")
    for name in names:
        cells = [f"{steps[m, k][name] * 1e3:.1f}" for m in ("blocked", "pipelined") for k in ks]
        emit(f"| {name} | " + " | ".join(cells) + " |")
    for name in ("ours per_term_grads", "ours representation"):
        cells = [
            f"{steps[m, k][name] / steps[m, k]['TorchJD UPGrad']:.2f}"
            for m in ("blocked", "pipelined")
            for k in ks
        ]
        emit(f"| {name} / TorchJD | " + " | ".join(cells) + " |")
        cells = [
            f"{steps[m, k][name] / steps[m, k]['jax plain']:.2f}"
            for m in ("blocked", "pipelined")
            for k in ks
        ]
        emit(f"| {name} / jax plain | " + " | ".join(cells) + " |")
    emit()

    emit(f"2. The per-term gradients alone, ms per call (median of {rounds * 2} rounds)")
    emit()
    emit("| K | grad of the sum | ao.per_term_grads (x K grads) | jax.jacrev (x K grads) |")
    emit("|---|---|---|---|")
    for k in ks:
        t = {n: v[0] for n, v in interleaved_calls(jax_gradients(k), rounds * 2).items()}
        base = t["grad of the sum"]
        emit(
            f"| {k} | {base * 1e3:.2f} | {t['ao.per_term_grads'] * 1e3:.2f} "
            f"({t['ao.per_term_grads'] / base / k:.2f}) | {t['jax.jacrev'] * 1e3:.2f} "
            f"({t['jax.jacrev'] / base / k:.2f}) |"
        )
    emit()

    solvers = solver_table(rounds * 20, emit)

    memory = memory_table(emit) if args.memory else None
    amortized = amortized_table(ks, rounds, emit, args.every)
    if args.scaling:
        scaling = scaling_table(min(rounds, args.scaling_rounds), emit, args.every)
        if args.markdown:
            png = os.path.splitext(args.markdown)[0] + ".png"
            if plot_scaling(png, scaling, solvers, args.every):
                emit(f"The curves of table 6 and of table 3's UPGrad solvers: `{png}`.")
                emit()
    targets_table(emit, amortized, solvers, memory)
    emit(f"Load average (1, 5, 15 min) when the run ended: {load_average()}.")
    emit()
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
