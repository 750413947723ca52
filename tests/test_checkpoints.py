"""Checkpoint files (workers/checkpoints.py): the manifest that vouches for them, what counts
as damaged, which checkpoint a run falls back to, and the folders Ray never registered;
then one real run whose newest checkpoint is damaged, end to end."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import faults
import pyarrow.fs as pafs
import pytest
import ray.train
import torch
from click.testing import CliRunner
from tiny import tiny_config, tiny_options

from orchestrator.cli import cli
from orchestrator.launch import RECORD_FILE, launch, run_history, run_location
from orchestrator.plan import located
from workers import checkpoints
from workers.checkpoints import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    NAME_PREFIX,
    DamagedCheckpoint,
)
from workers.errors import Reported
from workers.metrics import HISTORY_FILE

HISTORY = [{"epoch": 1, "train_loss": 2.5}, {"epoch": 2, "train_loss": 2.1}]


def _payload(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    # an opaque dict to the module: tensors, plain values, and keys it does not know
    return {"model": {"w": torch.randn(64, 64)}, "epoch": 2, "best_model": None,
            "so_far": {"steps": 3}}


def _written(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    checkpoints.write(folder, _payload(seed), HISTORY)
    return folder


def _truncate(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return len(data) // 3, len(data)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _problems(folder: Path) -> list[str]:
    with pytest.raises(DamagedCheckpoint) as damaged:
        checkpoints.read(folder)
    return damaged.value.problems


# --- one checkpoint ------------------------------------------------------------------


def test_a_written_checkpoint_reads_back_and_its_manifest_vouches_for_every_file(tmp_path):
    folder = _written(tmp_path / "c")
    payload, history = checkpoints.read(folder)
    assert torch.equal(payload["model"]["w"], _payload()["model"]["w"])
    assert payload["so_far"] == {"steps": 3} and history == HISTORY
    manifest = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    assert set(manifest) == {CHECKPOINT_FILE, HISTORY_FILE}
    for name, entry in manifest.items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert sorted(p.name for p in folder.iterdir()) == sorted([*manifest, MANIFEST_FILE])


def test_a_truncated_state_is_damaged_and_never_loaded(tmp_path):
    folder = _written(tmp_path / "c")
    now, was = _truncate(folder / CHECKPOINT_FILE)
    assert _problems(folder) == [f"state.pt: {now / 1e3:.1f} kB of {was / 1e3:.1f} kB, "
                                 "checksum differs"]


def test_a_flipped_byte_is_damage_of_the_same_size(tmp_path):
    folder = _written(tmp_path / "c")
    _flip_byte(folder / CHECKPOINT_FILE)
    assert _problems(folder) == ["state.pt: checksum differs"]


def test_a_file_is_read_for_its_checksum_once_until_it_changes(tmp_path, monkeypatch):
    """A sweep's end and its report check every run's newest checkpoint: an unchanged file
    (same size and modification time) is not read again; a changed one is, and its
    damage is found even when its size stayed."""
    folder = _written(tmp_path / "c")
    reads = []
    real = checkpoints._sha256
    monkeypatch.setattr(checkpoints, "_sha256", lambda fs, path: reads.append(path) or
                        real(fs, path))
    fs = pafs.LocalFileSystem()
    assert checkpoints.damage(fs, str(folder)) == []
    first = len(reads)
    assert first >= 2  # every file of the manifest
    assert checkpoints.damage(fs, str(folder)) == [] and len(reads) == first
    _flip_byte(folder / CHECKPOINT_FILE)
    # changed later: a file's time has the kernel's tick as its grain, and this test is
    # quicker than a tick
    stat = (folder / CHECKPOINT_FILE).stat()
    os.utime(folder / CHECKPOINT_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert checkpoints.damage(fs, str(folder)) == ["state.pt: checksum differs"]
    assert reads[first:] == [str(folder / CHECKPOINT_FILE)]


def test_missing_files_and_an_unreadable_manifest_are_damage(tmp_path):
    folder = _written(tmp_path / "a")
    (folder / HISTORY_FILE).unlink()
    _flip_byte(folder / CHECKPOINT_FILE)
    assert _problems(folder) == ["history.json missing", "state.pt: checksum differs"]
    folder = _written(tmp_path / "b")
    (folder / MANIFEST_FILE).write_text('{"files": {"state.pt": ')  # cut short
    assert _problems(folder) == ["manifest.json unreadable"]


def test_an_older_dotsims_checkpoint_without_a_manifest_counts_when_its_files_are_there(
        tmp_path):
    """A checkpoint without a manifest was written before dotsim wrote manifests: runs and
    sweeps of that time stay readable and resumable. Without a file it must hold it is
    damaged."""
    folder = _written(tmp_path / "old")
    (folder / MANIFEST_FILE).unlink()
    assert checkpoints.read(folder)[1] == HISTORY
    (folder / CHECKPOINT_FILE).unlink()
    assert _problems(folder) == ["state.pt missing"]


def test_checkpoint_folders_are_named_by_dotsim_and_never_twice():
    names = {checkpoints.new_name(3) for _ in range(50)}
    assert len(names) == 50
    assert all(name.startswith(NAME_PREFIX + "e0003-") for name in names)


# --- a run's checkpoints -------------------------------------------------------------


def _run_of(tmp_path: Path, count: int) -> list[ray.train.Checkpoint]:
    """``count`` written checkpoints, oldest first, as Ray Train lists them."""
    return [ray.train.Checkpoint.from_directory(
        _written(tmp_path / f"{NAME_PREFIX}e{i + 1:04d}", seed=i)) for i in range(count)]


def test_the_newest_intact_checkpoint_is_chosen_and_the_damaged_newer_ones_named(tmp_path):
    run = _run_of(tmp_path, 3)
    assert checkpoints.newest_intact(run) == (run[2], [])
    _truncate(Path(run[2].path) / CHECKPOINT_FILE)
    (Path(run[1].path) / HISTORY_FILE).unlink()
    newest, damaged = checkpoints.newest_intact(run)
    assert newest is run[0]
    assert [(name, problems[0].split(":")[0]) for name, problems in damaged] == [
        (checkpoints.name_of(run[2]), "state.pt"),
        (checkpoints.name_of(run[1]), "history.json missing")]
    _flip_byte(Path(run[0].path) / CHECKPOINT_FILE)
    assert checkpoints.newest_intact(run)[0] is None
    assert checkpoints.newest_intact([]) == (None, [])


def test_the_fallback_and_the_failure_are_one_line_each():
    one = [("ck3", ["state.pt: 1.2 MB of 4.8 MB, checksum differs"])]
    assert checkpoints.fallback_line(one, "ck2", 2) == (
        "checkpoint ck3 is damaged (state.pt: 1.2 MB of 4.8 MB, checksum differs); "
        "resuming from ck2 (after epoch 2)")
    two = [*one, ("ck2", ["state.pt: checksum differs", "history.json missing"])]
    line = checkpoints.none_intact_line(two)
    assert line.startswith(
        "checkpoints ck3 (state.pt: 1.2 MB of 4.8 MB, checksum differs) and ck2 "
        "(state.pt: checksum differs; history.json missing) are damaged, and the run has no "
        "intact checkpoint")
    assert "\n" not in line and "--run-name" in line


def test_a_worker_with_no_intact_checkpoint_fails_naming_it(tmp_path):
    """The worker's read: an intact latest checkpoint is read as it is; a damaged one in a
    folder where Ray registered nothing else leaves nothing to fall back to."""
    latest = _run_of(tmp_path, 1)[0]
    said = []
    assert checkpoints.read_newest_intact(latest, say=said.append)[1] == HISTORY
    _truncate(Path(latest.path) / CHECKPOINT_FILE)
    with pytest.raises(DamagedCheckpoint, match="no intact checkpoint") as failed:
        checkpoints.read_newest_intact(latest, say=said.append)
    assert isinstance(failed.value, Reported) and said == []  # exit 1 with its message


def test_only_dotsims_unregistered_checkpoint_folders_are_removed(tmp_path):
    kept = _run_of(tmp_path, 2)
    stray = _written(tmp_path / f"{NAME_PREFIX}e0003-never-registered")
    (tmp_path / "checkpoint_2026-12-03_02-48-08.123456").mkdir()  # not dotsim's name
    (tmp_path / RECORD_FILE).write_text("{}")
    fs = pafs.LocalFileSystem()
    assert checkpoints.remove_unregistered(fs, str(tmp_path), kept) == [stray.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [checkpoints.name_of(c) for c in kept] + ["checkpoint_2026-12-03_02-48-08.123456",
                                                  RECORD_FILE])
    assert checkpoints.remove_unregistered(fs, str(tmp_path / "absent"), []) == []


# --- a real run ----------------------------------------------------------------------

TIMING = {"epoch_seconds", "samples_per_second", "peak_rss_mb"}


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key in set(x) - TIMING:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (key, x, y)
            else:
                assert x[key] == y[key], key


@pytest.mark.ray
@pytest.mark.slow
def test_a_damaged_checkpoint_does_not_end_a_run(ray_local, small_prepared, tmp_path):
    """A run stopped after 2 of 3 epochs (dropout 0, both checkpoints kept). With both
    damaged, `dotsim train` exits 1 with one line naming them, and trains nothing; a
    checkpoint folder Ray never registered is gone. With the older one intact again, the
    same command resumes from it, says so in one line, and ends with the history of an
    uninterrupted run."""
    cfg = located(tiny_config(small_prepared, tmp_path / "runs", epochs=3, dropout=0.0,
                              max_failures=0, run_name="damaged"))
    with pytest.raises(ray.train.TrainingFailedError, match="injected failure"):
        launch(cfg, progress=False, loop=faults.failing_loop(epoch=2))
    run = Path(run_location(cfg))
    result = ray.train.Result.from_path(str(run))
    older, latest = (Path(c.path) for c, _ in result.best_checkpoints)
    assert Path(result.checkpoint.path) == latest and latest.name.startswith(NAME_PREFIX)
    stray = run / f"{NAME_PREFIX}e0002-uploaded-then-ctrl-c"
    shutil.copytree(latest, stray)
    (run / "notes").mkdir()

    def train():
        return CliRunner().invoke(cli, [
            "train", "--data", str(small_prepared), "--storage-path", str(tmp_path / "runs"),
            "--run-name", "damaged", *tiny_options(epochs=3, dropout=0.0), "--json"])

    older_state = (older / CHECKPOINT_FILE).read_bytes()
    now, was = _truncate(latest / CHECKPOINT_FILE)
    _flip_byte(older / CHECKPOINT_FILE)
    refused = train()
    assert refused.exit_code == 1, refused.output
    line, = refused.stderr.splitlines()  # CliRunner prints Click's "Error: " before it
    assert line.endswith(
        f": checkpoints {latest.name} (state.pt: {now / 1e3:.1f} kB of {was / 1e3:.1f} "
        f"kB, checksum differs) and {older.name} (state.pt: checksum differs) are damaged, "
        "and the run has no intact checkpoint to resume from: start it anew with another "
        "--run-name")
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == sorted(
        [older.name, latest.name, "notes"])  # nothing trained, nothing registered lost

    (older / CHECKPOINT_FILE).write_bytes(older_state)
    assert [h["epoch"] for h in run_history(str(run))] == [1]
    resumed = train()
    assert resumed.exit_code == 0, resumed.output
    said = [line for line in resumed.stderr.splitlines() if latest.name in line]
    assert said == [f"dotsim: checkpoint {latest.name} is damaged (state.pt: "
                    f"{now / 1e3:.1f} kB of {was / 1e3:.1f} kB, checksum differs); "
                    f"resuming from {older.name} (after epoch 1)"]
    launches = json.loads((run / RECORD_FILE).read_text())["launches"]
    assert launches[-1]["epochs_done_before"] == 1
    history = json.loads(resumed.stdout)["history"]
    clean = launch(cfg.replace(run_name="uninterrupted"), progress=False)
    _same_metrics(history, clean["history"])
