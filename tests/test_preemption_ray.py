"""A worker node reclaimed in a two-node run: the spot watcher reads the notice from a fake
IMDSv2 and drains the node for preemption, the loop saves the step it is at before the
deadline, the node is killed at the deadline and a node added back; the run
(``--max-failures 0``) finishes with the history of an uninterrupted run, having redone
no step, and says so in one line.

The scenario is ``bench/bench_preemption.py scenario`` (the cluster in a subprocess of its
own: a head without CPUs and one 2-CPU worker node on 127.0.0.1); this test starts the
IMDSv2 server and arms it when the scenario asks for the notice."""

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imds import FakeIMDS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_preemption.py"
TIMING = {"epoch_seconds", "samples_per_second", "peak_rss_mb"}


def run_scenario(data, storage, imds: FakeIMDS, home) -> dict:
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "disabled",
           # Ray Train looks for draining nodes every 5 s; the test's deadline is short
           "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS", None)
    lines = []
    with subprocess.Popen([sys.executable, str(BENCH), "scenario", "--data", str(data),
                           "--storage", str(storage), "--reference", "--imds", imds.url],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as scenario:
        def read():  # arm the notice when the scenario asks for it
            for line in scenario.stdout:
                lines.append(line)
                if line.startswith("NOTICE "):
                    when = float(line.split()[1])
                    imds.set_notice("terminate", datetime.fromtimestamp(when, UTC))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        stderr = scenario.stderr.read()
        assert scenario.wait(timeout=900) == 0, stderr[-3000:]
        reader.join(timeout=10)
    [line] = [x for x in lines if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")) | {"stderr": stderr}


def test_a_reclaimed_node_costs_no_step_and_the_run_is_exact(small_prepared, tmp_path):
    imds = FakeIMDS()
    try:
        result = run_scenario(small_prepared, tmp_path / "runs", imds, tmp_path)
    finally:
        imds.close()
    assert result["error"] is None, result["error"]
    per_epoch = result["per_epoch"]
    [entry] = result["preemptions"]
    # the notice came in epoch 2 and was answered with a checkpoint in it, before its end
    assert entry["epoch"] == 2 and per_epoch < entry["step_checkpointed"] < 2 * per_epoch
    assert entry["resumed_from_step"] == entry["step_checkpointed"], entry
    assert entry["steps_redone"] <= 1, entry
    # counted from the workers' own log: the ended group stopped at the saved step, and
    # the whole run trained each step once more at most
    assert result["steps_done_before_kill"] == entry["step_checkpointed"]
    assert result["steps_trained"] - result["epochs"] * per_epoch <= 1
    assert [h["epoch"] for h in result["resumed"]] == [1, 2, 3]
    for ours, theirs in zip(result["resumed"], result["reference"], strict=True):
        for key, value in theirs.items():
            if key not in TIMING and isinstance(value, float):
                assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    said = [line for line in result["lines"] if "preemption" in line]
    assert len(said) == 2, result["lines"]  # the notice answered, and the resume
    assert "saved epoch 2" in said[0] and "0 steps redone" in said[1]
    # the terminal (worker logs forwarded, as on a cluster) has neither every rank's report
    # nor the restart's tracebacks
    assert "Reporting training result" not in result["stderr"]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
