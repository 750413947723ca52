"""Remote storage end to end against a real S3 API on 127.0.0.1 (moto's server, the
session's ``s3_endpoint``): prepare into a bucket, train with 2 workers whose checkpoints
land in it, fail and resume from it, sweep two trials, resume the sweep and report from
it, with no local copy of the run folders; storage that cannot be used is exit 2 with one
line. Nothing is patched: pyarrow, Ray Train and Tune talk S3 to the server."""

import json

import boto3
import faults
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tiny import tiny_options

from orchestrator.cli import cli, main
from orchestrator.launch import run_history
from workers import storage

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = tiny_options()


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    boto3.client("s3").create_bucket(Bucket="dotsim-test")
    return "s3://dotsim-test"


def _keys(prefix: str) -> set[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket="dotsim-test", Prefix=prefix)
    return {item["Key"] for item in listing.get("Contents", [])}


def test_prepare_train_resume_sweep_and_report_in_a_bucket(ray_local, bucket, tmp_path,
                                                         monkeypatch, speech_commands):
    monkeypatch.chdir(tmp_path)  # whatever is written locally would show up here
    source = speech_commands
    data = f"{bucket}/data/sc"
    prepared = CliRunner().invoke(cli, ["prepare", str(source), "--out", data, "--json"])
    assert prepared.exit_code == 0, prepared.output
    assert {"data/sc/meta.json", "data/sc/train-00000.parquet"} <= _keys("data/sc/")
    first_id = json.loads(storage.read_bytes(f"{data}/meta.json"))["prepared_id"]
    again = CliRunner().invoke(cli, ["prepare", str(source), "--out", data])
    assert again.exit_code == 2 and "already exists" in again.stderr
    replaced = CliRunner().invoke(cli, ["prepare", str(source), "--out", data, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(storage.read_bytes(f"{data}/meta.json"))["prepared_id"] != first_id

    runs = f"{bucket}/runs"
    train = ["train", "--data", data, "--storage-path", runs, *TINY, "--epochs", "2",
             "--run-name", "r", "--json"]
    run = f"{runs}/r"
    # a worker dies after the first checkpoint and no restart is left: the run fails...
    killer = faults.kill_a_worker_when(lambda: run_history(run))
    failed = CliRunner().invoke(cli, [*train, "--max-failures", "0"])
    killer.join()
    assert failed.exit_code == 1 and killer.killed, failed.output
    assert [h["epoch"] for h in run_history(run)] == [1]
    # ... and the same command resumes it from the checkpoint in the bucket
    resumed = CliRunner().invoke(cli, train)
    assert resumed.exit_code == 0, resumed.output
    doc = json.loads(resumed.stdout)
    assert [h["epoch"] for h in doc["history"]] == [1, 2] and doc["path"] == run
    keys = _keys("runs/r/")
    assert "runs/r/dotsim_run.json" in keys
    assert any(k.endswith("/history.json") for k in keys)
    assert any(k.endswith("/state.pt") for k in keys)
    record = json.loads(storage.read_bytes(f"{run}/dotsim_run.json"))
    assert [launch["epochs_done_before"] for launch in record["launches"]] == [0, 1]

    sweeps = f"{bucket}/sweeps"
    swept = CliRunner().invoke(cli, [
        "sweep", "--data", data, "--storage-path", sweeps, "--name", "s", *TINY,
        "--epochs", "1", "--seeds", "1", "--variants", "cosine,dot:minmax:global", "--json"])
    assert swept.exit_code == 0, swept.output
    assert {"sweeps/s/sweep.json", "sweeps/s/results.parquet",
            "sweeps/s/comparison.png"} <= _keys("sweeps/s/")
    again = CliRunner().invoke(cli, ["sweep", "--resume", f"{sweeps}/s", "--json"])
    assert again.exit_code == 0, again.output  # finished: nothing runs again
    report = CliRunner().invoke(cli, ["report", f"{sweeps}/s", "--json"])
    assert report.exit_code == 0, report.output
    doc = json.loads(report.stdout)
    assert [v["variant"] for v in doc["variants"]] == ["cosine", "dot:minmax:global"]
    results = pq.read_table(f"{sweeps}/s/results.parquet").to_pandas()
    assert (results["status"] == "FINISHED").all()

    # no local copy of any run folder: the working folder stays empty
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing bucket", "unreachable endpoint"])
def test_unusable_storage_is_exit_2_with_one_line(s3_endpoint, small_prepared, tmp_path,
                                                  capsys, monkeypatch, where):
    if where == "unreachable endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage_path = "s3://no-such-bucket/runs" if where == "missing bucket" else (
        "s3://dotsim-test/runs")
    for argv in (["train", "--data", str(small_prepared), "--storage-path", storage_path],
                 ["prepare", "--out", f"{storage_path}/data"],
                 ["report", f"{storage_path}/sweep"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        # a bucket that does not exist holds no sweep either: reading says that instead
        reading_nothing = argv[0] == "report" and where == "missing bucket"
        expected = "not a dotsim sweep folder" if reading_nothing else "cannot use storage"
        assert expected in err, err
