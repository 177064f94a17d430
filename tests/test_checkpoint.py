"""Checkpoints: exact round trips through flax.serialization and orbax, resume in a fresh
process, and a clear error when the checkpoint does not fit the weighting."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from helpers import seed_controller

import adaptive_optax as ao

# integration with optax and flax, which promote dtypes implicitly
pytestmark = pytest.mark.standard_promotion

BASE = {"fit": 1.0, "smooth": 0.5}
SAVE_AT, STOP = 137, 400


def make_tx(base=BASE, **settings):
    weighting = seed_controller(
        base, warmup_steps=20, cooling_period=10, min_stable_steps=2, **settings
    )
    return optax.chain(ao.weight_gradients(weighting), optax.adam(1e-2))


def losses_fn(params, step):
    """Two loss terms on data drawn from the step number, so every process sees the same."""
    x = jax.random.normal(jax.random.fold_in(jax.random.key(0), step), (16, 3))
    pred = x @ params
    return {
        "fit": jnp.mean((pred - x.sum(axis=1)) ** 2),
        "smooth": jnp.sum(jnp.diff(params) ** 2),
    }


TX = make_tx()


@jax.jit
def train_step(params, opt_state, step):
    losses = losses_fn(params, step)
    grads = jax.jacrev(losses_fn)(params, step)
    updates, opt_state = TX.update(grads, opt_state, params, losses=losses)
    return optax.apply_updates(params, updates), opt_state


def train(params, opt_state, start, stop):
    for step in range(start, stop):
        params, opt_state = train_step(params, opt_state, step)
    return params, opt_state


def initial():
    params = jnp.zeros(3)
    return params, TX.init(params)


def trained(steps=60):
    return train(*initial(), 0, steps)[1]


def assert_exact(restored, expected):
    chex.assert_trees_all_equal_structs(restored, expected)
    chex.assert_trees_all_equal_dtypes(restored, expected)
    chex.assert_trees_all_equal(restored, expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flax_serialization_round_trip_is_exact(dtype):
    weighting = seed_controller(BASE, dtype=dtype, warmup_steps=0, cooling_period=0)
    state, update = weighting.init(), jax.jit(weighting.update)
    for step in range(5):
        _, state = update({"fit": 1.0 / (step + 1), "smooth": 0.3}, state)
    assert_exact(serialization.from_bytes(weighting.init(), serialization.to_bytes(state)), state)
    assert_exact(
        ao.restore(
            weighting.init(),
            serialization.from_state_dict(weighting.init(), serialization.to_state_dict(state)),
        ),
        state,
    )
    opt_state = trained()
    assert_exact(
        serialization.from_bytes(initial()[1], serialization.to_bytes(opt_state)), opt_state
    )


def test_orbax_round_trip_is_exact(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    opt_state = trained()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "opt_state", opt_state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "opt_state", initial()[1])
    assert_exact(ao.restore(initial()[1], restored), opt_state)
    assert_exact(ao.find_state(restored), ao.find_state(opt_state))


def test_restore_refuses_a_checkpoint_of_other_terms():
    saved = serialization.msgpack_restore(serialization.to_bytes(trained()))
    three = {**BASE, "extra": 0.1}
    with pytest.raises(
        ValueError, match=r"loss terms are \('fit', 'smooth'\), the weighting's are"
    ):
        ao.restore(make_tx(three).init(jnp.zeros(3)), saved)
    with pytest.raises(ValueError, match="a term was added, removed or renamed"):
        ao.restore(make_tx({"fit": 1.0}).init(jnp.zeros(3)), saved)
    as_list = seed_controller([1.0, 2.0])
    with pytest.raises(ValueError, match="loss terms"):
        ao.restore(
            seed_controller([1.0, 2.0, 3.0]).init(), serialization.to_state_dict(as_list.init())
        )


def test_restore_refuses_other_dtypes():
    """flax.serialization restores a state of another dtype silently; restore does not."""
    state = seed_controller(BASE).init()
    half = seed_controller(BASE, dtype=jnp.bfloat16).init()
    with pytest.raises(ValueError, match="bfloat16"):
        ao.restore(half, serialization.from_bytes(half, serialization.to_bytes(state)))


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    """Bit for bit on CPU; on a GPU only with deterministic ops (atomics in XLA's GPU
    reductions change the last bits from run to run), which benchmarks/device_check.sh sets."""
    ocp = pytest.importorskip("orbax.checkpoint")
    if jax.default_backend() == "gpu" and "xla_gpu_deterministic_ops=true" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        pytest.skip("bit-exact on a GPU needs XLA_FLAGS=--xla_gpu_deterministic_ops=true")
    params, opt_state = train(*initial(), 0, SAVE_AT)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "step_137", {"params": params, "opt_state": opt_state})
    checkpointer.wait_until_finished()
    params, opt_state = train(params, opt_state, SAVE_AT, STOP)

    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "resumed.msgpack", "rb") as f:
        resumed = serialization.from_bytes({"params": params, "opt_state": opt_state}, f.read())
    assert_exact(resumed, {"params": params, "opt_state": opt_state})
    state = ao.find_state(opt_state)
    assert int(state.step) == STOP
    # adjustments happened after the save, so the resumed run had decisions to get right
    assert int(state.last_change.max()) > SAVE_AT


def test_the_weightings_base_weights_win_over_a_restored_states():
    """Resuming with edited base weights: the weighting's win, the weights keep their factor.

    The checkpoint holds base 2.0 for mel, the resuming code says 2.5: the bounds, the rule
    and ``ao.disable`` work around 2.5 from the first update on.
    """
    built_with = seed_controller(
        {"mel": 2.5, "stop": 1.0}, warmup_steps=0, cooling_period=0, min_stable_steps=0
    )
    saved = seed_controller({"mel": 2.0, "stop": 1.0}).init()
    state = serialization.from_bytes(built_with.init(), serialization.to_bytes(saved))
    assert float(state.base_weights["mel"]) == 2.0  # as saved, until the next update
    update = jax.jit(built_with.update)
    for _ in range(40):  # the loss rises: the weight climbs to its upper bound
        weights, state = update({"mel": 1.0 + float(state.step), "stop": 1.0}, state)
    assert float(weights["mel"]) == pytest.approx(5.0)  # 2 x the weighting's base, not 2 x 2
    assert float(ao.disable(state).weights["mel"]) == 2.5
    assert float(ao.metrics(state)["base_weight/mel"]) == 2.5


@pytest.mark.parametrize("scheduled", [False, True])
def test_an_edited_base_weight_wins_on_resume_constant_or_scheduled_alike(scheduled):
    """The same edit, kl 1 -> 10, gives the same resumed weights whether kl is a constant or
    a schedule: the weighting's base, the saved weight carried with its factor."""

    def base(kl):
        return {"mel": 1.0, "kl": optax.constant_schedule(kl) if scheduled else kl}

    losses = {"mel": 0.8, "kl": 0.3}
    old = ao.stable_weights(base(1.0))
    state = old.init()
    for _ in range(5):
        _, state = old.update(losses, state)
    factor = float(state.weights["kl"]) / 1.0
    new = ao.stable_weights(base(10.0))
    restored = ao.restore(
        new.init(), serialization.from_bytes(new.init(), serialization.to_bytes(state))
    )
    weights, resumed = new.update(losses, restored)
    assert float(ao.metrics(resumed)["base_weight/kl"]) == 10.0
    unedited, _ = old.update(losses, state)
    assert float(weights["kl"]) == pytest.approx(10.0 * float(unedited["kl"]) / 1.0, rel=1e-6)
    assert factor < 1.0  # the start ramp: the factor is carried, not reset to the base


