"""The bad-input catalogue: every case exits with 2 and one line on stderr that names the
problem and the fix, never a traceback, and leaves nothing a later command would accept.

Policy (also in `dotsim prepare --help`): a clip that cannot be used (corrupt, truncated,
empty, not audio) stops `prepare` with its name and nothing is written; clips in other
formats (8/24/32-bit, float, other rates, stereo, longer than 1 s) are converted.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from conftest import copy_of
from prepared_damage import damaged_copy

from orchestrator.cli import main
from workers import synth

REPO = Path(__file__).resolve().parents[1]


_copy = copy_of


def _clip(root: Path) -> Path:
    return root / "yes" / "spk000_nohash_0.wav"


# Each case: (name, setup(tmp, speech_commands, small_prepared) -> argv, expected text)
def _source_missing(tmp, sc, prep):
    return ["prepare", str(tmp / "nowhere"), "--out", str(tmp / "out")]


def _source_empty(tmp, sc, prep):
    (tmp / "empty").mkdir()
    return ["prepare", str(tmp / "empty"), "--out", str(tmp / "out")]


def _no_layout(tmp, sc, prep):
    root = tmp / "flat"
    (root / "yes").mkdir(parents=True)
    shutil.copy(_clip(sc), root / "yes" / "spk000_nohash_0.wav")
    return ["prepare", str(root), "--out", str(tmp / "out")]


def _damaged_clip(kind):
    def setup(tmp, sc, prep):
        root = _copy(sc, tmp / "sc")
        clip = _clip(root)
        data = clip.read_bytes()
        if kind == "corrupt":
            clip.write_bytes(b"RIFF" + bytes(range(256)) * 4)
        elif kind == "truncated":
            clip.write_bytes(data[: len(data) // 2])
        elif kind == "empty":
            clip.write_bytes(b"")
        elif kind == "empty_audio":
            soundfile.write(clip, np.zeros(0, np.float32), 16000, subtype="PCM_16")
        elif kind == "not_audio":
            clip.write_text("this is a text file, not audio\n")
        return ["prepare", str(root), "--out", str(tmp / "out")]
    return setup


def _list_names_missing_clip(tmp, sc, prep):
    root = _copy(sc, tmp / "sc")
    with (root / "validation_list.txt").open("a") as f:
        f.write("bed/ghost_nohash_0.wav\n")
    return ["prepare", str(root), "--out", str(tmp / "out")]


def _bad_file_name(tmp, sc, prep):
    root = _copy(sc, tmp / "sc")
    shutil.copy(_clip(root), root / "yes" / "recording.wav")
    return ["prepare", str(root), "--out", str(tmp / "out")]


def _damaged_prepared(kind):
    def setup(tmp, sc, prep):
        copy = damaged_copy(prep, tmp / "prep", kind)
        return ["train", "--data", str(copy), "--storage-path", str(tmp / "runs")]
    return setup


def _train(*options):
    def setup(tmp, sc, prep):
        return ["train", "--data", str(prep), "--storage-path", str(tmp / "runs"), *options]
    return setup


def _class_order(lines, *options):
    def setup(tmp, sc, prep):
        (tmp / "order.txt").write_text("\n".join(lines) + "\n")
        return ["train", "--data", str(prep), "--storage-path", str(tmp / "runs"),
                "--class-order", str(tmp / "order.txt"), *options]
    return setup


WORDS = list(synth.WORDS)


def _cluster_typo(tmp, sc, prep):
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["idle_timeout_minute"] = config.pop("idle_timeout_minutes")
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(config))
    return ["cluster", "up", "--config", str(tmp / "cluster.yaml")]


def _not_a_sweep(command):
    def setup(tmp, sc, prep):
        (tmp / "folder").mkdir()
        if command == "report":
            return ["report", str(tmp / "folder")]
        return ["sweep", "--resume", str(tmp / "folder")]
    return setup


def _out_exists(tmp, sc, prep):
    (tmp / "out").mkdir()
    return ["prepare", "--out", str(tmp / "out")]


CASES = [
    ("source missing", _source_missing, "is not a folder"),
    ("source empty", _source_empty, "has no word folders"),
    ("no Speech Commands layout", _no_layout, "lacks validation_list.txt"),
    ("corrupt WAV", _damaged_clip("corrupt"), "cannot read audio file"),
    ("truncated WAV", _damaged_clip("truncated"), "is truncated"),
    ("empty file", _damaged_clip("empty"), "cannot read audio file"),
    ("WAV without samples", _damaged_clip("empty_audio"), "holds no samples"),
    ("text named .wav", _damaged_clip("not_audio"), "cannot read audio file"),
    ("list names a missing clip", _list_names_missing_clip, "missing on disk"),
    ("file name not <speaker>_nohash_<n>.wav", _bad_file_name, "does not follow"),
    ("prepared folder lacks a shard", _damaged_prepared("missing_shard"), "missing shard"),
    ("shard with a wrong schema", _damaged_prepared("wrong_schema"), "unexpected schema"),
    ("meta.json changed", _damaged_prepared("count_changed"), "meta.json says"),
    ("batch not divisible by workers", _train("--batch-size", "24", "--workers", "4"),
     "do not split evenly over 4 workers"),
    ("batch size zero", _train("--batch-size", "0"), "batch_size must be > 0"),
    ("batch size negative", _train("--batch-size", "-8"), "batch_size must be > 0"),
    ("unknown similarity", _train("--similarity", "dott"), "allowed: cosine, dot, dot-legacy"),
    ("unknown norm", _train("--norm", "zscore"), "allowed: minmax, meanstd"),
    ("unknown scope", _train("--scope", "world"), "allowed: local, global"),
    ("custom similarity that does not import", _train("--similarity", "nomod_xyz:fn"),
     "cannot load similarity"),
    ("--gpu without a GPU", _train("--gpu"), "no CUDA GPU"),
    ("unreachable --address", _train("--address", "127.0.0.1:9"), "cannot reach Ray"),
    ("unreachable --address, no --data: nothing prepared first",
     lambda tmp, sc, prep: ["train", "--address", "127.0.0.1:1"], "cannot reach Ray"),
    ("unreachable --address of a sweep", lambda tmp, sc, prep: ["sweep", "--address",
                                                                 "127.0.0.1:1"],
     "cannot reach Ray"),
    ("cluster.yaml with a typo", _cluster_typo, "idle_timeout_minute"),
    ("report on a folder that is not a sweep", _not_a_sweep("report"),
     "not a dotsim sweep folder"),
    ("resume a folder that is not a sweep", _not_a_sweep("resume"),
     "not a dotsim sweep folder"),
    ("--out exists", _out_exists, "already exists"),
    ("--class-order with an unknown word", _class_order([*WORDS[:34], "banana"], "--protocol",
                                                        "fskil"), "unknown word(s) 'banana'"),
    ("--class-order repeating a word", _class_order([*WORDS, WORDS[0]], "--protocol", "fskil"),
     f"repeats '{WORDS[0]}'"),
    ("--class-order with too few words", _class_order(WORDS[:30], "--protocol", "fskil"),
     "has 30 words; the protocol needs"),
    ("--class-order without the fskil protocol", _class_order(WORDS), "--protocol fskil"),
    ("--protocol that does not exist", _train("--protocol", "fsl"),
     "allowed: standard, fskil"),
    ("a batch of more words than the data has clips for",
     _train("--batch-size", "16", "--clips-per-class", "8"), "lower --batch-size"),
    ("more shots than a new word has training clips",
     _train("--protocol", "fskil", "--batch-size", "32", "--clips-per-class", "2",
            "--shots", "6"), "lower --shots"),
]


@pytest.mark.parametrize("name,setup,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, setup, expected, tmp_path, speech_commands, small_prepared, capsys,
                   monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("RAY_ADDRESS", "DOTSIM_CACHE", "XDG_CACHE_HOME", "DOTSIM_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    argv = setup(tmp_path, speech_commands, small_prepared)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    assert done.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dotsim: error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err + out
    # nothing a later command would accept: no prepared folder, no run folder
    assert not (tmp_path / "out" / "meta.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "home").exists()  # no cache, results or token in HOME


@pytest.mark.parametrize("variant", ["PCM_U8", "PCM_24", "PCM_32", "FLOAT", "8kHz", "stereo",
                                     "2 s long"])
def test_other_formats_are_converted(variant, tmp_path, speech_commands):
    """Formats that can be converted are: the clip reaches the prepared data."""
    from workers.audio import load_wav

    root = _copy(speech_commands, tmp_path / "sc")
    clip = _clip(root)
    wave, rate = soundfile.read(clip, dtype="float32")
    if variant.startswith(("PCM", "FLOAT")):
        soundfile.write(clip, wave, rate, subtype=variant)
    elif variant == "8kHz":
        soundfile.write(clip, wave[::2], 8000, subtype="PCM_16")
    elif variant == "stereo":
        soundfile.write(clip, np.stack([wave, wave], axis=1), rate, subtype="PCM_16")
    else:
        soundfile.write(clip, np.concatenate([wave, wave]), rate, subtype="PCM_16")
    loaded = load_wav(clip)
    assert loaded.shape == (16000,)
    tolerance = {"PCM_U8": 0.02, "8kHz": 0.2}.get(variant, 1e-3)
    if variant != "8kHz":
        assert np.abs(loaded.numpy() - wave).max() < tolerance
    assert main_exit(["prepare", str(root), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "meta.json").is_file()


def main_exit(argv) -> int:
    try:
        main(argv)
    except SystemExit as done:
        return done.code
    return 0
