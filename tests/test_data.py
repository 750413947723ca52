"""Prepared data: Parquet shards + meta.json, atomic publication, the Speech Commands
folder path, and the checks that refuse broken folders."""

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import torch
from conftest import SMALL_CORPUS, copy_of
from prepared_damage import DAMAGES, damaged_copy
from tiny import tiny_config

from orchestrator.prepare import prepare
from workers import synth
from workers.constants import FEATURES
from workers.corpus import FeatureSettings, speech_commands_chunks
from workers.data import load_prepared
from workers.errors import InputError
from workers.node_cache import node_cache, node_copy
from workers.prepared import (
    PreparedDataError,
    PreparedWriter,
    check_prepared,
    data_fingerprint,
    read_meta,
)


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


def test_speech_commands_folder_gives_the_same_features(tmp_path, speech_commands):
    root = copy_of(speech_commands, tmp_path / "sc")
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


def test_speech_commands_list_naming_missing_clip_is_an_error(tmp_path, speech_commands):
    root = copy_of(speech_commands, tmp_path / "sc")
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


def test_failed_prepare_cleans_up(tmp_path, speech_commands):
    root = copy_of(speech_commands, tmp_path / "sc")
    (root / "yes" / "spk000_nohash_0.wav").write_bytes(b"RIFF not really audio")
    with pytest.raises(ValueError, match="spk000_nohash_0.wav"):
        prepare(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sc"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_prepared_folder_is_refused(small_prepared, tmp_path, damage, monkeypatch):
    copy = damaged_copy(small_prepared, tmp_path / "copy", damage, split="validation")
    with pytest.raises(PreparedDataError, match="prepare"):
        check_prepared(copy)  # what the driver does before it starts anything
    monkeypatch.setenv("DOTSIM_NODE_CACHE", str(tmp_path / "node"))
    with pytest.raises(PreparedDataError, match="prepare"):
        load_prepared(copy)  # and a node before it copies the data
    node = tmp_path / "node"
    assert not node.exists() or not any(p.is_dir() for p in node.iterdir())  # no copy left


def _in_memory_loader(folder, split):
    """The loader the node copy replaced: every worker read the Parquet shards into its own
    tensors and standardised them in place with the training split's statistics."""
    meta = read_meta(folder)
    table = pa.concat_tables([pq.read_table(folder / name) for name in meta["shards"][split]])
    shape = (table.num_rows, meta["frames"], meta["n_mels"])
    features = {name: torch.from_numpy(table.column(name).combine_chunks().flatten()
                                       .to_numpy().reshape(shape).copy()) for name in FEATURES}
    return features, torch.from_numpy(table.column("label").to_numpy().astype(np.int64))


def test_node_copy_gives_the_in_memory_batches_and_losses(small_prepared):
    """Same standardisation statistics, same batches, same losses and evaluation as the
    in-memory loader, bit for bit (that the copy is mapped and shared: the next tests)."""
    import workers.train as wt
    from workers.sampler import epoch_batches

    raw = {s: _in_memory_loader(small_prepared, s) for s in ("train", "validation")}
    stats = {}
    for name in FEATURES:
        x = raw["train"][0][name].reshape(-1, 40)
        stats[name] = (x.mean(0), x.std(0).clamp_min(1e-5))
    for features, _ in raw.values():
        for name, (mean, std) in stats.items():
            features[name].sub_(mean).div_(std)

    data = load_prepared(small_prepared)
    norm = wt.FeatureNorm.fit(data.splits["train"])
    for name in FEATURES:
        assert all(torch.equal(a, b) for a, b in zip(norm.stats[name], stats[name],
                                                     strict=True))
    ctx = wt.RankContext(0, 1, torch.device("cpu"))
    train, val = (norm(data.splits[s], ctx.device) for s in ("train", "validation"))
    cfg = tiny_config(small_prepared, workers=1)
    models = [wt.build_model(cfg, data.meta, classes=len(data.labels)) for _ in range(2)]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=cfg.lr) for m in models]
    for step, batch in enumerate(epoch_batches(train.labels.numpy(), classes_per_batch=16,
                                               clips_per_class=2, seed=0, epoch=0)[:4]):
        local = batch.for_rank(0, 1)
        new = wt.gather_batch(train, local, ctx)
        rows = torch.as_tensor(local.indices)
        old = new.replace(features=tuple(raw["train"][0][n][rows] for n in FEATURES),
                          labels=raw["train"][1][rows])
        assert all(torch.equal(a, b) for a, b in zip(new.features, old.features, strict=True))
        assert torch.equal(new.labels, old.labels)
        got = []
        for model, optimizer, b in zip(models, optimizers, (new, old), strict=True):
            torch.manual_seed(step)  # the same dropout masks
            got.append(wt.train_step(model, optimizer, b, cfg, ctx, (0, step)))
        assert torch.equal(got[0], got[1])
    old_val = wt.Split(raw["validation"][0], raw["validation"][1], val.speakers, val.clips)
    assert wt.evaluate(models[0], val, ctx) == wt.evaluate(models[1], old_val, ctx)


