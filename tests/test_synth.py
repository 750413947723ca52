"""The embedded keyword synthesizer: determinism, layout, and where it puts word and speaker."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from workers import constants, synth

# 35 words x (6, 2, 2) speakers x 1 clip: 350 clips, about a second to make.
SMALL = {"speakers": (6, 2, 2), "clips_per_word_speaker": 1}


@pytest.fixture(scope="module")
def corpus() -> dict[str, synth.Corpus]:
    return synth.make_corpus(seed=3, **SMALL)


def test_words_are_the_speech_commands_v2_vocabulary():
    assert len(synth.WORDS) == 35 == len(set(synth.WORDS))
    assert synth.WORDS[:3] == ("backward", "bed", "bird") and synth.WORDS[-1] == "zero"
    assert list(synth.WORDS) == sorted(synth.WORDS)


def test_recipes_are_distinct_and_share_segments_within_a_family():
    recipes = synth.word_recipes()
    assert len(recipes) == len(synth.WORDS)
    assert len({tuple((s.kind, s.name) for s in r) for r in recipes}) == len(recipes)
    for start in range(0, len(recipes), synth.FAMILY_SIZE):
        family = recipes[start : start + synth.FAMILY_SIZE]
        # The same segments in another order: a time average cannot tell members apart.
        assert len({tuple(sorted(s.name for s in r)) for r in family}) == 1
    for recipe in recipes:
        assert {s.kind for s in recipe} == {"vowel", "burst"}
        assert all(s.name in (synth.VOWELS if s.kind == "vowel" else synth.BURSTS) for s in recipe)


def test_speakers_are_deterministic_and_in_range():
    speakers = synth.make_speakers(50, seed=1)
    assert speakers == synth.make_speakers(50, seed=1)
    assert speakers != synth.make_speakers(50, seed=2)
    assert [s.id for s in speakers[:2]] == ["spk000", "spk001"]
    for s in speakers:
        assert 80 <= s.f0 <= 250 and 0.85 <= s.formant_scale <= 1.2
        assert 0 <= s.breathiness < 1 and 0.8 <= s.speed <= 1.25


def test_synthesize_gives_one_second_float32_peak_normalised():
    speaker = synth.make_speakers(1, seed=0)[0]
    wave = synth.synthesize(7, speaker, np.random.default_rng(0))
    assert wave.shape == (constants.CLIP_SAMPLES,) and wave.dtype == np.float32
    assert np.isfinite(wave).all() and 0.05 < np.abs(wave).max() <= 0.9 + 1e-6
    with pytest.raises(ValueError, match="word_index"):
        synth.synthesize(35, speaker, np.random.default_rng(0))


def test_batch_equals_clip_by_clip():
    speakers = synth.make_speakers(3, seed=0)
    words = [0, 17, 34]
    batch = synth.synthesize_batch(words, speakers, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    single = np.stack([synth.synthesize(w, s, rng) for w, s in zip(words, speakers, strict=True)])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_corpus_shapes_dtypes_and_range(corpus):
    for split, count in zip(constants.SPLITS, SMALL["speakers"], strict=True):
        c = corpus[split]
        n = count * len(synth.WORDS)
        assert c.waves.shape == (n, constants.CLIP_SAMPLES) and c.waves.dtype == np.float32
        assert c.labels.shape == (n,) and c.labels.dtype == np.int64
        assert len(c.speakers) == n == len(c)
        assert np.isfinite(c.waves).all() and np.abs(c.waves).max() <= 0.9 + 1e-6
        # Level varies per clip (gain up to -20 dB), but no clip is silent.
        assert np.abs(c.waves).max(axis=1).min() > 0.08


def test_corpus_is_split_by_speaker_with_every_word_in_every_split(corpus):
    owners = [set(corpus[split].speakers) for split in constants.SPLITS]
    assert [len(o) for o in owners] == list(SMALL["speakers"])
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    for split in constants.SPLITS:
        assert np.array_equal(np.unique(corpus[split].labels), np.arange(len(synth.WORDS)))


def test_corpus_is_deterministic_per_seed(corpus):
    again = synth.make_corpus(seed=3, **SMALL)
    other = synth.make_corpus(seed=4, **SMALL)
    for split in constants.SPLITS:
        assert np.array_equal(corpus[split].waves, again[split].waves)  # bit-identical
        assert np.array_equal(corpus[split].labels, again[split].labels)
        assert list(corpus[split].speakers) == list(again[split].speakers)
        assert not np.allclose(corpus[split].waves, other[split].waves)


def test_write_speech_commands_layout(corpus, tmp_path):
    root = synth.write_speech_commands(tmp_path / "sc", corpus)
    assert (root / "_background_noise_").is_dir()
    assert not any((root / "_background_noise_").iterdir())
    validation = (root / "validation_list.txt").read_text().splitlines()
    testing = (root / "testing_list.txt").read_text().splitlines()
    assert len(validation) == len(corpus["validation"]) and len(testing) == len(corpus["test"])
    wavs = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav"))
    assert len(wavs) == sum(len(c) for c in corpus.values())
    assert set(validation) | set(testing) < set(wavs) and not set(validation) & set(testing)
    assert {w.split("/")[0] for w in wavs} == set(synth.WORDS)
    # Real Speech Commands names: <word>/<speaker>_nohash_<n>.wav, speaker before "_nohash_".
    first = corpus["validation"]
    path = f"{synth.WORDS[first.labels[0]]}/{first.speakers[0]}_nohash_0.wav"
    assert path == validation[0]
    info = soundfile.info(root / path)
    assert (info.samplerate, info.frames, info.channels) == (16_000, constants.CLIP_SAMPLES, 1)
    assert info.subtype == "PCM_16"
    wave, rate = soundfile.read(root / path, dtype="float32")
    np.testing.assert_allclose(wave, first.waves[0], atol=1 / 32768 + 1e-6)


# --- where the word and the speaker live ----------------------------------------------------


def _active(speech: torch.Tensor, within_db: float = 30.0) -> torch.Tensor:
    """(N, frames) mask of the frames whose energy is within ``within_db`` of the clip's peak.

    Half of each clip is silence or background noise, whose level varies from clip to clip;
    probes pool over the spoken part only.
    """
    energy = torch.logsumexp(speech, dim=-1)  # log of the summed mel power
    return energy > energy.max(dim=1, keepdim=True).values - within_db * np.log(10) / 10


def _pool_segments(features: torch.Tensor, active: torch.Tensor, segments: int) -> torch.Tensor:
    """(N, frames, mels) -> (N, segments * mels): means over equal parts of the active span."""
    frames = torch.arange(features.shape[1])
    pooled = []
    for clip, mask in zip(features, active, strict=True):
        spoken = frames[mask]
        edges = torch.linspace(int(spoken[0]), int(spoken[-1]) + 1, segments + 1).round().long()
        parts = zip(edges[:-1], edges[1:], strict=True)
        pooled.append(torch.cat([clip[a : max(b, a + 1)].mean(0) for a, b in parts]))
    return torch.stack(pooled)


def _pool_mean_std(features: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """(N, frames, mels) -> (N, 2 * mels): mean and std over the active frames."""
    weight = active[..., None].to(features.dtype)
    mean = (features * weight).sum(1) / weight.sum(1)
    var = ((features - mean[:, None]).square() * weight).sum(1) / weight.sum(1)
    return torch.cat([mean, var.sqrt()], dim=1)


def _probes(corpus: dict[str, synth.Corpus]) -> dict[str, float]:
    """Linear-probe accuracies of word and speaker from the features of ``corpus``.

    word: fit on the train speakers, scored on the held-out (validation + test) speakers,
    features pooled over 4 parts of the spoken span (so the order of segments counts).
    "word/speech-average" instead pools the whole clip to one mean (order lost).
    speaker: over all speakers, fit on the even word indices, scored on the odd ones,
    features pooled to mean and std over the spoken frames.
    """
    from workers import audio
    from workers.probes import linear_probe_accuracy

    waves = np.concatenate([corpus[s].waves for s in constants.SPLITS])
    words = torch.from_numpy(np.concatenate([corpus[s].labels for s in constants.SPLITS]))
    speakers = np.concatenate([corpus[s].speakers for s in constants.SPLITS])
    features = audio.extract_features(torch.from_numpy(waves))
    active = _active(features["speech"])
    train = torch.from_numpy(np.isin(speakers, corpus["train"].speakers))
    _, speaker_index = np.unique(speakers, return_inverse=True)
    accuracy = {
        "word/speech-average": linear_probe_accuracy(features["speech"].mean(1), words, train),
        "word/speech": linear_probe_accuracy(_pool_segments(features["speech"], active, 4),
                                             words, train),
    }
    for name in ("formant", "residual"):
        pooled = _pool_segments(features[name], active, 4)
        accuracy[f"word/{name}"] = linear_probe_accuracy(pooled, words, train)
        pooled = _pool_mean_std(features[name], active)
        by_speaker = torch.from_numpy(speaker_index)
        accuracy[f"speaker/{name}"] = linear_probe_accuracy(pooled, by_speaker, words % 2 == 0)
    return accuracy


@pytest.fixture(scope="module")
def probes(corpus) -> dict[str, float]:
    # One thread: the tensors are small, and extra threads only add contention (they
    # stall badly on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _probes(corpus)
    finally:
        torch.set_num_threads(threads)


# Over seeds 0-15 of SMALL the margins below were at least: 0.33 (order), 0.33 (word),
# 0.17 (speaker); the asserted ones leave room for that spread (the fixture's seed is fixed).


def test_the_word_is_in_the_order_not_in_the_average_spectrum(probes):
    assert probes["word/speech"] > probes["word/speech-average"] + 0.2, probes
    # Chance is 1/35; the average still names the family of FAMILY_SIZE words.
    assert probes["word/speech-average"] > 0.1, probes


def test_formant_carries_the_word_and_residual_the_speaker(probes):
    assert probes["word/formant"] > probes["word/residual"] + 0.2, probes
    assert probes["speaker/residual"] > probes["speaker/formant"] + 0.1, probes
    # Neither is hopeless: chance is 1/35 for the word and 1/10 for the speaker.
    assert probes["word/formant"] > 0.4 and probes["speaker/residual"] > 0.35, probes
