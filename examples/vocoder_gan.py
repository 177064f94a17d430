"""An adversarial vocoder in miniature: does the adversarial stage start without a blow-up?

A generator turns a spectrum (8 "mel" bins) and noise into a 32-sample waveform; it is trained
on HiFi-GAN's three losses: the L1 distance between the spectra of its output and of the real
waveform (base weight 45), a least-squares adversarial loss (1) and feature matching on the
discriminator's hidden layers (2). The adversarial and feature-matching terms are scheduled in
at ``entry`` (HiFi-GAN's "pretraining" of the generator alone): their base weights are optax
step functions, 0 before. The discriminator has its own Adam and trains from ``entry`` on.

The runs share everything but the weighting (:data:`RUNS`): ``adaptive`` is
``ao.stable_weights`` as it comes (the spike guard on at a z-score of 5), the second the same
with ``spike_threshold=3``, ``fixed`` the same weighting disabled (``ao.disable``): the
scheduled base weights, no adjustment and no spike cut (the spikes it would have cut are
still counted).
Every run and seed trains at once, under ``jax.vmap``, in one jitted ``lax.scan``.

Run it: ``python -m examples.vocoder_gan`` (``--quick`` for a short run, ``--out results`` to
write ``results/vocoder_gan.md`` and its figure).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptive_optax as ao

N_MEL, FRAME, NOISE, WIDTH, BATCH = 8, 32, 4, 64, 32
BASE = {"mel": 45.0, "adv": 1.0, "fm": 2.0}  # HiFi-GAN's loss weights
_t = jnp.arange(FRAME) / FRAME
_freqs = jnp.arange(1, N_MEL + 1)
COS = jnp.cos(2 * jnp.pi * _t[:, None] * _freqs)  # (FRAME, N_MEL)
SIN = jnp.sin(2 * jnp.pi * _t[:, None] * _freqs)


class Config(NamedTuple):
    """One experiment: ``steps`` generator steps, the adversarial stage from ``entry``."""

    steps: int = 1200
    entry: int = 600
    seeds: int = 5
    lr_generator: float = 2e-3
    lr_discriminator: float = 2e-3


QUICK = Config(steps=120, entry=60, seeds=2)


def spectrum(wave: jax.Array) -> jax.Array:
    """Log magnitudes of the waveform at the ``N_MEL`` frequencies: the "mel" of this toy."""
    c, s = wave @ COS, wave @ SIN
    return jnp.log(1e-2 + jnp.sqrt(c**2 + s**2 + 1e-8))


def real_batch(key: jax.Array) -> jax.Array:
    """Waveforms: sums of the ``N_MEL`` sinusoids with random amplitudes and phases."""
    k1, k2 = jax.random.split(key)
    amps = jax.random.uniform(k1, (BATCH, 1, N_MEL)) ** 2
    phase = jax.random.uniform(k2, (BATCH, 1, N_MEL), maxval=2 * jnp.pi)
    return jnp.sum(amps * jnp.sin(2 * jnp.pi * _t[:, None] * _freqs + phase), -1) / 2


def _mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def init_params(key: jax.Array) -> dict:
    kg, kd = jax.random.split(key)
    return {
        "generator": _mlp(kg, [N_MEL + NOISE, WIDTH, WIDTH, FRAME]),
        "discriminator": _mlp(kd, [FRAME, WIDTH, WIDTH, 1]),
    }


def generate(params, mel, noise):
    h = jnp.concatenate([mel, noise], -1)
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def discriminate(params, wave):
    """The score and the hidden features (for feature matching)."""
    features, h = [], wave
    for layer in params[:-1]:
        h = jax.nn.leaky_relu(h @ layer["w"] + layer["b"], 0.1)
        features.append(h)
    return (h @ params[-1]["w"] + params[-1]["b"])[:, 0], features


def generator_losses(gen, disc, real, noise):
    """HiFi-GAN's generator terms: spectral L1, least-squares adversarial, feature matching."""
    mel = spectrum(real)
    fake = generate(gen, mel, noise)
    score, fake_features = discriminate(disc, fake)
    _, real_features = discriminate(disc, real)
    fm = sum(jnp.mean(jnp.abs(r - f)) for r, f in zip(real_features, fake_features, strict=True))
    return {
        "mel": jnp.mean(jnp.abs(spectrum(fake) - mel)),
        "adv": jnp.mean((score - 1.0) ** 2),
        "fm": fm / len(real_features),
    }


def discriminator_loss(disc, gen, real, noise):
    fake = jax.lax.stop_gradient(generate(gen, spectrum(real), noise))
    return jnp.mean((discriminate(disc, real)[0] - 1.0) ** 2) + jnp.mean(
        discriminate(disc, fake)[0] ** 2
    )


def scheduled_base(entry: int) -> dict:
    """The mel term from the start; adversarial and feature matching from ``entry``."""
    return {
        "mel": BASE["mel"],
        "adv": _step_in(entry, BASE["adv"]),
        "fm": _step_in(entry, BASE["fm"]),
    }


