"""A NaN batch reaches neither the parameters nor the optimizer state, in every training pattern.

For every training step that README.md and the guides show (run as written, from their
Markdown) and for both Flax examples: train a few steps, feed one batch whose target for one
term is NaN, then a burst of three bad batches (NaN inputs, NaN target, NaN inputs), and check

- the parameters and the optimizer state equal, exactly, those before the first bad batch,
  except the leaves that exist to count steps (``EXCLUDED``);
- the weighting counted each bad step (``nonfinite/mel``; with ``ao.amortized_grads``, each bad
  step that recomputed the weights, the only ones it sees), and ``ao.apply_if_finite`` did;
- training goes on: the loss is lower after five good steps, the parameters stay finite.

The NaN target hits the mel term, an L1 loss in the snippet setup: its loss is NaN while its
gradient is finite (``abs``'s derivative at NaN is -1), the case a check of the gradients alone
(``optax.apply_if_finite``) lets through. NaN inputs make the gradients NaN as well.

The shard_map step runs here on a one-device mesh; ``tests/test_multidevice.py`` runs it on 8
devices with the NaN on one device's shard only.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_readme
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adaptive_optax as ao
from examples import flax_linen, flax_nnx

# integration with optax and flax, which promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion

# Leaves allowed to change on a skipped step, by the name of a node on their path:
# - "weighting_state": the weighting sees every step and counts the bad one (checked apart);
# - "notfinite_count", "last_finite", "total_notfinite": ao.apply_if_finite's record of skipped
#   steps (its inner state, the optimizer's, must not change);
# - "step" at the top of an nnx.Optimizer's or a linen TrainState's state: counts update calls.
EXCLUDED = ("weighting_state", "notfinite_count", "last_finite", "total_notfinite")
BURST = ("nan_x", "nan_target", "nan_x")


def _name(entry):
    for field in ("key", "name", "idx"):
        if hasattr(entry, field):
            return getattr(entry, field)
    raise TypeError(entry)


def _leaves(tree, *, top_step=False):
    """``{path: leaf}`` of the leaves a skipped step must leave untouched."""
    kept = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_name(entry) for entry in path]
        if any(name in EXCLUDED for name in names) or (top_step and names[:1] == ["step"]):
            continue
        kept[jax.tree_util.keystr(path)] = np.asarray(leaf)
    return kept


def assert_untouched(before, after):
    assert before.keys() == after.keys()
    for path, leaf in before.items():
        np.testing.assert_array_equal(after[path], leaf, err_msg=path, strict=True)


def total_notfinite(opt_state):
    return int(optax.tree.get(opt_state, "total_notfinite"))


def bad_batches(batch, column):
    """The NaN-target batch (one column of ``y``) and the NaN-input batch."""
    return {
        "nan_target": {**batch, "y": batch["y"].at[:, column].set(jnp.nan)},
        "nan_x": {**batch, "x": batch["x"].at[0, 0].set(jnp.nan)},
    }


class Run:
    """One training pattern: ``step(batch)`` trains in place and returns its metrics."""

    def weighting_sees_next_step(self):
        """Whether the weighting will see the next step (``ao.amortized_grads``' only on the
        steps that recompute the weights)."""
        return True

    def snapshot(self):
        return {"params": _leaves(self.params()), "opt_state": self.opt_leaves()}

    def opt_leaves(self):
        return _leaves(self.opt_state())


def check_skips_bad_batches(run, batch, *, term="mel", column=0):
    """The whole protocol of the module docstring."""
    bad = bad_batches(batch, column)
    for _ in range(2):
        run.step(batch)
    before = run.snapshot()

    seen = int(run.weighting_sees_next_step())
    metrics = run.step(bad["nan_target"])
    assert_untouched(before["params"], run.snapshot()["params"])
    assert_untouched(before["opt_state"], run.snapshot()["opt_state"])
    assert int(metrics[f"nonfinite/{term}"]) == seen
    assert total_notfinite(run.opt_state()) == 1

    for name in BURST:
        seen += int(run.weighting_sees_next_step())
        metrics = run.step(bad[name])
    assert_untouched(before["params"], run.snapshot()["params"])
    assert_untouched(before["opt_state"], run.snapshot()["opt_state"])
    assert int(metrics[f"nonfinite/{term}"]) == seen
    assert total_notfinite(run.opt_state()) == 1 + len(BURST)

    losses = [run.loss(batch)]
    for _ in range(5):
        run.step(batch)
        losses.append(run.loss(batch))
    assert losses[-1] < losses[0], losses  # Adam at 1e-2 may overshoot on the way: not monotone
    chex.assert_tree_all_finite(run.params())
    assert int(optax.tree.get(run.opt_state(), "notfinite_count")) == 0


# The training steps of README.md and the guides ---------------------------------------------

KINDS = {
    "five_lines": "def train_step(params, opt_state, weight_state, batch):",
    "shard_map": "@jax.shard_map(",
    "chain": "def train_step(params, opt_state, batch):",
    "linen": "def train_step(state, batch):",
    "nnx": "def train_step(model, optimizer, batch):",
    "amortized": "def train_step(params, opt_state, amortized_state, batch):",
}


def kind_of(code):
    return next((kind for kind, mark in KINDS.items() if mark in code), None)


STEPS = {}  # one block per distinct code: README.md and the guides repeat some
for _block in test_readme.BLOCKS:
    if re.search(r"^def train_step\(", _block.code, flags=re.M):
        STEPS.setdefault(_block.code, _block)
STEPS = list(STEPS.values())


def test_every_documented_training_step_is_covered():
    assert {kind_of(block.code) for block in STEPS} == set(KINDS), [b.id for b in STEPS]


class DocumentedRun(Run):
    def __init__(self, block):
        self.kind = kind_of(block.code)
        ns = {"__name__": "__snippet__"}
        exec(compile(test_readme.PREAMBLE.read_text(), str(test_readme.PREAMBLE), "exec"), ns)
        exec(compile("\n" * block.line + block.code, str(block.path), "exec"), ns)
        self.ns = ns

    def put(self, batch):
        if self.kind == "shard_map":
            return jax.device_put(batch, NamedSharding(self.ns["mesh"], P("data")))
        return batch

    def weighting_sees_next_step(self):
        if self.kind == "amortized":
            return int(self.ns["amortized_state"].step) % self.ns["amortized"].every == 0
        return True

    def step(self, batch):
        ns, batch = self.ns, self.put(batch)
        if self.kind == "amortized":
            *carry, logs = ns["train_step"](
                ns["params"], ns["opt_state"], ns["amortized_state"], batch
            )
            ns["params"], ns["opt_state"], ns["amortized_state"] = carry
            return logs
        if self.kind == "five_lines":
            *carry, logs = ns["train_step"](
                ns["params"], ns["opt_state"], ns["weight_state"], batch
            )
            ns["params"], ns["opt_state"], ns["weight_state"] = carry
            return logs
        if self.kind == "chain":
            ns["params"], ns["opt_state"], logs = ns["train_step"](
                ns["params"], ns["opt_state"], batch
            )
            return logs
        if self.kind == "shard_map":
            ns["params"], ns["opt_state"] = ns["train_step"](ns["params"], ns["opt_state"], batch)
            return ao.metrics(ns["opt_state"])
        if self.kind == "linen":
            ns["state"], logs = ns["train_step"](ns["state"], batch)
            return logs
        return ns["train_step"](ns["model"], ns["optimizer"], batch)  # nnx

    def params(self):
        if self.kind == "linen":
            return self.ns["state"].params
        if self.kind == "nnx":
            return nnx.to_pure_dict(nnx.state(self.ns["model"], nnx.Param))
        return self.ns["params"]

    def opt_state(self):
        if self.kind == "linen":
            return self.ns["state"].opt_state
        if self.kind == "nnx":
            return nnx.to_pure_dict(nnx.state(self.ns["optimizer"]))
        return self.ns["opt_state"]

    def opt_leaves(self):
        return _leaves(self.opt_state(), top_step=self.kind == "nnx")

    def loss(self, batch):
        ns = self.ns
        if self.kind == "linen":
            losses = ns["losses_of"](ns["state"].apply_fn(ns["state"].params, batch["x"]), batch)
        elif self.kind == "nnx":
            losses = ns["losses_of"](ns["model"](batch["x"]), batch)
        else:
            losses = ns["model_losses"](ns["params"], batch)
        return float(sum(losses.values()))


@pytest.mark.parametrize("block", STEPS, ids=lambda block: f"{kind_of(block.code)}-{block.id}")
def test_documented_training_step_skips_nan_batches(block):
    run = DocumentedRun(block)
    batch = jax.tree.map(jnp.asarray, jax.device_get(run.ns["batch"]))  # unsharded
    if run.kind == "linen":
        before = int(run.ns["state"].step)
    if run.kind == "five_lines":  # the snippet may have trained a few steps already
        start = int(run.ns["weight_state"].step)
    if run.kind == "amortized":
        start = int(run.ns["amortized_state"].step)
    check_skips_bad_batches(run, batch)
    if run.kind == "five_lines":  # the weighting state rides beside the optimizer's
        assert int(run.ns["weight_state"].step) == start + 2 + 1 + len(BURST) + 5
    if run.kind == "amortized":  # the counter of the schedule counts every step, bad or not
        assert int(run.ns["amortized_state"].step) == start + 2 + 1 + len(BURST) + 5
    if run.kind == "linen":  # TrainState.step counts every call, skipped or not
        assert int(run.ns["state"].step) == before + 2 + 1 + len(BURST) + 5


# The Flax examples -------------------------------------------------------------------------


def example_batch():
    x, y_sine, y_product = flax_nnx.make_data(n=64)
    return {"x": x, "y": jnp.stack([y_sine, y_product], axis=1)}


class NnxExample(Run):
    def __init__(self):
        self.model = flax_nnx.TwoHeads(nnx.Rngs(0))
        self.optimizer = flax_nnx.make_optimizer(self.model)

    def step(self, batch):
        _, metrics = flax_nnx.train_step(
            self.model, self.optimizer, batch["x"], batch["y"][:, 0], batch["y"][:, 1]
        )
        return metrics

    def params(self):
        return nnx.to_pure_dict(nnx.state(self.model, nnx.Param))

    def opt_state(self):
        return nnx.to_pure_dict(nnx.state(self.optimizer))

    def opt_leaves(self):
        return _leaves(self.opt_state(), top_step=True)

    def loss(self, batch):
        losses = flax_nnx.losses_fn(self.model, batch["x"], batch["y"][:, 0], batch["y"][:, 1])
        return float(sum(losses.values()))


class LinenExample(Run):
    def __init__(self):
        self.state = flax_linen.create_state()

    def step(self, batch):
        self.state, _, metrics = flax_linen.train_step(
            self.state, batch["x"], batch["y"][:, 0], batch["y"][:, 1]
        )
        return metrics

    def params(self):
        return self.state.params

    def opt_state(self):
        return self.state.opt_state

    def loss(self, batch):
        sine, product = self.state.apply_fn(self.state.params, batch["x"])
        y = batch["y"]
        return float(jnp.mean((sine - y[:, 0]) ** 2) + jnp.mean((product - y[:, 1]) ** 2))


@pytest.mark.parametrize("make", [NnxExample, LinenExample], ids=["flax_nnx", "flax_linen"])
def test_example_skips_nan_batches(make):
    check_skips_bad_batches(make(), example_batch(), term="sine", column=0)


# ao.apply_if_finite itself ------------------------------------------------------------------


def test_apply_if_finite_checks_the_losses_where_optax_checks_only_gradients():
    """Finite gradients, NaN loss (an L1 loss of a NaN target): optax's wrapper applies the
    update, ours skips it."""
    params = jnp.ones(3)
    grads = jax.grad(lambda p: jnp.mean(jnp.abs(p - jnp.nan)))(params)
    chex.assert_tree_all_finite(grads)
    losses = {"mel": jnp.float32(jnp.nan), "stop": jnp.float32(1.0)}
    theirs = optax.apply_if_finite(optax.adam(0.1), max_consecutive_errors=2**31 - 1)
    ours = ao.apply_if_finite(optax.adam(0.1))
    updates, _ = jax.jit(theirs.update)(grads, theirs.init(params), params, losses=losses)
    assert np.all(np.asarray(updates) != 0)
    updates, state = jax.jit(ours.update)(grads, ours.init(params), params, losses=losses)
    np.testing.assert_array_equal(updates, np.zeros(3, np.float32))
    chex.assert_trees_all_equal(state.inner_state, ours.init(params).inner_state)
    assert int(state.total_notfinite) == 1 and not bool(state.last_finite)


def test_apply_if_finite_never_gives_up_where_optax_does():
    """optax.apply_if_finite(tx, 3) applies the 4th NaN step in a row; ours does not, even at
    the end of its counter's range, where the count saturates."""
    params = jnp.ones(2)
    nan = jnp.full(2, jnp.nan)
    theirs = optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=3)
    state = theirs.init(params)
    update = jax.jit(theirs.update)
    for _ in range(4):
        updates, state = update(nan, state, params)
    assert np.all(np.isnan(updates))  # given up: the NaN step is applied

    ours = ao.apply_if_finite(optax.sgd(0.1))
    top = jnp.iinfo(jnp.int32).max
    state = ours.init(params)._replace(notfinite_count=jnp.int32(top - 1))
    update = jax.jit(ours.update)
    for _ in range(3):
        updates, state = update(nan, state, params)
        np.testing.assert_array_equal(updates, np.zeros(2, np.float32))
    assert int(state.notfinite_count) == top
    updates, state = update(jnp.ones(2), state, params)
    np.testing.assert_allclose(updates, -0.1 * np.ones(2))
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 3


