"""Many hosts on one machine: JAX's multi-process CPU runtime, and what the weighting costs there.

Run with ``python -m benchmarks.multihost`` (``--quick`` for a short check). It starts, one
after the other, the same data-parallel training step on a global mesh of 8 CPU devices laid
out three ways:

- ``1x8 local``: one process with 8 devices and XLA's in-process collectives (the default);
- ``1x8 gloo``: one process with 8 devices, its collectives through Gloo;
- ``2x4 gloo``: two processes with 4 devices each, joined by ``jax.distributed`` and Gloo, as
  two hosts would be.

and prints, per layout: the all-reduces in the compiled step and the floats they carry, fixed
weights against ``stable_weights(..., axis_name=...)`` in ``weight_gradients`` with
``apply_if_finite(..., axis_name=...)``; the median time per step of each (pipelined, timed in
interleaved blocks) and their difference; the time of the weighting's collectives alone (one
``pmean`` of the losses and gradient norms, one ``pmin``); and how far the parameters of each
layout are from those of ``2x4 gloo`` after the timed steps (bit-identical or not).

The launcher here (``launch``, ``start_runtime``) is also what ``tests/test_multihost.py``
starts its processes with.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

DEVICES = 8
STARTED = "multi-process runtime up"  # what a process prints once its runtime works
BASE = {"fit": 1.0, "l1": 0.5, "smooth": 0.1}
LAYOUTS = {"1x8 local": (1, "local"), "1x8 gloo": (1, "gloo"), "2x4 gloo": (2, "gloo")}


class RuntimeUnavailable(RuntimeError):
    """JAX's multi-process CPU runtime (a coordinator on a local port, Gloo) does not start."""


# Launching: in the parent ------------------------------------------------------------------


def free_port() -> int:
    """A local TCP port free at this moment (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def launch(command: list[str], processes: int, timeout: float) -> list[str]:
    """Runs ``command + [processes, port, process]`` in ``processes`` processes; their output.

    The processes import this checkout's ``adaptive_optax`` (its root leads ``PYTHONPATH``).
    A port taken between :func:`free_port` and the coordinator's bind gets two more tries.

    Raises:
      RuntimeUnavailable: when the runtime did not start (no free port, no Gloo, ...), saying
        why; every process failed before :func:`start_runtime` was through.
      RuntimeError: when a process failed after the runtime was up.
    """
    root = str(pathlib.Path(__file__).parents[1])
    path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    env.pop("XLA_FLAGS", None)  # the device count is set by jax_num_cpu_devices
    reason = ""
    for _ in range(3):
        try:
            port = free_port()
        except OSError as error:
            raise RuntimeUnavailable(f"no free local port for the coordinator: {error}") from None
        with tempfile.TemporaryDirectory() as folder:  # output to files: a full pipe would
            outputs = [pathlib.Path(folder, f"{p}.log") for p in range(processes)]
            running = []  # block its process until the end
            for p, output in enumerate(outputs):
                with output.open("wb") as file:
                    command_p = [*command, str(processes), str(port), str(p)]
                    running.append(
                        subprocess.Popen(command_p, env=env, stdout=file, stderr=subprocess.STDOUT)
                    )
            codes = _wait(running, timeout)
            logs = [output.read_text(errors="replace") for output in outputs]
        if all(code == 0 for code in codes):
            return logs
        if all(STARTED in log for log in logs):
            raise RuntimeError(
                f"{processes}-process run failed, exit status {codes}:\n" + "\n".join(logs)
            )
        reason = " | ".join(_why(log) for log in logs if STARTED not in log)
    raise RuntimeUnavailable(f"JAX's multi-process CPU runtime does not start here: {reason}")


def _why(log: str) -> str:
    """What a process that could not start the runtime said: its SKIP line, or its last."""
    lines = [line for line in log.splitlines() if line.strip() and "[Gloo]" not in line]
    said = [line for line in lines if line.startswith("SKIP")]
    return (said or lines or ["no output"])[-1]


def _wait(running: list[subprocess.Popen], timeout: float) -> list[int]:
    """Waits for every process; when one fails (or time runs out), ends the others, which
    would otherwise wait for it in a collective. Their exit statuses."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in running):
        if any(p.poll() not in (None, 0) for p in running) or time.monotonic() > deadline:
            for p in running:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    return [p.wait() for p in running]


# Starting the runtime: in each process ----------------------------------------------------


