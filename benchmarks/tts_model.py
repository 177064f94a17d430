"""A tiny TTS-like model on synthetic data: the ``tts_sgd`` and ``tts_adam`` problems of the suite.

Used by ``benchmarks.problems`` (and through it ``benchmarks.demo``). Everything is a pure
function of its seeds, so a run is reproducible bit for bit on the same machine and software.

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

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

BASE_WEIGHTS = {"mel": 2.5, "stop": 1.0, "attention": 0.1, "duration": 0.1}
TERMS = tuple(BASE_WEIGHTS)

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


DATASET_SIZE = 512
EVAL_SIZE = 64


@jax.jit
def make_dataset() -> tuple[Batch, Batch]:
    """The training set (``DATASET_SIZE`` sentences) and the held-out batch: fixed, one task."""
    return (
        make_batch(jax.random.key(TASK_SEED + 1), DATASET_SIZE),
        make_batch(jax.random.key(TASK_SEED + 2), EVAL_SIZE),
    )


@jax.jit
def make_validation() -> Batch:
    """The validation batch (``EVAL_SIZE`` sentences, a draw apart from the held-out test batch).

    The suite selects settings on it and reports on the held-out batch of :func:`make_dataset`.
    """
    return make_batch(jax.random.key(TASK_SEED + 3), EVAL_SIZE)
