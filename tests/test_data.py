"""Prepared data: Parquet shards + meta.json, atomic publication, the Speech Commands
folder path, and the checks that refuse broken folders."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import torch
from conftest import SMALL_CORPUS
from prepared_damage import DAMAGES, damaged_copy

from orchestrator.prepare import prepare
from workers import synth
from workers.corpus import FeatureSettings, speech_commands_chunks
from workers.data import FEATURES, PreparedDataError, PreparedWriter, load_prepared, read_meta


def test_prepared_folder_layout_and_contents(small_prepared):
    meta = json.loads((small_prepared / "meta.json").read_text())
    assert meta["labels"] == list(synth.WORDS)
    assert meta["counts"] == {"train": 140, "validation": 70, "test": 70}
    assert meta["frames"] == 101 and meta["n_mels"] == 40 and meta["sample_rate"] == 16000
    # readable with pyarrow alone
    table = pq.read_table(small_prepared / meta["shards"]["train"][0])
    assert table.column_names == ["label", "speaker", "clip", *FEATURES]
    data = load_prepared(small_prepared)
    for split, count in meta["counts"].items():
        part = data.splits[split]
        assert len(part) == count
        for name in FEATURES:
            assert part.features[name].shape == (count, 101, 40)
            assert torch.isfinite(part.features[name]).all()
    speakers = [set(data.splits[s].speakers) for s in ("train", "validation", "test")]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])


def test_features_match_the_audio_module(small_prepared):
    from workers.audio import extract_features

    corpus = synth.make_corpus(0, **SMALL_CORPUS)
    want = extract_features(torch.from_numpy(corpus["test"].waves[:5]))
    got = load_prepared(small_prepared, splits=("test",)).splits["test"]
    for name in FEATURES:
        torch.testing.assert_close(got.features[name][:5], want[name])


def test_speech_commands_folder_gives_the_same_features(tmp_path):
    corpus = synth.make_corpus(3, speakers=(2, 1, 1), clips_per_word_speaker=1)
    root = synth.write_speech_commands(tmp_path / "sc", corpus)
    (root / "_background_noise_" / "noise.wav").write_bytes(b"ignored")
    summary = prepare(root, tmp_path / "prepared", progress=False)
    assert summary["counts"] == {"train": 70, "validation": 35, "test": 35}
    data = load_prepared(tmp_path / "prepared")
    assert data.labels == sorted(synth.WORDS)
    test = data.splits["test"]
    from workers.audio import extract_features

    # the WAV path quantises to 16 bits; features agree with the in-memory path closely
    first = test.clips[0]
    wave, rate = soundfile.read(root / first, dtype="float32")
    assert rate == 16000
    want = extract_features(torch.from_numpy(wave)[None])
    torch.testing.assert_close(test.features["speech"][:1], want["speech"])
    word = first.split("/")[0]
    assert data.labels[int(test.labels[0])] == word


def test_speech_commands_list_naming_missing_clip_is_an_error(tmp_path):
    corpus = synth.make_corpus(3, speakers=(1, 1, 1), clips_per_word_speaker=1)
    root = synth.write_speech_commands(tmp_path / "sc", corpus)
    with (root / "testing_list.txt").open("a") as f:
        f.write("yes/ghost_nohash_0.wav\n")
    with pytest.raises(ValueError, match="missing on disk, e.g. yes/ghost_nohash_0.wav"):
        speech_commands_chunks(root, size=64)


def test_folder_without_layout_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no word folders"):
        speech_commands_chunks(tmp_path, size=64)
    (tmp_path / "yes").mkdir()
    with pytest.raises(ValueError, match="lacks validation_list.txt"):
        speech_commands_chunks(tmp_path, size=64)


def test_interrupted_prepare_leaves_nothing_loadable(tmp_path):
    out = tmp_path / "out"
    writer = PreparedWriter(out, frames=101, n_mels=40)
    feats = {n: np.zeros((2, 101, 40), np.float32) for n in FEATURES}
    writer.write("train", feats, [0, 1], ["a", "b"], ["x", "y"])
    assert not out.exists()  # nothing at the final name until commit
    with pytest.raises(PreparedDataError):
        read_meta(out)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_failed_prepare_cleans_up(tmp_path):
    corpus = synth.make_corpus(3, speakers=(1, 1, 1), clips_per_word_speaker=1)
    root = synth.write_speech_commands(tmp_path / "sc", corpus)
    (root / "yes" / "spk000_nohash_0.wav").write_bytes(b"RIFF not really audio")
    with pytest.raises(ValueError, match="spk000_nohash_0.wav"):
        prepare(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sc"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_prepared_folder_is_refused(small_prepared, tmp_path, damage):
    copy = damaged_copy(small_prepared, tmp_path / "copy", damage, split="validation")
    with pytest.raises(PreparedDataError, match="prepare"):
        load_prepared(copy)


def test_feature_settings_are_recorded(small_prepared):
    meta = read_meta(small_prepared)
    for key, value in FeatureSettings().to_meta().items():
        assert meta[key] == value


@pytest.mark.ray
def test_prepare_over_ray_tasks_matches_in_process(ray_local, small_prepared, tmp_path):
    prepare(None, tmp_path / "ray", seed=0, progress=False, use_ray=True,
            corpus_sizes=SMALL_CORPUS)
    local = load_prepared(small_prepared)
    remote = load_prepared(tmp_path / "ray")
    for split in ("train", "validation", "test"):
        assert remote.splits[split].clips == local.splits[split].clips
        for name in FEATURES:
            torch.testing.assert_close(remote.splits[split].features[name],
                                       local.splits[split].features[name])
