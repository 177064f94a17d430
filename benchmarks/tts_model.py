"""A tiny TTS-like model on synthetic data, trained with one loss-weighting strategy.

Shared by ``benchmarks.stability`` and ``benchmarks.demo``. Everything is a pure function of its
seeds, so a run is reproducible bit for bit on the same machine and software.

The task: a sentence of ``TOKENS`` tokens from a vocabulary of ``VOCAB`` "phonemes" becomes a
sequence of mel-like frames. Each phoneme has a fixed spectral template and a typical duration
(1 to 3 frames, jittered by one frame per occurrence); the target frames are the templates
repeated for each token's duration, smoothed, plus noise; frames after the end are padding.

The model (Flax linen), Tacotron-like but parallel thanks to teacher forcing:

- an encoder: token and position embeddings, one tanh layer;
- a duration predictor: a linear head predicting each token's log duration;
- a decoder: queries built from the previous target frame and the frame position attend over
  the encoder outputs (dot-product attention), and an MLP maps the context to a mel frame and a
  stop-token logit.

Loss terms and the seed's default weights (``SEED_CODE_FACTS.md``):
``mel`` (2.5) masked L1 + L2 of the frames, ``stop`` (1.0) stop-token BCE, ``attention`` (0.1)
the guided-attention loss of Tachibana et al. (2017), ``duration`` (0.1) MSE of log durations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import adaptive_optax as ao

BASE_WEIGHTS = {"mel": 2.5, "stop": 1.0, "attention": 0.1, "duration": 0.1}
TERMS = tuple(BASE_WEIGHTS)

FLOOR = 0.4  # the lower bound of the adaptive controllers, a factor of the base weight
# The best fixed mel weight of ``python -m benchmarks.stability --sweep-mel`` (fixed weights,
# calibration seeds, the comfortable learning rate, lowest median held-out mel loss, of 0.5, 1,
# 1.5, 2.5 and 4: ``results/stability_sweep_mel.md``). It is the floor: best_fixed and
# fixed_floor train alike.
BEST_FIXED_MEL = 1.0
# Fixed-weight strategies: the mel weight each trains with (the other terms keep their base).
FIXED_MEL = {
    "fixed": BASE_WEIGHTS["mel"],  # the seed's weights
    "fixed_floor": FLOOR * BASE_WEIGHTS["mel"],  # the floor the adaptive controllers reach
    "best_fixed": BEST_FIXED_MEL,
}
SPIKE_THRESHOLD = 3.0  # the spike guard of the seed and relative strategies
SPIKE_FACTOR = 0.5

VOCAB = 12
TOKENS = 6
MAX_DURATION = 4
FRAMES = TOKENS * MAX_DURATION
MELS = 8
BATCH = 8
WIDTH = 16

TASK_SEED = 0  # the phoneme templates and durations: the same task for every seed


class Batch(NamedTuple):
    tokens: jax.Array  # (B, TOKENS) int32
    durations: jax.Array  # (B, TOKENS) float32, >= 1 frames
    mel: jax.Array  # (B, FRAMES, MELS)
    stop: jax.Array  # (B, FRAMES): 1 from the last real frame on
    mask: jax.Array  # (B, FRAMES): 1 on real frames


def task() -> tuple[jax.Array, jax.Array]:
    """The fixed phoneme inventory: spectral templates (VOCAB, MELS) and typical durations."""
    k1, k2 = jax.random.split(jax.random.key(TASK_SEED))
    templates = jax.random.normal(k1, (VOCAB, MELS))
    typical = jax.random.randint(k2, (VOCAB,), 1, MAX_DURATION)  # 1 .. MAX_DURATION - 1
    return templates, typical


def make_batch(key: jax.Array, batch: int = BATCH) -> Batch:
    """One batch of synthetic sentences and their target frames."""
    templates, typical = task()
    k_tok, k_dur, k_noise = jax.random.split(key, 3)
    tokens = jax.random.randint(k_tok, (batch, TOKENS), 0, VOCAB)
    jitter = jax.random.randint(k_dur, (batch, TOKENS), -1, 2)
    durations = jnp.clip(typical[tokens] + jitter, 1, MAX_DURATION)
    ends = jnp.cumsum(durations, axis=1)  # (B, TOKENS)
    frame = jnp.arange(FRAMES)
    # token index of every frame: the number of token ends at or before it
    index = jnp.sum(frame[None, :, None] >= ends[:, None, :], axis=-1)  # (B, FRAMES)
    length = ends[:, -1]
    mask = (frame[None, :] < length[:, None]).astype(jnp.float32)
    index = jnp.minimum(index, TOKENS - 1)
    clean = templates[jnp.take_along_axis(tokens, index, axis=1)]  # (B, FRAMES, MELS)
    smooth = 0.6 * clean + 0.2 * jnp.roll(clean, 1, axis=1) + 0.2 * jnp.roll(clean, -1, axis=1)
    mel = (smooth + 0.1 * jax.random.normal(k_noise, clean.shape)) * mask[..., None]
    stop = (frame[None, :] >= length[:, None] - 1).astype(jnp.float32)
    return Batch(tokens, durations.astype(jnp.float32), mel, stop, mask)


class TinyTTS(nn.Module):
    """Encoder, duration predictor, attention decoder with a mel head and a stop head."""

    width: int = WIDTH

    @nn.compact
    def __call__(self, tokens: jax.Array, prev_mel: jax.Array):
        d = self.width
        pos_tok = self.param("pos_tok", nn.initializers.normal(0.1), (TOKENS, d))
        pos_frame = self.param("pos_frame", nn.initializers.normal(0.1), (FRAMES, d))
        x = nn.Embed(VOCAB, d)(tokens) + pos_tok
        enc = jnp.tanh(nn.Dense(d)(x))  # (B, TOKENS, d)
        log_duration = nn.Dense(1)(enc)[..., 0]
        q = nn.relu(
            nn.Dense(d)(
                jnp.concatenate(
                    [prev_mel, jnp.broadcast_to(pos_frame, prev_mel.shape[:-1] + (d,))], axis=-1
                )
            )
        )
        q = nn.Dense(d)(q)
        k = nn.Dense(d)(enc)
        scores = jnp.einsum("bfd,btd->bft", q, k) / jnp.sqrt(d)
        attention = jax.nn.softmax(scores, axis=-1)  # (B, FRAMES, TOKENS)
        context = jnp.einsum("bft,btd->bfd", attention, enc)
        h = nn.relu(nn.Dense(2 * d)(jnp.concatenate([context, q], axis=-1)))
        mel = nn.Dense(MELS)(h)
        stop_logit = nn.Dense(1)(h)[..., 0]
        return mel, stop_logit, attention, log_duration


MODEL = TinyTTS()


def _guide(mask: jax.Array, g: float = 0.2) -> jax.Array:
    """Guided-attention penalty W[b, f, t] = 1 - exp(-(t/N - f/T_b)^2 / (2 g^2))."""
    length = jnp.maximum(mask.sum(axis=1), 1.0)  # (B,)
    f = jnp.arange(FRAMES)[None, :, None] / length[:, None, None]
    t = jnp.arange(TOKENS)[None, None, :] / TOKENS
    return 1.0 - jnp.exp(-((t - f) ** 2) / (2 * g**2))


def init_params(key: jax.Array) -> Any:
    """Model parameters for one seed."""
    batch = make_batch(jax.random.key(1), 1)
    return MODEL.init(key, batch.tokens, batch.mel)


def losses_of(params: Any, batch: Batch) -> dict[str, jax.Array]:
    """The four loss terms (unweighted scalars) of one batch."""
    prev = jnp.pad(batch.mel, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    mel, stop_logit, attention, log_duration = MODEL.apply(params, batch.tokens, prev)
    frames = jnp.maximum(batch.mask.sum(), 1.0)
    diff = (mel - batch.mel) * batch.mask[..., None]
    mel_loss = (jnp.abs(diff).sum() + jnp.square(diff).sum()) / (frames * MELS)
    stop_loss = optax.sigmoid_binary_cross_entropy(stop_logit, batch.stop).mean()
    attention_loss = (attention * _guide(batch.mask) * batch.mask[..., None]).sum() / frames
    duration_loss = jnp.mean(jnp.square(log_duration - jnp.log(batch.durations)))
    return {
        "mel": mel_loss,
        "stop": stop_loss,
        "attention": attention_loss,
        "duration": duration_loss,
    }


def make_weighting(
    strategy: str,
    *,
    spike_threshold: Any = SPIKE_THRESHOLD,
    spike_factor: Any = SPIKE_FACTOR,
) -> ao.LossWeighting | None:
    """The weighting of a strategy; None for fixed weights. Only the mel weight adapts.

    ``seed`` is the seed's rule under every guard of the library, spike guard included (today's
    ``ao.stable_weights``); ``relative`` is ``ao.relative_ratio_rule`` under the same guards.
    ``spike_threshold`` and ``spike_factor`` (may be traced) set their spike guard.
    """
    if strategy in FIXED_MEL:
        return None
    if strategy == "legacy":
        return ao.legacy_weights(BASE_WEIGHTS, adapt="mel")
    if strategy == "unguarded":
        return ao.unguarded_weights(BASE_WEIGHTS, adapt="mel")
    spike = dict(spike_threshold=spike_threshold, spike_factor=spike_factor)
    if strategy == "seed":
        return ao.guarded(ao.loss_ratio_rule(), BASE_WEIGHTS, adapt="mel", **spike)
    if strategy == "relative":
        return ao.guarded(ao.relative_ratio_rule(), BASE_WEIGHTS, adapt="mel", **spike)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


STRATEGIES = ("fixed", "fixed_floor", "best_fixed", "legacy", "unguarded", "seed", "relative")
ADAPTIVE = ("seed", "relative")  # the candidates for the library's default

OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "adam": lambda lr: optax.adam(lr),
    "sgd": lambda lr: optax.sgd(lr, momentum=0.9),
}


class Trace(NamedTuple):
    """Per-step record of one run (leading axis: steps)."""

    losses: dict[str, jax.Array]  # the unweighted loss terms
    mel_weight: jax.Array  # the mel weight that weighted the step's loss


class Result(NamedTuple):
    """The outcome of one run."""

    finished: jax.Array  # bool: every step's total loss and the final parameters finite
    first_nonfinite: jax.Array  # int32: first step with a non-finite total loss, or -1
    eval_mel: jax.Array  # mel loss (L1 + L2) on the held-out batch with the final parameters
    adjustments: jax.Array  # int32: adjustments of the mel weight (spike cuts not included)
    spikes: jax.Array  # int32: spikes of the mel loss or gradient norm (each cuts the weight)
    nonfinite_inputs: jax.Array  # int32: non-finite losses the weighting saw and skipped
    rollbacks: jax.Array  # int32: automatic rollbacks of the mel weight
    trace: Trace


DATASET_SIZE = 512
EVAL_SIZE = 64


@jax.jit
def make_dataset() -> tuple[Batch, Batch]:
    """The training set (``DATASET_SIZE`` sentences) and the held-out batch: fixed, one task."""
    return (
        make_batch(jax.random.key(TASK_SEED + 1), DATASET_SIZE),
        make_batch(jax.random.key(TASK_SEED + 2), EVAL_SIZE),
    )


@functools.partial(jax.jit, static_argnums=1)
def seed_inputs(seeds: jax.Array, steps: int) -> tuple[Any, jax.Array]:
    """Initial parameters and batch indices ``(steps, BATCH)`` for each seed (leading axis)."""

    def one(seed):
        init_key, order_key = jax.random.split(jax.random.key(seed))
        indices = jax.random.randint(order_key, (steps, BATCH), 0, DATASET_SIZE)
        return init_params(init_key), indices

    return jax.vmap(one)(seeds)


def train(
    strategy: str,
    optimizer: str,
    learning_rate: jax.Array,
    params: Any,
    dataset: Batch,
    held_out: Batch,
    indices: jax.Array,
    *,
    mel_weight: Any = None,
    spike_threshold: Any = SPIKE_THRESHOLD,
    spike_factor: Any = SPIKE_FACTOR,
) -> Result:
    """Trains one model with one strategy; pure and jittable (``vmap`` over seeds or settings).

    The step is plain optax (no ``ao.apply_if_finite``): a non-finite loss reaches the
    parameters, so that what keeps a run finite is the weighting alone.

    Args:
      strategy: a name from ``STRATEGIES`` (static).
      optimizer: a key of ``OPTIMIZERS`` (static).
      learning_rate: a scalar, may be traced.
      params: the initial parameters.
      dataset: the training sentences.
      held_out: the batch on which the final mel loss is measured.
      indices: ``(steps, BATCH)`` indices into ``dataset``, one row per step.
      mel_weight: fixed-weight strategies only: the mel weight, instead of the strategy's
        (may be traced; the mel-weight sweep).
      spike_threshold, spike_factor: the spike guard of ``seed`` and ``relative`` (may be
        traced); ignored by the other strategies.

    Returns:
      A :class:`Result`.
    """
    weighting = make_weighting(strategy, spike_threshold=spike_threshold, spike_factor=spike_factor)
    if weighting is not None and mel_weight is not None:
        raise ValueError(f"mel_weight is for fixed-weight strategies, not {strategy!r}")
    tx = OPTIMIZERS[optimizer](learning_rate)
    base = {name: jnp.float32(w) for name, w in BASE_WEIGHTS.items()}
    if weighting is None:
        base["mel"] = jnp.asarray(
            FIXED_MEL[strategy] if mel_weight is None else mel_weight, jnp.float32
        )

    def step(carry, rows):
        params, opt_state, weight_state, first_bad, i = carry
        batch = jax.tree.map(lambda x: x[rows], dataset)
        weights = weight_state.weights if weighting is not None else base

        def total(params):
            losses = losses_of(params, batch)
            return ao.weighted_sum(losses, weights), losses

        (loss, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
        if weighting is not None:
            _, weight_state = weighting.update(
                losses, weight_state, grad_norms=optax.tree.norm(grads)
            )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(loss), i, first_bad)
        carry = (params, opt_state, weight_state, first_bad, i + 1)
        return carry, Trace(losses, weights["mel"])

    weight_state = weighting.init() if weighting is not None else None
    carry = (params, tx.init(params), weight_state, jnp.int32(-1), jnp.int32(0))
    (params, _, weight_state, first_bad, _), trace = jax.lax.scan(step, carry, indices)

    params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    zero = jnp.int32(0)
    counts = (zero, zero, zero, zero)
    if weighting is not None:
        m = ao.metrics(weight_state)
        counts = (m["adjustments/mel"], m["spikes/mel"], m["nonfinite/mel"], m["rollbacks/mel"])
    return Result(
        finished=(first_bad < 0) & params_finite,
        first_nonfinite=first_bad,
        eval_mel=losses_of(params, held_out)["mel"],
        adjustments=counts[0],
        spikes=counts[1],
        nonfinite_inputs=counts[2],
        rollbacks=counts[3],
        trace=trace,
    )
