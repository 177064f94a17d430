"""The ``speech`` problem's model: a small Tacotron-like TTS model on eSpeak NG speech.

Teacher-forced, so every decoder step runs in parallel (as ``benchmarks/tts_model.py``, whose
conventions and four loss terms it keeps), with a reduction factor of ``R`` frames per step:

- an encoder: phoneme and position embeddings, three 1-D convolutions (kernel 3) with ReLU and
  layer norm, where most parameters live (it runs over the phonemes, not the frames);
- a duration predictor: a convolution (kernel 3) and a linear head, each phoneme's log(1 + frames);
- a decoder: a prenet over the previous step's ``R`` frames, queries from it and the step's
  position, dot-product attention over the encoder outputs, and an MLP to ``R`` mel frames and
  ``R`` stop-token logits.

Loss terms and the seed's base weights: ``mel`` (2.5) masked L1 + L2 of the normalised log-mel
frames, ``stop`` (1.0) stop-token BCE on the real frames, ``attention`` (0.1) the guided-attention
loss of Tachibana et al. (2017) on the (decoder step x phoneme) matrix, ``duration`` (0.1) MSE
of log(1 + frames) on the real phonemes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

BASE_WEIGHTS = {"mel": 2.5, "stop": 1.0, "attention": 0.1, "duration": 0.1}
TERMS = tuple(BASE_WEIGHTS)
R = 4  # frames per decoder step (Tacotron's reduction factor)
ENCODER_WIDTH = 128
DECODER_WIDTH = 64
HIDDEN = 128
GUIDE_G = 0.2
KERNEL = 3


class Batch(NamedTuple):
    tokens: jax.Array  # (B, T) int32, 0 = padding
    durations: jax.Array  # (B, T) frames
    mel: jax.Array  # (B, F, MELS), zeros after the end
    n_tokens: jax.Array  # (B,)
    n_frames: jax.Array  # (B,)


def to_batches(arrays: dict[str, np.ndarray], split: dict[str, int]) -> dict[str, Batch]:
    """The cached arrays cut into the train / validation / test batches (in the cache's order)."""
    frames = arrays["mel"].shape[1]
    frames_r = -(-frames // R) * R  # padded to a multiple of R
    mel = np.pad(arrays["mel"], ((0, 0), (0, frames_r - frames), (0, 0)))
    full = Batch(
        jnp.asarray(arrays["tokens"]),
        jnp.asarray(arrays["durations"]),
        jnp.asarray(mel),
        jnp.asarray(arrays["n_tokens"]),
        jnp.asarray(arrays["n_frames"]),
    )
    a, b = split["train"], split["train"] + split["validation"]
    return {
        "train": jax.tree.map(lambda x: x[:a], full),
        "validation": jax.tree.map(lambda x: x[a:b], full),
        "test": jax.tree.map(lambda x: x[b:], full),
    }


class SpeechTTS(nn.Module):
    """Encoder, duration predictor, attention decoder with a mel head and a stop head."""

    vocab: int
    max_tokens: int
    steps: int  # decoder steps (frames / R)
    mels: int = 80
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, prev: jax.Array):
        dt = self.dtype
        e, d = ENCODER_WIDTH, DECODER_WIDTH
        token_mask = (tokens > 0)[..., None].astype(dt)
        pos_tok = self.param("pos_tok", nn.initializers.normal(0.1), (self.max_tokens, e))
        x = (nn.Embed(self.vocab, e, dtype=dt)(tokens) + pos_tok.astype(dt)) * token_mask
        for _ in range(3):
            y = nn.Conv(e, (KERNEL,), dtype=dt)(x)
            x = nn.LayerNorm(dtype=dt)(x + nn.relu(y)) * token_mask
        enc = x  # (B, T, e)
        h = nn.relu(nn.Conv(d, (3,), dtype=dt)(enc))
        log_duration = nn.Dense(1, dtype=dt)(h)[..., 0]
        pos_step = self.param("pos_step", nn.initializers.normal(0.1), (self.steps, d))
        p = nn.relu(nn.Dense(d, dtype=dt)(prev))
        p = nn.relu(nn.Dense(d, dtype=dt)(p))
        q = nn.relu(
            nn.Dense(d, dtype=dt)(
                jnp.concatenate([p, jnp.broadcast_to(pos_step, p.shape).astype(dt)], -1)
            )
        )
        q = nn.Dense(d, dtype=dt)(q)
        k = nn.Dense(d, dtype=dt)(enc)
        scores = jnp.einsum("bsd,btd->bst", q, k) / jnp.sqrt(d).astype(dt)
        scores = jnp.where(token_mask[:, None, :, 0] > 0, scores, jnp.finfo(dt).min)
        attention = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(dt)  # (B, S, T)
        context = jnp.einsum("bst,bte->bse", attention, enc)
        h = nn.relu(nn.Dense(HIDDEN, dtype=dt)(jnp.concatenate([context, q], -1)))
        h = nn.relu(nn.Dense(HIDDEN, dtype=dt)(h))
        mel = nn.Dense(R * self.mels, dtype=dt)(h).reshape(h.shape[0], -1, self.mels)
        stop_logit = nn.Dense(R, dtype=dt)(h).reshape(h.shape[0], -1)
        return mel, stop_logit, attention, log_duration


def make_model(vocab: int, batches: dict[str, Batch], dtype: Any = jnp.float32) -> SpeechTTS:
    train = batches["train"]
    return SpeechTTS(
        vocab=vocab,
        max_tokens=train.tokens.shape[1],
        steps=train.mel.shape[1] // R,
        mels=train.mel.shape[2],
        dtype=dtype,
    )


def previous_steps(mel: jax.Array) -> jax.Array:
    """Teacher forcing: each decoder step's input, the previous step's R frames (zeros first)."""
    b, f, m = mel.shape
    grouped = mel.reshape(b, f // R, R * m)
    return jnp.pad(grouped, ((0, 0), (1, 0), (0, 0)))[:, :-1]


def guide(n_tokens: jax.Array, n_steps: jax.Array, steps: int, tokens: int, g: float = GUIDE_G):
    """Guided-attention penalty W[b, s, t] = 1 - exp(-(t/N_b - s/S_b)^2 / (2 g^2))."""
    s = jnp.arange(steps)[None, :, None] / jnp.maximum(n_steps, 1)[:, None, None]
    t = jnp.arange(tokens)[None, None, :] / jnp.maximum(n_tokens, 1)[:, None, None]
    return 1.0 - jnp.exp(-((t - s) ** 2) / (2 * g**2))


def losses_of(model: SpeechTTS, params: Any, batch: Batch) -> dict[str, jax.Array]:
    """The four loss terms (unweighted float32 scalars) of one batch."""
    mel, stop_logit, attention, log_duration = model.apply(
        params, batch.tokens, previous_steps(batch.mel).astype(model.dtype)
    )
    mel, stop_logit = mel.astype(jnp.float32), stop_logit.astype(jnp.float32)
    attention, log_duration = attention.astype(jnp.float32), log_duration.astype(jnp.float32)
    frames_axis = jnp.arange(batch.mel.shape[1])
    frame_mask = (frames_axis[None] < batch.n_frames[:, None]).astype(jnp.float32)
    n_real = jnp.maximum(frame_mask.sum(), 1.0)
    diff = (mel - batch.mel) * frame_mask[..., None]
    mel_loss = (jnp.abs(diff).sum() + jnp.square(diff).sum()) / (n_real * batch.mel.shape[2])
    stop_target = (frames_axis[None] >= batch.n_frames[:, None] - 1).astype(jnp.float32)
    stop_loss = (
        optax.sigmoid_binary_cross_entropy(stop_logit, stop_target) * frame_mask
    ).sum() / n_real
    steps, tokens = attention.shape[1], attention.shape[2]
    n_steps = -(-batch.n_frames // R)
    step_mask = (jnp.arange(steps)[None] < n_steps[:, None]).astype(jnp.float32)
    penalty = guide(batch.n_tokens, n_steps, steps, tokens) * step_mask[..., None]
    attention_loss = (attention * penalty).sum() / jnp.maximum(step_mask.sum(), 1.0)
    token_mask = (batch.tokens > 0).astype(jnp.float32)
    target = jnp.log1p(batch.durations)
    duration_loss = (jnp.square(log_duration - target) * token_mask).sum() / jnp.maximum(
        token_mask.sum(), 1.0
    )
    return {
        "mel": mel_loss,
        "stop": stop_loss,
        "attention": attention_loss,
        "duration": duration_loss,
    }


def init_params(model: SpeechTTS, key: jax.Array, batch: Batch) -> Any:
    return model.init(key, batch.tokens[:1], previous_steps(batch.mel[:1]).astype(model.dtype))


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
