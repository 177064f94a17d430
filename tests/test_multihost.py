"""Many hosts: two JAX processes of four CPU devices each, joined by `jax.distributed` and Gloo.

The test starts its own processes: one with 8 CPU devices (the reference), and two with 4 each
that form one 8-device mesh, as two hosts would; all use Gloo's collectives (XLA's in-process
all-reduce adds in another order, so a run on it differs in the last bits: see
`benchmarks/multihost.py`). All three run the same data-parallel training
(`shard_map` over the mesh, per-term gradients averaged over it, `ao.weight_gradients` with
`ao.stable_weights(..., axis_name="data")` and then with `ao.upgrad_weights`, and
`ao.apply_if_finite(..., axis_name="data")`); every process feeds only the rows of the global
batch that live on its own devices. Each process writes the training state after every step;
the test asserts that the two hosts agree bit for bit at every step, and with the one-process
run. One step's batch holds a NaN on a row of the second host only: every host skips it alike
and counts it once. The two hosts save the run half way through with orbax, each writing its
part of one checkpoint, restore it in a fresh state and train on: bit-identical to the run
that never stopped. Each process also runs the guide's check that the replicas agree
(`multihost_utils.assert_equal` of its own copy of `ao.metrics`) after every step, and sees it
fail when one copy differs, and checks the guide's note that a replicated parameter's
gradient in `shard_map` comes back summed over the devices.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import multihost_utils

import adaptive_optax as ao
from benchmarks import multihost

DEVICES = multihost.DEVICES  # the global mesh: 1 process x 8 devices, or 2 processes x 4
ROWS = 8  # rows of the batch per device
STEPS = {"stable": 24, "upgrad": 12}
NAN_STEP = 9  # one row of the second host's part of this step's batch is NaN
SAVE_AT = 14  # the stable run is checkpointed after this many steps and resumed from there
METRICS = jax.jit(ao.metrics)
TIMEOUT = 600  # seconds, for one launch of the processes (a guard against a hang)


def test_two_processes_agree_with_one_process_every_step(tmp_path):
    reference = _launch(tmp_path / "reference", processes=1)
    hosts = _launch(tmp_path / "hosts", processes=2)
    for run, steps in STEPS.items():
        first, second = (_load(hosts / f"{run}_{p}.npz") for p in range(2))
        single = _load(reference / f"{run}_0.npz")
        for leaf in first:
            assert first[leaf].shape[0] == steps + 1, leaf
        _assert_same_bits(first, second, run, "process 0 and process 1")
        _assert_same_bits(first, single, run, "2 processes x 4 devices and 1 x 8")
        _check_nan_step(first, run)

    stable = _load(hosts / "stable_0.npz")
    adjustments = _weighting(stable, "counters.adjustments").sum(axis=1)
    assert 0 < adjustments[SAVE_AT] < adjustments[-1], adjustments  # decisions, before and after
    for p in range(2):
        resumed = _load(hosts / f"resumed_{p}.npz")
        after_save = {leaf: values[SAVE_AT:] for leaf, values in stable.items()}
        _assert_same_bits(resumed, after_save, "resumed", f"process {p} and the unbroken run")


def _check_nan_step(run: dict[str, np.ndarray], name: str) -> None:
    """The NaN step moved neither the parameters nor Adam's state, was counted once on every
    term, and training went on."""
    skipped = _leaves(run, "total_notfinite")
    assert skipped.shape[1:] == (), skipped.shape
    assert skipped[NAN_STEP] == 0 and (skipped[NAN_STEP + 1 :] == 1).all(), (name, skipped)
    for leaf, values in run.items():
        if leaf.startswith("params") or "inner_state" in leaf:
            np.testing.assert_array_equal(values[NAN_STEP + 1], values[NAN_STEP], err_msg=leaf)
            assert not np.array_equal(values[NAN_STEP + 2], values[NAN_STEP + 1]), leaf
    # The NaN row makes "fit" and "l1" NaN, and every term's gradient: jax.jacrev's backward
    # pass of "smooth" multiplies the NaN activations by a zero cotangent.
    nonfinite = _weighting(run, "counters.nonfinite")
    assert (nonfinite[: NAN_STEP + 1] == 0).all(), nonfinite
    assert (nonfinite[NAN_STEP + 1 :] == 1).all(), (name, nonfinite)


def _weighting(run: dict[str, np.ndarray], field: str) -> np.ndarray:
    return _leaves(run, f"weighting_state.{field}")


def _leaves(run: dict[str, np.ndarray], suffix: str) -> np.ndarray:
    (leaf,) = (key for key in run if key.endswith(suffix))
    return run[leaf]


def _assert_same_bits(run_a, run_b, name, what) -> None:
    """Every leaf of two recorded runs, bit for bit; else the first step that differs, and
    which leaves differ there and by how much."""
    assert run_a.keys() == run_b.keys()
    for step in range(len(next(iter(run_a.values())))):
        differ = {
            leaf: float(np.max(np.abs(run_a[leaf][step] - run_b[leaf][step].astype(float))))
            for leaf in run_a
            if run_a[leaf][step].tobytes() != run_b[leaf][step].tobytes()
            or run_a[leaf].dtype != run_b[leaf].dtype
        }
        assert not differ, f"{name} run, after step {step}: {what} differ in {differ}"


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return dict(data)


# Launching the processes -------------------------------------------------------------------


def _launch(out: pathlib.Path, processes: int) -> pathlib.Path:
    """Runs `main` in `processes` processes; skips the test when the runtime cannot start."""
    out.mkdir(parents=True)
    try:
        logs = multihost.launch([sys.executable, __file__, str(out)], processes, TIMEOUT)
    except multihost.RuntimeUnavailable as error:
        pytest.skip(str(error))
    for log in logs:  # the processes ran the package under test
        assert json.dumps({"package": ao.__file__}) in log, log
    return out


# One process: the training runs, its states written after every step ----------------------


def main(out: str, processes: int, port: int, process: int) -> None:
    multihost.start_runtime(processes, port, process)
    _gradients_come_back_summed()

    for run, steps in STEPS.items():
        trainer = Trainer(run)
        checkpoint = pathlib.Path(out, "checkpoint").absolute()
        state = trainer.initial()
        record = Record([state])
        for step in range(steps):
            state = trainer.step(state, step)
            record.append(state)
            _replicas_agree(state)
            if run == "stable" and step + 1 == SAVE_AT:
                trainer.save(checkpoint, state)
        record.save(pathlib.Path(out, f"{run}_{process}.npz"))
        if run == "stable":  # resume from the checkpoint, in a state that was never trained
            state = trainer.restore(checkpoint)
            record = Record([state])
            for step in range(SAVE_AT, steps):
                state = trainer.step(state, step)
                record.append(state)
            record.save(pathlib.Path(out, f"resumed_{process}.npz"))
    if processes > 1:
        _replicas_apart_are_caught(trainer, state, process)
    print(json.dumps({"package": ao.__file__}))


def _gradients_come_back_summed() -> None:
    """The guide's note: in `jax.shard_map`, the gradient of a replicated parameter is the sum
    over the devices, which `pmean` leaves as it is; divided by the axis size, the mean."""
    mesh = jax.make_mesh((DEVICES,), ("data",))
    x = np.arange(DEVICES, dtype=np.float32)[:, None]  # one row per device
    rows = jax.make_array_from_callback(
        x.shape, jax.NamedSharding(mesh, jax.P("data")), x.__getitem__
    )

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(jax.P(), jax.P("data")), out_specs=jax.P())
    def gradients(w, x):
        g = jax.grad(lambda w: jnp.mean((x @ w) ** 2))(w)
        return g, jax.lax.pmean(g, "data"), g / jax.lax.axis_size("data")

    w = jax.device_put(np.ones(1, np.float32), jax.NamedSharding(mesh, jax.P()))
    summed, pmeaned, divided = (float(g.addressable_data(0)[0]) for g in gradients(w, rows))
    mean = float(np.mean(2 * x[:, 0] ** 2))  # the gradient of the global batch's loss
    assert (summed, pmeaned, divided) == (DEVICES * mean, DEVICES * mean, mean), (summed, mean)


def _replicas_agree(state) -> None:
    """The guide's check: each process's own copy of `ao.metrics`, the same on every process."""
    own = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), METRICS(state["opt_state"]))
    multihost_utils.assert_equal(own, "the replicas' weighting states differ")


def _replicas_apart_are_caught(trainer, state, process: int) -> None:
    """A replicated value that differs between processes (here the weighting's step count): JAX
    takes it as it is, a step runs on it, and the guide's check says so."""
    weighting_state = ao.find_state(state["opt_state"])
    dtype = weighting_state.step.dtype
    step = jax.make_array_from_callback(
        (), trainer.replicated, lambda _: np.array(9 + process, dtype)
    )
    is_it = lambda x: x is weighting_state  # noqa: E731
    opt_state = jax.tree.map(
        lambda x: x._replace(step=step) if is_it(x) else x, state["opt_state"], is_leaf=is_it
    )
    apart = {"params": state["params"], "opt_state": opt_state}
    apart = trainer.step(apart, 0)
    try:
        _replicas_agree(apart)
    except AssertionError:
        return
    raise AssertionError("multihost_utils.assert_equal missed a difference between processes")


class Record:
    """The training state after every step, as this process holds it (one copy, after
    checking that its devices' copies agree)."""

    def __init__(self, states):
        self.steps = []
        for state in states:
            self.append(state)

    def append(self, state) -> None:
        leaves = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            copies = [np.asarray(shard.data) for shard in leaf.addressable_shards]
            name = jax.tree_util.keystr(path, simple=True, separator=".")
            for copy in copies[1:]:
                assert copy.tobytes() == copies[0].tobytes(), f"devices disagree on {name}"
            leaves[name] = copies[0]
        self.steps.append(leaves)

    def save(self, path: pathlib.Path) -> None:
        np.savez(path, **{key: np.stack([s[key] for s in self.steps]) for key in self.steps[0]})


class Trainer:
    """Data-parallel training of a small two-layer model on three loss terms."""

    def __init__(self, run: str):
        self.mesh = jax.make_mesh((DEVICES,), ("data",))
        self.replicated = jax.NamedSharding(self.mesh, jax.P())
        self.rows = jax.NamedSharding(self.mesh, jax.P("data"))
        base = {"fit": 1.0, "l1": 0.5, "smooth": 0.1}
        if run == "upgrad":
            weighting = ao.upgrad_weights(base, axis_name="data")
        else:
            weighting = ao.stable_weights(
                base,
                axis_name="data",
                warmup_steps=4,
                cooling_period=2,
                min_stable_steps=1,
                variance_threshold=5.0,
                max_change=0.2,
                ramp_steps=0,  # the original controller: starts at the base and moves on
                spike_prior=None,  # falling and rising losses, so adjustments happen to compare
                low_ratio=0.9,
                toward_base=False,
            )
        self.tx = optax.chain(
            ao.weight_gradients(weighting),
            ao.apply_if_finite(optax.adam(1e-2), axis_name="data"),
        )
        self._step = jax.jit(
            jax.shard_map(
                self._per_device,
                mesh=self.mesh,
                in_specs=(jax.P(), jax.P("data"), jax.P("data")),
                out_specs=jax.P(),
            ),
            donate_argnums=0,
        )
        self._initial = jax.jit(self._build, out_shardings=self.replicated)

    @staticmethod
    def losses(params, x, y):
        hidden = jnp.tanh(x @ params["w1"])
        pred = hidden @ params["w2"]
        return {
            "fit": jnp.mean((pred[:, 0] - y[:, 0]) ** 2),
            "l1": jnp.mean(jnp.abs(pred[:, 1] - y[:, 1])),
            "smooth": jnp.sum(params["w1"] ** 2) * 1e-2,
        }

    def _per_device(self, state, x, y):
        params, opt_state = state["params"], state["opt_state"]
        grads, losses = jax.jacrev(lambda p: (self.losses(p, x, y),) * 2, has_aux=True)(params)
        # summed over the devices by JAX already (params are replicated): divide for the mean
        grads = jax.tree.map(lambda g: g / jax.lax.axis_size("data"), grads)
        updates, opt_state = self.tx.update(grads, opt_state, params, losses=losses)
        return {"params": optax.apply_updates(params, updates), "opt_state": opt_state}

    def _build(self):
        k1, k2 = jax.random.split(jax.random.key(0))
        params = {
            "w1": jax.random.normal(k1, (4, 8)) * 0.5,
            "w2": jax.random.normal(k2, (8, 2)) * 0.5,
        }
        return {"params": params, "opt_state": self.tx.init(params)}

    def initial(self):
        """The initial training state, computed on the devices: the same on every process."""
        return self._initial()

    def batch(self, step: int):
        """This step's global batch, fed by each process for its own devices' rows only."""
        rng = np.random.default_rng(step)
        x = rng.normal(size=(DEVICES * ROWS, 4)).astype(np.float32)
        y = np.stack([np.sin(x.sum(axis=1)), x[:, 0] - x[:, 1]], axis=1).astype(np.float32)
        if step == NAN_STEP:
            row = DEVICES * ROWS - 1  # on the mesh's last device
            owner = {
                d.process_index
                for d, i in self.rows.devices_indices_map(x.shape).items()
                if row in range(*i[0].indices(x.shape[0]))
            }
            assert owner == {jax.process_count() - 1}, (
                owner
            )  # the second host's, where there are two
            x[row, 2] = np.nan
        return tuple(
            jax.make_array_from_callback(a.shape, self.rows, lambda index, a=a: a[index])
            for a in (x, y)
        )

    def step(self, state, step: int):
        return self._step(state, *self.batch(step))

    def save(self, path: pathlib.Path, state) -> None:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()

    def restore(self, path: pathlib.Path):
        import orbax.checkpoint as ocp

        target = self.initial()  # what this code builds, never trained: its shardings
        restored = ocp.StandardCheckpointer().restore(path, target)
        return ao.restore(target, restored)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