def _step_in(entry: int, value: float):
    """A base weight of 0 before step ``entry``, ``value`` from it on (a callable of the step,
    as ``optax.piecewise_constant_schedule`` would give)."""
    return lambda count: jnp.where(count >= entry, value, 0.0)


RUNS = {  # name: (adapting, spike threshold)
    "adaptive": (True, 5.0),  # stable_weights as it comes: the spike guard at z = 5
    "adaptive, spike_threshold=3": (True, 3.0),  # a guard that also cuts on batch noise
    "fixed": (False, 5.0),  # disabled: the scheduled base weights, no adjustment, no cut
}


def make_tx(config: Config, adapting, spike_threshold):
    """The generator's optimiser: the scheduled weighting, then Adam kept from non-finite
    steps. The run's settings may be traced: every run of :data:`RUNS` shares one program."""
    weighting = ao.stable_weights(scheduled_base(config.entry), spike_threshold=spike_threshold)
    tx = optax.chain(
        ao.weight_gradients(weighting), ao.apply_if_finite(optax.adam(config.lr_generator))
    )

    def init(params):
        state = tx.init(params)
        return optax.tree.where(adapting, state, ao.disable(state))

    return optax.GradientTransformationExtraArgs(init, tx.update)


def train(config: Config, runs: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Trains every run of ``runs`` on ``config.seeds`` seeds at once, in one jitted program;
    per run, seed and step: losses, weights, events."""
    disc_tx = optax.adam(config.lr_discriminator)

    def one_run(seed, adapting, spike_threshold):
        gen_tx = make_tx(config, adapting, spike_threshold)
        params = init_params(jax.random.key(seed))
        carry = (params, gen_tx.init(params["generator"]), disc_tx.init(params["discriminator"]))

        def step(carry, k):
            params, gen_state, disc_state = carry
            gen, disc = params["generator"], params["discriminator"]
            key = jax.random.fold_in(jax.random.key(1000 + seed), k)
            k_real, k_noise = jax.random.split(key)
            real = real_batch(k_real)
            noise = jax.random.normal(k_noise, (BATCH, NOISE))
            losses = generator_losses(gen, disc, real, noise)
            grads = jax.jacrev(generator_losses)(gen, disc, real, noise)
            weights = ao.find_state(gen_state).weights  # the weights of this step
            weighted = [jax.tree.map(lambda g, w=weights[t]: w * g, grads[t]) for t in BASE]
            grad_norm = optax.tree.norm(jax.tree.map(lambda *g: sum(g), *weighted))
            updates, gen_state = gen_tx.update(grads, gen_state, gen, losses=losses)
            gen = optax.apply_updates(gen, updates)
            # the discriminator trains from the adversarial stage on
            d_grads = jax.grad(discriminator_loss)(disc, gen, real, noise)
            d_updates, new_disc_state = disc_tx.update(d_grads, disc_state, disc)
            on = k >= config.entry
            disc = optax.tree.where(on, optax.apply_updates(disc, d_updates), disc)
            disc_state = optax.tree.where(on, new_disc_state, disc_state)
            state = ao.find_state(gen_state)
            record = {
                **{f"loss/{t}": losses[t] for t in BASE},
                **{f"weight/{t}": weights[t] for t in BASE},
                "grad_norm": grad_norm,
                "spikes": jnp.sum(state.counters.spikes),
                **{f"spikes/{t}": state.counters.spikes[i] for i, t in enumerate(sorted(BASE))},
                "skipped": gen_state[1].total_notfinite,
            }
            return ({"generator": gen, "discriminator": disc}, gen_state, disc_state), record

        _, trace = jax.lax.scan(step, carry, jnp.arange(config.steps))
        return trace

    adapting = jnp.array([RUNS[name][0] for name in runs])
    thresholds = jnp.array([RUNS[name][1] for name in runs])
    over_seeds = jax.vmap(one_run, in_axes=(0, None, None))
    traces = jax.jit(jax.vmap(over_seeds, in_axes=(None, 0, 0)))(
        jnp.arange(config.seeds), adapting, thresholds
    )
    return {
        name: jax.tree.map(lambda x, i=i: np.asarray(x[i]), traces) for i, name in enumerate(runs)
    }


class Outcome(NamedTuple):
    """What the start of the adversarial stage did to one run."""

    mel_before: float  # mean spectral L1 over the 20 steps before entry
    mel_peak: float  # its largest value over the 100 steps after entry
    mel_final: float  # its mean over the last 20 steps
    grad_jump: float  # largest weighted gradient norm after entry / median before
    spikes: tuple[int, ...]  # spikes seen per term (mel, adv, fm); cut when adapting
    adv_spike_steps: tuple[int, ...]  # the steps where the adversarial term spiked
    skipped: int  # non-finite generator steps kept from the parameters
    blew_up: bool  # a non-finite step, or the spectral loss more than doubled


def outcomes(trace: dict[str, np.ndarray], entry: int) -> list[Outcome]:
    """One :class:`Outcome` per seed of a trace from :func:`train`."""
    found = []
    for i in range(trace["loss/mel"].shape[0]):
        mel, norm = trace["loss/mel"][i], trace["grad_norm"][i]
        before = float(np.mean(mel[entry - 20 : entry]))
        peak = float(np.nanmax(np.where(np.isfinite(mel), mel, np.inf)[entry : entry + 100]))
        skipped = int(trace["skipped"][i][-1])
        found.append(
            Outcome(
                mel_before=before,
                mel_peak=peak,
                mel_final=float(np.mean(mel[-20:])),
                grad_jump=float(np.max(norm[entry:]) / np.median(norm[entry - 50 : entry])),
                spikes=tuple(int(trace[f"spikes/{t}"][i][-1]) for t in BASE),
                adv_spike_steps=tuple(
                    int(k) for k in np.nonzero(np.diff(trace["spikes/adv"][i]))[0] + 1
                ),
                skipped=skipped,
                blew_up=bool(skipped > 0 or peak > 2 * before),
            )
        )
    return found


def report(
    config: Config,
    results: dict[str, list[Outcome]],
    weights: dict[str, dict[str, np.ndarray]],
    seconds: float,
) -> str:
    """A Markdown table of the outcomes, per run and seed (``weights``: final, per seed)."""
    lines = [
        "| weights | seed | mel L1 before entry | peak after | final | grad-norm jump "
        "| spikes seen (mel/adv/fm) | adv spikes at steps | skipped steps | blow-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, found in results.items():
        for seed, o in enumerate(found):
            lines.append(
                f"| {name} | {seed} | {o.mel_before:.4f} | {o.mel_peak:.4f} | {o.mel_final:.4f} "
                f"| {o.grad_jump:.2f} | {'/'.join(map(str, o.spikes))} "
                f"| {', '.join(map(str, o.adv_spike_steps)) or '-'} | {o.skipped} "
                f"| {'yes' if o.blew_up else 'no'} |"
            )
    summary = []
    for name, found in results.items():
        summary.append(
            f"- {name}: {sum(o.blew_up for o in found)} blow-ups in {len(found)} seeds; "
            f"final mel L1 {np.mean([o.mel_final for o in found]):.4f} (mean over seeds), "
            f"peak / before {np.mean([o.mel_peak / o.mel_before for o in found]):.2f}; "
            f"final weights mel {np.mean(weights[name]['mel']):.1f}, "
            f"adv {np.mean(weights[name]['adv']):.2f}, fm {np.mean(weights[name]['fm']):.2f}"
        )
    return "\n".join(
        [
            "# Adversarial vocoder in miniature: the start of the adversarial stage",
            "<!-- results -->",
            "",
            f"Command: `python -m examples.vocoder_gan --out results` ({config.steps} steps, "
            f"adversarial and feature-matching terms in at step {config.entry}, "
            f"{config.seeds} seeds); {seconds:.0f} s on an {platform.machine()} CPU with "
            f"{os.cpu_count()} cores (shared), jax {jax.__version__}.",
            "",
            *summary,
            "",
            *lines,
            "",
        ]
    )


def plot(trace_by_run: dict[str, dict], entry: int, path: Path) -> None:
    """Losses, weights and spike cuts of seed 0 over the whole run, both runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for name, trace in trace_by_run.items():
        style = {"adaptive": "-", "fixed": "--"}.get(name, ":")
        for term in BASE:
            axes[0].plot(trace[f"loss/{term}"][0], style, label=f"{name} {term}")
            axes[1].plot(trace[f"weight/{term}"][0], style, label=f"{name} {term}")
        axes[2].plot(trace["spikes"][0], style, label=f"{name} spikes")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[1].set_ylabel("weight")
    axes[2].set_ylabel("spikes seen (cumulative)")
    axes[2].set_xlabel("step")
    for ax in axes:
        ax.axvline(entry, color="grey", lw=0.8)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (the test's)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for the report")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args(argv)
    config = QUICK if args.quick else Config()
    if args.seeds is not None:
        config = config._replace(seeds=args.seeds)
    start = time.perf_counter()
    traces = train(config, args.runs)
    results = {name: outcomes(trace, config.entry) for name, trace in traces.items()}
    weights = {
        name: {t: trace[f"weight/{t}"][:, -1] for t in BASE} for name, trace in traces.items()
    }
    text = report(config, results, weights, time.perf_counter() - start)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "vocoder_gan.md").write_text(text + "\n![](vocoder_gan.png)\n")
        plot(traces, config.entry, args.out / "vocoder_gan.png")
    return {"config": config, "traces": traces, "results": results}


if __name__ == "__main__":
    main()
