"""Phase marks (``workers.phases``), which bench/bench_sweep.py reads: nothing is written
unless DOTSIM_PHASES names a file; then each mark is one whole JSON line, also when
several processes mark at once (a trial's workers do)."""

import json
import multiprocessing
import os
from pathlib import Path

from workers import phases


def _mark_many(args):
    path, worker = args
    os.environ[phases.PHASES_ENV] = path
    for i in range(200):
        phases.mark(f"phase {i} " + "x" * 100, rank=worker)
    return os.getpid()


def test_nothing_is_written_unless_a_marks_file_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv(phases.PHASES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    phases.mark("loop start", 0)
    assert list(tmp_path.iterdir()) == []


def test_marks_of_several_processes_land_whole(tmp_path):
    path = str(tmp_path / "phases.jsonl")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pids = pool.map(_mark_many, [(path, worker) for worker in range(4)])
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(lines) == 800
    assert {(m["pid"], m["rank"]) for m in lines} == {(pid, w) for w, pid in enumerate(pids)}
    for worker in range(4):  # each process's marks in its order, with their times
        own = [m for m in lines if m["rank"] == worker]
        assert [m["phase"].split()[1] for m in own] == [str(i) for i in range(200)]
        assert [m["t"] for m in own] == sorted(m["t"] for m in own)