def test_apply_if_finite_state_is_optax_s_and_extra_args_reach_the_inner_transform():
    """The state has optax's type (checkpoints, optax.tree.get); inner transforms that take
    extra arguments get them (here the value of reduce_on_plateau)."""
    params = jnp.ones(2)
    tx = ao.apply_if_finite(
        optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=0, factor=0.5))
    )
    state = tx.init(params)
    assert isinstance(state, optax.ApplyIfFiniteState)
    update = jax.jit(tx.update)
    for _ in range(3):
        _, state = update(jnp.ones(2), state, params, value=jnp.float32(1.0), losses={"a": 1.0})
    assert float(optax.tree.get(state, "scale")) < 1.0  # the plateau was seen: value arrived


def test_weight_gradients_skip_nonfinite_also_skips_a_nan_loss_with_finite_gradients():
    """skip_nonfinite=True leaves the weighting untouched on exactly the steps that
    ao.apply_if_finite skips: a NaN loss with finite gradients is one of them."""
    base = {"fit": 1.0, "reg": 0.5}
    weighting = ao.stable_weights(base, warmup_steps=0, cooling_period=0, min_stable_steps=0)

    def losses_fn(params, target):
        return {"fit": jnp.mean(jnp.abs(params - target)), "reg": jnp.sum(params**2)}

    def run(skip):
        tx = optax.chain(
            ao.weight_gradients(weighting, skip_nonfinite=skip), ao.apply_if_finite(optax.sgd(0.1))
        )

        @jax.jit
        def step(params, opt_state, target):
            grads = jax.jacrev(losses_fn)(params, target)
            updates, opt_state = tx.update(
                grads, opt_state, params, losses=losses_fn(params, target)
            )
            return optax.apply_updates(params, updates), opt_state

        params = jnp.zeros(3)
        opt_state = tx.init(params)
        for _ in range(3):
            params, opt_state = step(params, opt_state, jnp.ones(3))
        new_params, new_state = step(params, opt_state, jnp.full(3, jnp.nan))
        chex.assert_trees_all_equal(new_params, params)
        chex.assert_trees_all_equal(new_state[1].inner_state, opt_state[1].inner_state)
        return ao.find_state(opt_state), ao.find_state(new_state)

    old, new = run(skip=True)
    chex.assert_trees_all_equal(new, old)
    old, new = run(skip=False)
    assert int(new.step) == int(old.step) + 1
    assert int(ao.metrics(new)["nonfinite/fit"]) == 1