def test_evaluation_takes_no_more_clips_at_once_than_a_training_step(small_prepared):
    """Evaluation forwards the rank's share of a training batch at a time, so it never
    needs more memory than a step (a larger fixed chunk grows the heaps of 4 workers past
    their training peak); the numbers do not depend on the chunk."""
    import workers.train as wt

    cfg = tiny_config(small_prepared, workers=4)
    ctx = wt.RankContext.for_run(cfg, 0, 4, torch.device("cpu"))
    assert ctx.eval_batch == 8
    data = load_prepared(small_prepared)
    norm = wt.FeatureNorm.fit(data.splits["train"])
    test = norm(data.splits["test"], ctx.device)
    model = wt.build_model(cfg, data.meta, classes=len(data.labels))
    seen = []
    model.encoder.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    chunked = (wt.evaluate(model, test, ctx), wt.probe_accuracies(model, test, ctx.eval_batch),
               wt.embed_speech(model, test, torch.arange(len(test)), ctx.eval_batch))
    assert seen and max(seen) <= 3 * ctx.eval_batch  # speech, formant, residual stacked
    whole = wt.RankContext(0, 4, ctx.device, eval_batch=len(test))
    assert chunked[0] == pytest.approx(wt.evaluate(model, test, whole))
    assert chunked[1] == pytest.approx(wt.probe_accuracies(model, test, len(test)))
    torch.testing.assert_close(chunked[2], wt.embed_speech(model, test, torch.arange(len(test)),
                                                           len(test)))


def _mapped_pss(folder: str, barrier, out) -> None:
    """In a separate process: map the node copy, read every page, wait for the other
    process to do the same, then report this process's share (PSS) of the mapped files."""
    data = load_prepared(folder)
    for split in data.splits.values():
        for x in split.features.values():
            float(x.sum())  # touch every page
    barrier.wait()
    pss, mapped = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():  # one consistent read
        if "-" in line.split()[0]:  # a mapping's header line
            mapped = str(node_cache()) in line
        elif mapped and line.startswith("Pss:"):
            pss += int(line.split()[1]) * 1024
    barrier.wait()
    out.put(pss)


def test_the_node_copy_is_held_once_by_all_its_processes(small_prepared, tmp_path,
                                                        monkeypatch):
    """Two processes that map the node's copy each account for half of it: the features
    are in memory once per node, not once per worker."""
    import multiprocessing as mp

    monkeypatch.setenv("DOTSIM_NODE_CACHE", str(tmp_path / "node"))  # mapped by no one else
    folder = node_copy(small_prepared)
    size = sum(p.stat().st_size for p in folder.glob("*-speech.npy")) * len(FEATURES)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_mapped_pss, args=(str(small_prepared), barrier, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    shares = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(0.4 * size < share < 0.6 * size for share in shares), (shares, size)


def _copy_growth(small: str, big: str, out) -> None:
    """In a fresh process: make the node copy of ``small`` (which pays the one-off costs:
    imports, Arrow's thread pools), then of ``big``; report the anonymous memory that
    making the second copy left behind."""
    def anonymous() -> int:
        text = Path("/proc/self/smaps_rollup").read_text()
        return int(text.split("Anonymous:")[1].split()[0]) * 1024

    node_copy(small)
    before = anonymous()
    node_copy(big)
    out.put(anonymous() - before)


def _random_prepared(out: Path, clips: int) -> Path:
    rng = np.random.default_rng(0)
    writer = PreparedWriter(out, frames=101, n_mels=40, overwrite=True)
    for split, n in (("train", clips), ("validation", 8), ("test", 8)):
        writer.write(split, {name: rng.standard_normal((n, 101, 40), dtype=np.float32)
                             for name in FEATURES},
                     labels=np.arange(n) % 5, speakers=[f"s{i % 4}" for i in range(n)],
                     clips=[f"{split}/{i}" for i in range(n)])
    return Path(writer.commit({"labels": [f"w{i}" for i in range(5)], "sample_rate": 16000}))


def test_making_the_node_copy_leaves_no_memory_behind(tmp_path, monkeypatch):
    """The worker that makes its node's copy trains afterwards: the memory that reading
    the shards took goes back (Arrow's allocator kept about 1.5x the data without it)."""
    import multiprocessing as mp

    monkeypatch.setenv("DOTSIM_NODE_CACHE", str(tmp_path / "node"))
    small = _random_prepared(tmp_path / "small", clips=100)
    big = _random_prepared(tmp_path / "big", clips=3000)  # 140 MB of features
    size = sum(p.stat().st_size for p in big.glob("*.parquet"))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_copy_growth, args=(str(small), str(big), out))
    proc.start()
    growth = out.get(timeout=120)
    proc.join(timeout=60)
    assert growth < 0.1 * size, (growth, size)


