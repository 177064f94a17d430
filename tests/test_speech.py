"""The speech problem (``benchmarks/speech*.py``): data pipeline, model, training, results.

The eSpeak NG tests synthesise a handful of utterances through the ``espeakng-loader`` wheel
(in the ``test`` and ``speech`` extras); without it they are skipped, with the reason.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaptive_optax as ao
from benchmarks import fingerprint, harness, profiles, speech, speech_data, speech_model

pytestmark = pytest.mark.standard_promotion  # flax and optax promote implicitly

needs_espeak = pytest.mark.skipif(
    not speech_data.available(), reason="eSpeak NG not installed (pip install espeakng-loader)"
)
TEXTS = (
    "The old man found a red box.",
    "My friend packed a long rope after lunch.",
    "Did the singer find some bread?",
    "A small dog sold the map.",
    "The pilot kept the letter today.",
    "Her mother washed the blue cup.",
)


def test_log_mel_of_a_tone_peaks_in_its_band_and_has_the_frame_count():
    t = np.arange(speech_data.SAMPLE_RATE) / speech_data.SAMPLE_RATE
    audio = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    mel = speech_data.log_mel(audio)
    assert mel.shape == (len(audio) // speech_data.HOP + 1, speech_data.MELS)
    assert np.all(np.isfinite(mel))
    filters = speech_data.mel_filters()
    freqs = np.linspace(0, speech_data.SAMPLE_RATE / 2, speech_data.N_FFT // 2 + 1)
    band = int(np.argmax(filters[:, np.argmin(np.abs(freqs - 1000.0))]))
    assert abs(int(np.argmax(mel.mean(0))) - band) <= 1


def test_durations_cover_every_frame_once():
    d = speech_data.durations_in_frames(np.array([11.0, 58.0, 156.0, 300.0, 300.0]), 20)
    assert d.sum() == 20 and np.all(d >= 0)
    assert d[0] == round(58 * speech_data.SAMPLE_RATE / 1000 / speech_data.HOP)


def test_sentence_list_is_the_generator_s():
    assert speech_data.read_sentences() == speech_data.sentences(400)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not speech_data.available():
        pytest.skip("eSpeak NG not installed (pip install espeakng-loader)")
    out = tmp_path_factory.mktemp("speech")
    meta = speech_data.build(out, TEXTS, max_frames=240, splits=(4 / 6, 1 / 6))
    return out, meta


@needs_espeak
def test_espeak_data_pipeline_on_a_handful_of_utterances(built):
    out, meta = built
    arrays, loaded = speech_data.load(out)
    assert loaded["split"] == {"train": 4, "validation": 1, "test": 1}
    n = meta["utterances"]
    assert n == len(TEXTS)
    assert arrays["mel"].shape == (n, 240, speech_data.MELS)
    assert np.all(np.isfinite(arrays["mel"]))
    # every phoneme has a token, the durations in frames sum to the utterance's frames
    assert np.all(arrays["durations"].sum(1) == arrays["n_frames"])
    assert np.all((arrays["tokens"] > 0).sum(1) == arrays["n_tokens"])
    assert np.all(arrays["mel"][0, arrays["n_frames"][0] :] == 0)
    assert 1.0 < meta["seconds_of_speech"] / n < 4.0  # short sentences at eSpeak's rate
    speech_text_phonemes = speech_data.Espeak().synthesize("a red box")[1]
    assert {"r", "b"} <= set(speech_text_phonemes)


def synthetic_arrays(n=6, tokens=12, frames=48, vocab=10, seed=0):
    """Arrays shaped like the cache's, with mel frames that depend on the phonemes."""
    rng = np.random.default_rng(seed)
    n_tokens = rng.integers(6, tokens + 1, n)
    tok = np.zeros((n, tokens), np.int32)
    dur = np.zeros((n, tokens), np.float32)
    mel = np.zeros((n, frames, speech_data.MELS), np.float32)
    templates = rng.normal(size=(vocab + 2, speech_data.MELS)).astype(np.float32)
    n_frames = np.zeros(n, np.int32)
    for i in range(n):
        tok[i, : n_tokens[i]] = rng.integers(2, vocab + 2, n_tokens[i])
        d = rng.integers(1, 4, n_tokens[i])
        dur[i, : n_tokens[i]] = d
        seq = np.repeat(templates[tok[i, : n_tokens[i]]], d, axis=0)[:frames]
        n_frames[i] = len(seq)
        mel[i, : len(seq)] = seq
    arrays = {"tokens": tok, "durations": dur, "mel": mel, "n_tokens": n_tokens}
    return arrays | {"n_frames": n_frames}, vocab + 2


