"""The main job, short version: the stable controller against the legacy rule on synthetic losses.

Run with ``make demo``. Prints a table and writes ``results/demo.png``.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import adaptive_optax as ao  # noqa: E402

BASE = {"mel": 2.5, "stop": 1.0, "attention": 0.1, "duration": 0.1}
STEPS = 2000


def synthetic_losses(key: jax.Array, steps: int) -> dict[str, jax.Array]:
    """Decaying losses with noise, a few spikes and a NaN burst in the mel loss."""
    t = jnp.arange(steps)
    keys = jax.random.split(key, len(BASE))
    losses = {}
    for k, (name, scale) in zip(
        keys, [("mel", 1.0), ("stop", 0.3), ("attention", 2.0), ("duration", 0.5)], strict=True
    ):
        noise = 1 + 0.05 * jax.random.normal(k, (steps,))
        losses[name] = scale * (0.2 + jnp.exp(-t / 600)) * noise
    spikes = jnp.isin(t, jnp.array([700, 1300]))
    losses["mel"] = jnp.where(spikes, losses["mel"] * 5, losses["mel"])
    losses["mel"] = jnp.where((t >= 1000) & (t < 1005), jnp.nan, losses["mel"])
    return losses


def run(weighting: ao.LossWeighting, losses, grad_norms):
    def step(state, inputs):
        loss, gnorm = inputs
        weights, state = weighting.update(loss, state, grad_norms=gnorm)
        return state, weights

    state, weights = jax.jit(lambda: jax.lax.scan(step, weighting.init(), (losses, grad_norms)))()
    return state, weights


def main() -> None:
    losses = synthetic_losses(jax.random.key(0), STEPS)
    grad_norms = 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (STEPS,))
    strategies = {
        "legacy": ao.legacy_weights(BASE, adapt="mel"),
        "unguarded": ao.unguarded_weights(BASE, adapt="mel"),
        "stable": ao.stable_weights(BASE, adapt="mel"),
    }
    print(
        f"{'strategy':<10} {'final mel w':>11} {'min':>6} {'max':>6} {'adjust':>6} "
        f"{'nonfinite':>9} {'rollback':>8}"
    )
    fig, ax = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax[0].plot(losses["mel"], lw=0.8)
    ax[0].set_ylabel("mel loss")
    for name, weighting in strategies.items():
        state, weights = run(weighting, losses, grad_norms)
        m = ao.metrics(state)
        mel = weights["mel"]
        print(
            f"{name:<10} {float(mel[-1]):>11.3f} {float(mel.min()):>6.2f} "
            f"{float(mel.max()):>6.2f} {int(m['adjustments/mel']):>6} "
            f"{int(m['nonfinite/mel']):>9} {int(m['rollbacks/mel']):>8}"
        )
        ax[1].plot(mel, label=name)
    ax[1].set_ylabel("mel weight")
    ax[1].set_xlabel("step")
    ax[1].legend()
    out = pathlib.Path("results")
    out.mkdir(exist_ok=True)
    fig.savefig(out / "demo.png", dpi=100)
    print(f"figure written to {out / 'demo.png'}")


if __name__ == "__main__":
    main()
