"""Logging adaptive loss weights to TensorBoard with ``tensorboardX``.

A two-term regression trains under ``ao.stable_weights``; every ``log_every`` steps the flat
dict of :func:`adaptive_optax.metrics` (weights, base weights, loss statistics, counters, the
first and last non-finite step of each term) goes to TensorBoard, one scalar per key, under
``adaptive/<key>``, with the losses under ``loss/<term>``. The metrics are fetched from the
device only on the steps that log. ``read_scalars`` reads an event file back (what
``tensorboard --logdir`` shows), with nothing but tensorboardX's own protobuf.

Run it: ``python -m examples.tensorboard_logging --logdir out/tensorboard``, then
``tensorboard --logdir out/tensorboard``.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2

import adaptive_optax as ao

BASE = {"fit": 1.0, "smooth": 0.1}


def losses_fn(params, step):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(0), step), (32, 4))
    return {
        "fit": jnp.mean((x @ params - x.sum(axis=1)) ** 2),
        "smooth": jnp.sum(jnp.diff(params) ** 2),
    }


def train(logdir: Path, steps: int = 100, log_every: int = 10) -> dict[int, dict[str, float]]:
    """Trains and logs; returns what was logged, ``{step: {tag: value}}``."""
    weighting = ao.stable_weights(BASE, warmup_steps=20, cooling_period=5, min_stable_steps=2)
    tx = optax.chain(ao.weight_gradients(weighting), ao.apply_if_finite(optax.adam(1e-2)))

    @jax.jit
    def step_fn(params, opt_state, step):
        losses = losses_fn(params, step)
        grads = jax.jacrev(losses_fn)(params, step)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        return optax.apply_updates(params, updates), opt_state, losses

    metrics = jax.jit(lambda opt_state, losses: {**ao.metrics(opt_state), **_prefixed(losses)})
    params = jnp.zeros(4)
    opt_state = tx.init(params)
    logged: dict[int, dict[str, float]] = {}
    with SummaryWriter(str(logdir)) as writer:
        for step in range(1, steps + 1):
            params, opt_state, losses = step_fn(params, opt_state, step)
            if step % log_every == 0:
                values = jax.device_get(metrics(opt_state, losses))
                tags = {_tag(key): float(value) for key, value in values.items()}
                for tag, value in tags.items():
                    writer.add_scalar(tag, value, global_step=step)
                logged[step] = tags
    return logged


def _prefixed(losses):
    return {f"loss/{name}": value for name, value in losses.items()}


def _tag(key: str) -> str:
    return key if key.startswith("loss/") else f"adaptive/{key}"


def read_scalars(logdir: Path) -> dict[int, dict[str, float]]:
    """The scalars of every event file in ``logdir``, ``{step: {tag: value}}``.

    An event file is a sequence of records (TFRecord framing: a little-endian uint64 length,
    a 4-byte CRC, the payload, a 4-byte CRC), each payload an ``Event`` protobuf.
    """
    found: dict[int, dict[str, float]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                found.setdefault(event.step, {})[value.tag] = value.simple_value
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, default=Path("out/tensorboard"))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    logged = train(args.logdir, steps=args.steps)
    last = logged[max(logged)]
    print(f"logged {len(logged)} steps to {args.logdir}; last weights:")
    for name in BASE:
        print(f"  {name}: {last[f'adaptive/weight/{name}']:.4f}")


if __name__ == "__main__":
    main()