@pytest.fixture(scope="module")
def small():
    arrays, vocab = synthetic_arrays()
    batches = speech_model.to_batches(arrays, {"train": 4, "validation": 1, "test": 1})
    return speech_model.make_model(vocab, batches), batches


def test_the_model_s_size_at_the_cache_s_shapes_is_in_range():
    # 72 tokens, up to 36 phonemes, 240 frames: the cache `benchmarks.speech build` writes
    full = speech_model.SpeechTTS(vocab=72, max_tokens=36, steps=240 // speech_model.R)
    shapes = jax.eval_shape(
        full.init,
        jax.random.key(0),
        jnp.zeros((1, 36), jnp.int32),
        jnp.zeros((1, 240 // speech_model.R, speech_model.R * speech_data.MELS)),
    )
    assert 300_000 <= speech_model.count_params(shapes) <= 1_000_000


def test_four_finite_losses_and_a_few_jitted_adam_steps_lower_their_weighted_sum(small):
    model, batches = small
    train = batches["train"]
    tx = optax.adam(3e-3)

    def total(p):
        losses = speech_model.losses_of(model, p, train)
        return ao.weighted_sum(losses, speech_model.BASE_WEIGHTS), losses

    @jax.jit
    def steps(key):
        params = speech_model.init_params(model, key, train)

        def step(carry, _):
            params, opt = carry
            (loss, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), (loss, losses)

        (params, _), trace = jax.lax.scan(step, (params, tx.init(params)), None, length=8)
        return trace, total(params)[0]

    (totals, losses), final = steps(jax.random.key(0))
    assert set(losses) == set(speech_model.TERMS)
    for term, values in losses.items():
        assert bool(jnp.all(jnp.isfinite(values))) and float(values[0]) > 0, term
    assert float(final) < 0.8 * float(totals[0])


def test_stability_and_scores_follow_the_definition():
    result = {
        "settings": {"collapse": 0.9, "arms": ["fixed base"]},
        "mean_frame_val_mel": 2.0,
        "rates_done": [0.01, 0.1],
        "runs": [
            {"arm": "fixed base", "seed": 1, "rate": 0.01, "finite": True, "best_val_mel": 0.5,
             "test_mel": 0.6},
            {"arm": "fixed base", "seed": 0, "rate": 0.01, "finite": True, "best_val_mel": 0.4,
             "test_mel": 0.5},
            {"arm": "fixed base", "seed": 0, "rate": 0.1, "finite": True, "best_val_mel": 1.9,
             "test_mel": 1.9},
            {"arm": "fixed base", "seed": 1, "rate": 0.1, "finite": False, "best_val_mel": 0.5,
             "test_mel": 0.5},
        ],
    }  # fmt: skip
    assert speech.scores(result, "fixed base", 0.01).tolist() == [0.5, 0.6]
    assert speech.scores(result, "fixed base", 0.1).tolist() == [np.inf, np.inf]
    assert speech.largest_stable_rate(result, "fixed base") == 0.01


def test_the_screen_arms_are_the_screen_s_best_that_weight_losses_only():
    best = profiles.screen_methods("tts_adam")
    assert set(speech.SCREEN_ARMS) <= set(best)
    for arm in speech.SCREEN_ARMS:  # from the base weights, under their recommended guards
        weighting = speech.weighting_of(arm)
        assert weighting is not None and not weighting.needs
        assert dict(weighting.init().weights) == pytest.approx(speech_model.BASE_WEIGHTS)
        # the suite's own arm: the same weight trajectory as its variant on the fingerprint problem
        built = fingerprint.of(lambda p, arm=arm: harness.weighting_of_label(arm, p.base, p.main))
        assert built == fingerprint.of_label(arm)
    with pytest.raises(ValueError, match="no arm 'mgda\\+guards'"):
        harness.weighting_of_label("mgda+guards", dict(speech_model.BASE_WEIGHTS), "mel")


def test_calls_group_the_fixed_arms_with_one_adaptive_arm():
    assert speech.groups_of(speech.ARMS) == [("default", list(speech.ARMS))]
    assert speech.groups_of(["fixed floor"]) == [("default", ["fixed floor"])]
    assert speech.groups_of(["relobralo+guards", "fixed base", "dwa+guards"]) == [
        ("dwa+guards", ["fixed base", "dwa+guards"]),
        ("relobralo+guards", ["relobralo+guards"]),
    ]
    with pytest.raises(ValueError, match="unknown arms \\['pcd'\\]"):
        speech.groups_of(["pcd"])


def test_a_merged_screen_arm_joins_the_json_with_its_own_record(small, tmp_path, monkeypatch):
    model, batches = small
    meta = {"vocab": list(range(10)), "texts": [], "utterances": 6, "seconds_of_speech": 6.0}
    meta |= {"split": {"train": 4, "validation": 1, "test": 1}, "build_s": 0.0}
    meta |= {"max_tokens": 12, "max_frames": 48}
    monkeypatch.setattr(speech, "load_problem", lambda cache, dtype: (model, batches, meta))
    common = dict(seeds=[0], max_steps=50, out=tmp_path)
    first = speech.run(**common, rates=[], command="first")  # its runs written here, untrained
    base_run = {"arm": "fixed base", "seed": 0, "rate": 3e-3, "finite": True, "steps": 50}
    base_run |= {"best_val_mel": 0.5, "test_mel": 0.5, "stopped_early": False}
    base_run |= {"val_history": [0.5], "mel_weight_history": [2.5]}
    first |= {"runs": [base_run], "rates_done": [3e-3]}
    (tmp_path / "speech.json").write_text(json.dumps(first))
    added = speech.run(**common, rates=[3e-3], arms=["dwa+guards"], merge=True, command="added")
    assert added["command"] == "first" and added["settings"] == first["settings"]
    assert speech.arms_of(added) == list(speech.ALL_ARMS[:4])
    (addition,) = added["additions"]
    assert addition["command"] == "added" and addition["rates_done"] == [3e-3]
    (kept, dwa) = added["runs"]
    assert kept == base_run and (dwa["arm"], dwa["seed"], dwa["rate"]) == ("dwa+guards", 0, 3e-3)
    assert dwa["finite"] and dwa["steps"] == 50 and dwa["test_mel"] > 0
    assert "Added: `added`" in speech.report(added)
    with pytest.raises(ValueError, match="max_steps"):
        speech.run(**common | {"max_steps": 100}, rates=[3e-3], arms=["dwa+guards"], merge=True)


RESULTS = ("speech", "speech_fp16")  # float32, and float16 with loss scaling where it was run


def committed(name):
    path = pathlib.Path(f"results/{name}.json")
    if not path.exists():
        pytest.skip(f"{path} not committed")
    return json.loads(path.read_text())


def test_the_page_s_statements_hold_in_the_committed_results():
    """docs/guides/speech.md, "What the runs show"."""
    fp32, fp16 = (speech.summary(committed(name)) for name in RESULTS)
    assert fp32["largest_stable_rate"] == dict.fromkeys(speech.ALL_ARMS, 0.03)
    assert fp16["largest_stable_rate"] == dict.fromkeys(speech.FIXED_ARMS, 0.01) | dict.fromkeys(
        ("default", *speech.SCREEN_ARMS), 0.03
    )
    cells = {(c["arm"], c["rate"]): c for c in fp16["cells"]}
    for arm in speech.ALL_ARMS:
        lost = (1, 1) if arm in speech.FIXED_ARMS else (0, 0)
        assert (5 - cells[arm, 0.03]["stable"], cells[arm, 0.03]["nonfinite"]) == lost, arm
    for summary in (fp32, fp16):
        assert all(c["stable"] < c["seeds"] for c in summary["cells"] if c["rate"] == 0.1)
        assert all(c.get("call") != "worse" for c in summary["cells"])
    confirmation = json.loads(pathlib.Path("results/speech_adam.json").read_text())
    calls = {row["label"]: row["call"] for row in confirmation["rows"]}
    for label in ("base", "stable", *speech.SCREEN_ARMS):
        assert calls[label] == "worse", label


@pytest.mark.parametrize("name", RESULTS)
def test_results_md_is_generated_from_the_json(name):
    result = committed(name)
    assert pathlib.Path(f"results/{name}.md").read_text() == speech.report(result)
    if name == "speech":
        assert speech.docs_block(result) in pathlib.Path("docs/guides/speech.md").read_text()


@pytest.mark.parametrize("name", RESULTS)
def test_results_hold_every_seed_of_every_cell_they_claim(name):
    result = committed(name)
    settings = result["settings"]
    assert len(settings["seeds"]) >= 5
    cells = {(r["arm"], r["rate"]) for r in result["runs"]}
    added = [(add["arms"], add["rates_done"]) for add in result.get("additions", [])]
    assert cells == {
        (a, rate) for arms, rates in [(settings["arms"], result["rates_done"]), *added]
        for a in arms for rate in rates
    }  # fmt: skip
    for arm, rate in cells:
        seeds = sorted(r["seed"] for r in result["runs"] if (r["arm"], r["rate"]) == (arm, rate))
        assert seeds == settings["seeds"]
    assert 300_000 <= result["parameters"] <= 1_000_000
    for run in result["runs"]:
        assert run["steps"] <= settings["max_steps"]
        if run["arm"] in speech.FIXED_ARMS:
            assert set(run["mel_weight_history"]) - {None} == {
                speech.fixed_weights(run["arm"])["mel"]
            }
