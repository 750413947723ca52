"""bench/make_espeak_corpus.py without espeak-ng: the speaker plan and its split by voice
variant, file names, the audio path (resampling, trimming, padding), and a whole corpus
built with a stand-in synthesizer that ``dotsim prepare``'s reader accepts."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import make_espeak_corpus as mec  # noqa: E402

from workers.constants import CLIP_SAMPLES, SAMPLE_RATE, SPLITS  # noqa: E402
from workers.corpus import SPEECH_COMMANDS_FILE, speech_commands_chunks  # noqa: E402


def test_default_plan_is_the_synthetic_corpus_shape_split_by_variant():
    people = mec.plan_speakers(mec.ACCENTS, mec.VARIANTS, (48, 8, 8), seed=0)
    by_split = {s: [p for p in people if p.split == s] for s in SPLITS}
    assert [len(by_split[s]) for s in SPLITS] == [48, 8, 8]
    assert len({p.id for p in people}) == 64
    variants = {s: {p.variant for p in by_split[s]} for s in SPLITS}
    assert [len(variants[s]) for s in SPLITS] == [18, 3, 3]
    # a voice variant is in one split only: held-out voices are never trained on
    assert not (variants["train"] & variants["validation"])
    assert not (variants["train"] & variants["test"])
    assert not (variants["validation"] & variants["test"])
    for s in SPLITS:  # every accent in every split, evenly
        counts = Counter(p.accent for p in by_split[s])
        assert set(counts) == set(mec.ACCENTS) and len(set(counts.values())) == 1
    for p in people:
        assert SPEECH_COMMANDS_FILE.match(f"{p.id}_nohash_0.wav")
        assert mec.RATE_WPM[0] <= p.rate <= mec.RATE_WPM[1]
        assert mec.PITCH[0] <= p.pitch <= mec.PITCH[1]
    assert 35 * 64 * 2 == 4480  # the default corpus: as many clips as the synthetic one


def test_plan_is_seeded_and_pairs_never_repeat():
    a = mec.plan_speakers(mec.ACCENTS, mec.VARIANTS, seed=1)
    assert a == mec.plan_speakers(mec.ACCENTS, mec.VARIANTS, seed=1)
    b = mec.plan_speakers(mec.ACCENTS, mec.VARIANTS, seed=2)
    assert [p.id for p in a] == [p.id for p in b]  # the seed moves rates and pitches only
    assert [p.rate for p in a] != [p.rate for p in b]
    # train: all 2 variants x 4 accents, none twice, though 2 and 4 share a factor
    people = mec.plan_speakers(["a", "b", "c", "d"], ["v1", "v2", "v3", "v4", "v5", "v6"],
                               (8, 4, 4))
    train = [(p.accent, p.variant) for p in people if p.split == "train"]
    assert len(set(train)) == len(train) == 8
    with pytest.raises(mec.CorpusError, match="train needs 5 speakers"):
        mec.plan_speakers(["a"], ["v1", "v2", "v3"], (5, 1, 1))
    with pytest.raises(mec.CorpusError, match="own"):
        mec.plan_speakers(["a"], ["v1", "v2"], (1, 1, 1))


def test_names_fit_the_speech_commands_layout():
    assert mec.speaker_id("en-gb-x-rp", "f3") == "en-gb-x-rp.f3"
    assert mec.speaker_id("en-us", "Mr serious") == "en-us.mr-serious"
    assert mec.speaker_id("en", "fast_test") == "en.fast-test"  # no "_" in a speaker
    assert mec.clip_path("yes", "en-us.m1", 1) == "yes/en-us.m1_nohash_1.wav"
    with pytest.raises(mec.CorpusError):
        mec.clip_path("yes", "bad_id", 0)


def test_espeak_command_jitters_rate_and_pitch_per_clip():
    speaker = mec.plan_speakers(mec.ACCENTS, mec.VARIANTS)[0]
    clips = [mec.Clip("yes", 33, speaker, n) for n in range(2)]
    argvs = [mec.espeak_argv("espeak-ng", c, mec.clip_rng(0, c)) for c in clips]
    assert argvs[0][:3] == ["espeak-ng", "-v", speaker.voice] and argvs[0][-1] == "yes"
    assert argvs[0] != argvs[1]  # repeats differ
    assert argvs[0] == mec.espeak_argv("espeak-ng", clips[0], mec.clip_rng(0, clips[0]))
    faster = mec.espeak_argv("espeak-ng", clips[0], mec.clip_rng(0, clips[0]), speedup=1.2)
    assert int(faster[4]) > int(argvs[0][4])


def _word(seconds: float, rate: int = mec.ESPEAK_RATE) -> np.ndarray:
    """A stand-in for espeak-ng's output: 50 ms silence, a tone, 100 ms silence."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 220 * t) * np.hanning(t.size)
    return np.concatenate([np.zeros(rate // 20), tone, np.zeros(rate // 10)]).astype(np.float32)


def test_audio_is_resampled_trimmed_and_fitted_to_one_second():
    wave = mec.to_16k(_word(0.5), mec.ESPEAK_RATE)
    assert wave.dtype == np.float32
    assert abs(wave.size - 0.65 * SAMPLE_RATE) <= 2
    word = mec.trim_silence(wave)
    assert 0.4 * SAMPLE_RATE < word.size < 0.5 * SAMPLE_RATE  # the Hann ends fall under -40 dB
    stereo = np.stack([_word(0.5), _word(0.5)], axis=1)
    np.testing.assert_allclose(mec.to_16k(stereo, mec.ESPEAK_RATE), wave, atol=1e-6)

    rng = np.random.default_rng(0)
    clean = mec.fit_clip(word, rng, noise_share=0.0)
    assert clean.shape == (CLIP_SAMPLES,) and clean.dtype == np.float32
    assert 0.9 * 10 ** (mec.GAIN_DB[0] / 20) - 1e-6 <= np.abs(clean).max() <= 0.9 + 1e-6
    assert (clean != 0).sum() <= word.size  # silence around the word
    noisy = mec.fit_clip(word, np.random.default_rng(0), noise_share=1.0)
    assert (noisy != 0).sum() > 0.99 * CLIP_SAMPLES
    long = mec.fit_clip(mec.trim_silence(mec.to_16k(_word(1.5), mec.ESPEAK_RATE)), rng,
                        noise_share=0.0)
    assert long.shape == (CLIP_SAMPLES,)  # trimmed at the end
    with pytest.raises(mec.CorpusError, match="silence"):
        mec.fit_clip(np.zeros(100, dtype=np.float32), rng)


def fake_espeak(argv: list[str]) -> tuple[np.ndarray, int]:
    """Speaks a word for (letters x 9 / words-per-minute) seconds: "backward" at 60 wpm is
    1.2 s, too long, so it is spoken again faster."""
    rate = int(argv[argv.index("-s") + 1])
    return _word(len(argv[-1]) * 9 / rate), mec.ESPEAK_RATE


def test_a_built_corpus_is_what_dotsim_prepare_reads(tmp_path, monkeypatch):
    words = ["backward", "go", "no", "yes"]
    calls = []

    def synthesize(argv):
        calls.append(argv)
        return fake_espeak(argv)

    monkeypatch.setattr(mec, "RATE_WPM", (60.0, 60.0))  # "backward" needs a speed-up
    out = tmp_path / "corpus"
    lines = []
    summary = mec.build(out, words=words, variants=["m1", "f1", "m2", "f2"],
                        speakers=(2, 1, 1), repeats=2, jobs=2, synthesize=synthesize,
                        log=lines.append)
    assert summary["clips"] == {"train": 16, "validation": 8, "test": 8}
    assert summary["sped_up_clips"] == 8  # each speaker's two "backward"s
    assert lines and lines[-1].startswith("[32/32] 100%")
    assert {a[2].split("+")[1] for a in calls} == {"m1", "f1", "m2", "f2"}
    assert not list(tmp_path.glob(".corpus.tmp-*"))  # renamed into place

    labels, chunks = speech_commands_chunks(out, size=256)
    assert labels == sorted(words)
    speakers = {s: {sp for c in chunks if c.split == s for sp in c.speakers} for s in SPLITS}
    assert [len(speakers[s]) for s in SPLITS] == [2, 1, 1]
    assert not (speakers["train"] & (speakers["validation"] | speakers["test"]))
    assert speakers["validation"].isdisjoint(speakers["test"])
    assert sum(len(c.labels) for c in chunks) == 32
    wave, rate = soundfile.read(out / "yes" / "en-gb.m1_nohash_1.wav", dtype="float32")
    assert rate == SAMPLE_RATE and wave.shape == (CLIP_SAMPLES,)

    again = tmp_path / "again"  # a seed gives the same corpus
    mec.build(again, words=words, variants=["m1", "f1", "m2", "f2"], speakers=(2, 1, 1),
              repeats=2, synthesize=fake_espeak, log=lambda line: None)
    for rel in ("go/en-gb.m1_nohash_0.wav", "backward/en-gb.f2_nohash_1.wav"):
        assert (out / rel).read_bytes() == (again / rel).read_bytes()
    with pytest.raises(mec.CorpusError, match="exists"):
        mec.build(out, words=words, synthesize=fake_espeak)


def test_without_espeak_it_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng here
    with pytest.raises(mec.CorpusError, match="apt-get install espeak-ng"):
        mec.find_espeak()
    assert mec.main(["--out", str(tmp_path / "corpus")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: espeak-ng is not installed") and "\n" == err[-1]
    assert not (tmp_path / "corpus").exists()


def test_prepare_command_runs_in_process_by_default():
    argv = mec.prepare_argv(Path("/data/raw"), "/data/prepared")
    assert argv[1:] == ["prepare", "/data/raw", "--out", "/data/prepared", "--no-ray"]
    assert mec.prepare_argv(Path("r"), "p", ray=True, overwrite=True)[-2:] == [
        "--overwrite", "--ray"]