def test_apply_if_finite_without_axis_name_is_refused_by_shard_map():
    """Per-device losses make the decision per device: shard_map's replication check refuses
    it at trace time (the error the README quotes), axis_name fixes it."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    params = jnp.zeros(3)
    x = jax.device_put(jnp.ones((8, 3)), NamedSharding(mesh, P("data")))

    def step_of(tx):
        @jax.jit
        @jax.shard_map(mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=(P(), P()))
        def step(params, opt_state, x):
            loss = jnp.mean((x @ params - 1.0) ** 2)
            grads = jax.grad(lambda p: jnp.mean((x @ p - 1.0) ** 2))(params)  # summed over devices
            grads = grads / jax.lax.axis_size("data")
            updates, opt_state = tx.update(grads, opt_state, params, losses={"fit": loss})
            return optax.apply_updates(params, updates), opt_state

        return step

    without = ao.apply_if_finite(optax.sgd(0.1))
    with pytest.raises(ValueError, match="out_specs which require replication"):
        step_of(without)(params, without.init(params), x)
    with_axis = ao.apply_if_finite(optax.sgd(0.1), axis_name="data")
    new_params, _ = step_of(with_axis)(params, with_axis.init(params), x)
    assert not np.array_equal(new_params, params)


def test_multisteps_inside_apply_if_finite_never_accumulates_a_nan_micro_batch():
    """ao.apply_if_finite(optax.MultiSteps(...)): a NaN micro-batch is skipped before it reaches
    the accumulator, so the emitted update is the mean of the good micro-batches only."""
    k = 2
    tx = optax.chain(
        ao.weight_gradients(ao.unguarded_weights({"fit": 1.0})),
        ao.apply_if_finite(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=k)),
    )
    params = jnp.zeros(2)
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    emitted = []
    for grad in (1.0, jnp.nan, 3.0):
        grads = {"fit": jnp.full(2, grad, jnp.float32)}
        before = opt_state
        updates, opt_state = update(grads, opt_state, params, losses={"fit": jnp.float32(grad)})
        emitted.append(np.asarray(updates))
        if not np.isfinite(grad):  # the accumulator and the micro-step count are untouched
            chex.assert_trees_all_equal(opt_state[1].inner_state, before[1].inner_state)
    np.testing.assert_array_equal(emitted[0], np.zeros(2, np.float32))
    np.testing.assert_array_equal(emitted[1], np.zeros(2, np.float32))
    np.testing.assert_allclose(emitted[2], -np.full(2, (1.0 + 3.0) / k))