def test_a_state_made_by_another_weighting_does_not_bring_its_base_weights():
    """A state of another weighting with the same terms (base 9) passed to ``update``: this
    weighting's base weights (1) are used, its weights carried to them with their factor."""
    losses = {"mel": 0.8, "kl": 0.3}
    other = ao.stable_weights({"mel": 9.0, "kl": 9.0}).init()
    weights, state = ao.stable_weights({"mel": 1.0, "kl": 1.0}).update(losses, other)
    own, _ = ao.stable_weights({"mel": 1.0, "kl": 1.0}).update(
        losses, ao.stable_weights({"mel": 1.0, "kl": 1.0}).init()
    )
    assert float(ao.metrics(state)["base_weight/mel"]) == 1.0
    for term in losses:
        assert float(weights[term]) == pytest.approx(float(own[term]))


def resume(directory):
    """The fresh process: restore the step-137 checkpoint, train to step 400, write it."""
    import orbax.checkpoint as ocp

    params, opt_state = initial()
    target = {"params": params, "opt_state": opt_state}
    restored = ocp.StandardCheckpointer().restore(os.path.join(directory, "step_137"), target)
    restored = ao.restore(target, restored)
    assert int(ao.find_state(restored).step) == SAVE_AT
    params, opt_state = train(restored["params"], restored["opt_state"], SAVE_AT, STOP)
    with open(os.path.join(directory, "resumed.msgpack"), "wb") as f:
        f.write(serialization.to_bytes({"params": params, "opt_state": opt_state}))


if __name__ == "__main__":
    np.seterr(all="raise")
    resume(sys.argv[1])