def start_runtime(processes: int, port: int, process: int, collectives: str = "gloo") -> None:
    """Gives this process ``DEVICES // processes`` CPU devices and joins the job.

    With ``collectives="gloo"``: ``jax.distributed.initialize`` on ``localhost:port`` with
    Gloo's CPU collectives, then one all-reduce across the processes to show that they work;
    where they do not, prints ``SKIP: ...`` and why, and exits. ``"local"``: one process and
    XLA's in-process collectives. Prints ``STARTED`` once the runtime works.
    """
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_num_cpu_devices", DEVICES // processes)
    if collectives == "gloo":
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                f"localhost:{port}",
                num_processes=processes,
                process_id=process,
                initialization_timeout=60,
            )
            mesh = jax.make_mesh((DEVICES,), ("data",))
            ones = jax.make_array_from_callback(
                (DEVICES,), jax.NamedSharding(mesh, jax.P("data")), lambda i: np.ones(DEVICES)[i]
            )
            total = jax.jit(jnp.sum, out_shardings=jax.NamedSharding(mesh, jax.P()))(ones)
            assert float(total.addressable_data(0)) == DEVICES, total
        except Exception as error:  # nothing of the library has run yet
            print(f"SKIP: process {process}: {type(error).__name__}: {error}", flush=True)
            sys.exit(1)
    elif processes != 1:
        raise ValueError(f"in-process collectives need one process, got processes={processes}")
    assert jax.device_count() == DEVICES and jax.process_count() == processes
    print(STARTED, flush=True)


# The benchmark: in each process ------------------------------------------------------------


def _steps(mesh, weighting):
    """A jitted data-parallel step on ``mesh``: per-term gradients averaged over "data", then
    ``weight_gradients(weighting)`` and Adam under ``apply_if_finite``, or fixed weights."""
    import jax
    import jax.numpy as jnp
    import optax

    import adaptive_optax as ao

    if weighting is None:
        tx = optax.adam(1e-3)
    else:
        tx = optax.chain(
            ao.weight_gradients(weighting), ao.apply_if_finite(optax.adam(1e-3), axis_name="data")
        )

    def losses(params, x, y):
        hidden = jnp.tanh(x @ params["w1"])
        hidden = jnp.tanh(hidden @ params["w2"])
        pred = hidden @ params["w3"]
        return {
            "fit": jnp.mean((pred[:, 0] - y[:, 0]) ** 2),
            "l1": jnp.mean(jnp.abs(pred[:, 1] - y[:, 1])),
            "smooth": jnp.sum(params["w1"] ** 2) * 1e-4,
        }

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(jax.P(), jax.P(), jax.P("data")), out_specs=jax.P())
    def step(params, opt_state, batch):
        grads, step_losses = jax.jacrev(lambda p: (losses(p, *batch),) * 2, has_aux=True)(params)
        # summed over the devices by JAX already (params are replicated): divide for the mean
        grads = jax.tree.map(lambda g: g / jax.lax.axis_size("data"), grads)
        if weighting is None:  # the same per-term gradients, summed with the base weights
            grads = jax.tree.map(
                lambda *g: sum(BASE[n] * gi for n, gi in zip(BASE, g, strict=True)),
                *[grads[n] for n in BASE],
            )
            updates, opt_state = tx.update(grads, opt_state, params)
        else:
            updates, opt_state = tx.update(grads, opt_state, params, losses=step_losses)
        return optax.apply_updates(params, updates), opt_state

    return tx, step