def test_the_node_copy_is_made_once(small_prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("DOTSIM_NODE_CACHE", str(tmp_path / "node"))
    folder = node_copy(small_prepared)
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert node_copy(small_prepared) == folder  # the second caller finds it made
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp
    assert [p.name for p in (tmp_path / "node").iterdir() if p.is_dir()] == [folder.name]


def _prepared_again(source: Path, out: Path) -> Path:
    """The same prepared data under a new ``prepared_id``, as a re-run of prepare makes."""
    shutil.copytree(source, out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "prepared_id": out.name}))
    return out


def test_a_node_keeps_the_copies_in_use_and_the_newest_unused_ones(small_prepared, tmp_path):
    """Every prepare makes a new copy on each node; making one removes the copies that no
    process holds beyond the most recently used (DOTSIM_NODE_CACHE_KEEP), never one that a
    live process has mapped."""
    env = {**os.environ, "DOTSIM_NODE_CACHE": str(tmp_path / "node"),
           "DOTSIM_NODE_CACHE_KEEP": "1"}
    data = {name: _prepared_again(small_prepared, tmp_path / name) for name in "ABCDE"}
    code = ("import sys; from workers.data import load_prepared; load_prepared(sys.argv[1]); "
            "print('mapped', flush=True); sys.stdin.read()")

    def use(name, hold=False):
        proc = subprocess.Popen([sys.executable, "-c", code, str(data[name])], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "mapped"
        if not hold:
            proc.communicate("", timeout=60)
        return proc

    def copies():
        by_id = {data_fingerprint(folder): name for name, folder in data.items()}
        return sorted(by_id[p.name] for p in (tmp_path / "node").iterdir() if p.is_dir())

    use("A"), use("B")
    assert copies() == ["A", "B"]  # A: the one unused copy kept
    holder = use("A", hold=True)  # A in use (found made: nothing removed)
    use("C")
    assert copies() == ["A", "B", "C"]  # A held, B the newest unused
    use("D")
    assert copies() == ["A", "C", "D"]  # B removed; A still held
    holder.communicate("", timeout=60)
    use("E")
    assert copies() == ["D", "E"]


def test_processes_that_arrive_together_all_get_the_copy(small_prepared, tmp_path):
    """Three processes ask for a copy that is not made yet, at the same moment, while
    another process (this one) holds the copy's use lock for as long as the test runs:
    one makes the copy, and all three map it without waiting for that holder. (With one
    lock for making and using, a maker had to wait for every user to go: never, here.)"""
    import fcntl

    env = {**os.environ, "DOTSIM_NODE_CACHE": str(tmp_path / "node")}
    (tmp_path / "node").mkdir(mode=0o700)
    holder = open(tmp_path / "node" / f"{data_fingerprint(small_prepared)}.lock", "a")
    fcntl.flock(holder, fcntl.LOCK_SH)
    go = tmp_path / "go"
    code = ("import pathlib, sys, time; from workers.data import load_prepared\n"
            "pathlib.Path(sys.argv[2]).touch()\n"
            "while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.01)\n"
            "load_prepared(sys.argv[1]); print('mapped', flush=True); sys.stdin.read()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(small_prepared),
                               str(tmp_path / f"ready{i}"), str(go)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(3)]
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
            assert time.time() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        go.touch()
        for proc in procs:  # each maps while the holder and the others hold the copy
            ready, _, _ = select.select([proc.stdout], [], [], max(0, deadline - time.time()))
            assert ready, "a process never got the copy: the node cache's locks deadlocked"
            assert proc.stdout.readline().strip() == "mapped"
        for proc in procs:
            proc.communicate("", timeout=60)
            assert proc.returncode == 0
    finally:
        holder.close()
        for proc in procs:
            proc.kill()
    assert len([p for p in (tmp_path / "node").iterdir() if p.is_dir()]) == 1


def test_a_node_cache_of_another_user_is_refused(small_prepared, tmp_path, monkeypatch):
    cache = tmp_path / "node"
    cache.mkdir()
    try:
        os.chown(cache, os.getuid() + 1, -1)
    except PermissionError:
        pytest.skip("changing a folder's owner needs root (the CI and dev machines have it)")
    monkeypatch.setenv("DOTSIM_NODE_CACHE", str(cache))
    with pytest.raises(InputError, match="belongs to another user"):
        node_copy(small_prepared)


def test_feature_settings_are_recorded(small_prepared):
    meta = read_meta(small_prepared)
    for key, value in FeatureSettings().to_meta().items():
        assert meta[key] == value


@pytest.mark.ray
@pytest.mark.slow
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


@pytest.mark.parametrize("keep", ["two", "-1", "1.5", ""])
def test_a_bad_number_of_copies_to_keep_is_refused_before_any_copy(small_prepared, tmp_path,
                                                                 monkeypatch, keep):
    monkeypatch.setenv("DOTSIM_NODE_CACHE", str(tmp_path / "node"))
    monkeypatch.setenv("DOTSIM_NODE_CACHE_KEEP", keep)
    with pytest.raises(InputError, match="DOTSIM_NODE_CACHE_KEEP=.*whole number"):
        node_copy(small_prepared)
    assert not (tmp_path / "node").exists() or not any((tmp_path / "node").iterdir())