def worker(
    quick: bool, out: str, collectives: str, processes: int, port: int, process: int
) -> None:
    start_runtime(processes, port, process, collectives)
    import jax
    import jax.numpy as jnp

    import adaptive_optax as ao
    from benchmarks.overhead import interleaved_ratio

    mesh = jax.make_mesh((DEVICES,), ("data",))
    replicated = jax.NamedSharding(mesh, jax.P())
    rows = jax.NamedSharding(mesh, jax.P("data"))
    width, batch_rows = 256, DEVICES * 32
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_rows, 64)).astype(np.float32)
    y = np.stack([np.sin(x.sum(axis=1)), x[:, 0] - x[:, 1]], axis=1).astype(np.float32)
    batch = tuple(  # each process feeds the rows of its own devices
        jax.make_array_from_callback(a.shape, rows, lambda index, a=a: a[index]) for a in (x, y)
    )

    def initial(tx):
        def build():
            keys = jax.random.split(jax.random.key(0), 3)
            shapes = [(64, width), (width, width), (width, 2)]
            params = {
                f"w{i + 1}": jax.random.normal(k, s) / np.sqrt(s[0])
                for i, (k, s) in enumerate(zip(keys, shapes, strict=True))
            }
            return params, tx.init(params)

        return jax.jit(build, out_shardings=replicated)()

    weighting = ao.stable_weights(BASE, axis_name="data", warmup_steps=5, cooling_period=5)
    fixed_tx, fixed_step = _steps(mesh, None)
    tx, adaptive_step = _steps(mesh, weighting)
    fixed = (lambda p, s: fixed_step(p, s, batch), initial(fixed_tx))
    adaptive = (lambda p, s: adaptive_step(p, s, batch), initial(tx))
    blocks = 4 if quick else 30
    t_fixed, t_adaptive, ratio = interleaved_ratio(fixed, adaptive, blocks, steps_per_block=10)

    # the weighting's own collectives: a pmean of 3 losses and 3 norms, a pmin of one flag
    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P())
    def collectives_only(v):
        mean = jax.lax.pmean((v[0, :3], v[0, 3:]), "data")
        flag = jax.lax.pmin(jnp.all(jnp.isfinite(v)).astype(jnp.int32), "data")
        return mean, flag

    v = jax.make_array_from_callback(
        (DEVICES, 6),
        rows,
        lambda index: np.arange(DEVICES * 6.0, dtype=np.float32).reshape(DEVICES, 6)[index],
    )
    jax.block_until_ready(collectives_only(v))
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(10):
            result = collectives_only(v)
        jax.block_until_ready(result)
        times.append((time.perf_counter() - start) / 10)

    # the parameters after the same training steps, to compare layouts bit for bit
    params, opt_state = initial(tx)
    for _ in range(20):
        params, opt_state = adaptive_step(params, opt_state, batch)
    local = {k: np.asarray(v.addressable_data(0)) for k, v in params.items()}
    np.savez(pathlib.Path(out, f"params_{process}.npz"), **local)
    report = {
        "process": process,
        "all_reduces": {
            "fixed": _all_reduces(fixed_step, *initial(fixed_tx), batch),
            "adaptive": _all_reduces(adaptive_step, *initial(tx), batch),
        },
        "ms_fixed": 1e3 * t_fixed,
        "ms_adaptive": 1e3 * t_adaptive,
        "ratio": ratio,
        "ms_collectives": 1e3 * float(np.median(times)),
    }
    print("REPORT " + json.dumps(report), flush=True)


def _all_reduces(step, *args) -> list[int]:
    """The number of floats each all-reduce of the compiled step carries (sorted)."""
    import re

    sizes = []
    for line in step.lower(*args).compile().as_text().splitlines():
        if " all-reduce(" in line:  # "%name = (f32[3]{0}, f32[]) all-reduce(...)"
            result = line.split("=", 1)[1].split(" all-reduce(")[0]
            dims = re.findall(r"\[([\d,]*)\]", result)
            sizes.append(sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in dims))
    return sorted(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few blocks: a smoke run")
    parser.add_argument("--worker", choices=["local", "gloo"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("launched", nargs="*", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one process of a layout: processes, port, process
        worker(args.quick, args.out, args.worker, *args.launched)
        return
    import jax

    print(
        f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        "data-parallel step, 3 loss terms, MLP 64-256-256-2 (82K parameters), per-term "
        "gradients (jacrev) averaged over 8 devices, batch 8 x 32 rows; fixed weights vs "
        "stable_weights(axis_name) in weight_gradients + apply_if_finite(axis_name)\n"
    )
    reports, params = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (processes, collectives) in LAYOUTS.items():
            out = pathlib.Path(folder, collectives + str(processes))
            out.mkdir()
            command = [sys.executable, "-m", "benchmarks.multihost", "--worker", collectives]
            command += ["--out", str(out), *["--quick"] * args.quick]
            logs = launch(command, processes, timeout=900)
            reports[name] = [
                json.loads(line.removeprefix("REPORT "))
                for log in logs
                for line in log.splitlines()
                if line.startswith("REPORT ")
            ]
            params[name] = [dict(np.load(out / f"params_{p}.npz")) for p in range(processes)]
    reference = params["2x4 gloo"][0]
    for name, first in ((name, reports[name][0]) for name in LAYOUTS):
        copies = params[name]
        agree = all(c[k].tobytes() == copies[0][k].tobytes() for c in copies for k in reference)
        gap = max(float(np.max(np.abs(copies[0][k] - reference[k]))) for k in reference)
        print(f"{name} ({len(copies)} process(es))")
        print(
            f"  all-reduces per step (floats each): fixed {first['all_reduces']['fixed']}, "
            f"adaptive {first['all_reduces']['adaptive']}"
        )
        print(
            f"  step time: fixed {first['ms_fixed']:.3f} ms, adaptive {first['ms_adaptive']:.3f}"
            f" ms, difference {first['ms_adaptive'] - first['ms_fixed']:+.3f} ms, ratio "
            f"{first['ratio']:.3f}"
        )
        print(f"  the weighting's collectives alone: {first['ms_collectives']:.3f} ms per step")
        print(
            f"  parameters after 20 steps: processes agree bit for bit: {agree}; max |difference|"
            f" from 2x4 gloo: {gap:.3g}"
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
