"""Experiment trackers (orchestrator/trackers.py).

Without Ray: what a tracker receives (parameters, metrics, tags), secrets kept out, the
retries and giving up, which epochs a resumed run sends, the words of --tracker, a missing
package, an unreachable tracker (exit 2 before anything runs), and W&B's real client in
offline mode read back from its run files.

With Ray (slow): a real `mlflow server` (SQLite, local artifacts) on 127.0.0.1, read back
through MlflowClient: a `train` run failed and resumed into the same tracker run; a 2-trial
sweep grouped under its parent run with the report attached, and the same sweep in W&B
offline; a server killed during a run, which still finishes, says what did not reach the
tracker, and sends it when launched again once the server is back.
"""

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import faults
import pytest
from click.testing import CliRunner
from ray import cloudpickle
from tiny import tiny_config, tiny_options
from wandb_records import offline_runs

from orchestrator import trackers
from orchestrator.cli import _resume_command, cli, main
from workers.config import RunConfig
from workers.errors import InputError
from workers.metrics import EPOCH_METRICS, FINAL_METRICS, FSKIL_HEADLINE, session_metric
from workers.train import train_loop_per_worker, train_step

# Ray workers cannot import this test module: send its functions (the gated loop) by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BIN = Path(sys.executable).parent
SECRET = "s3cr3t-pw"


def _record(cfg: RunConfig) -> dict:
    """A run record as launch.bind_run writes it."""
    return {"run_name": cfg.run_name, "run_key": cfg.run_key(), "config": cfg.to_dict(),
            "data_fingerprint": "f", "launches": [
                {"code_version": "0123456789abcdef0123456789abcdef01234567-dirty",
                 "packages": {"torch": "2.11.0", "ray": "2.60.0", "python": "3.11.7"}}]}


def _epoch(epoch: int, *, final: bool = False) -> dict:
    report = {name: 0.5 for name in EPOCH_METRICS} | {"epoch": epoch, "val_acc": epoch / 10}
    if final:
        report |= {name: 0.75 for name in FINAL_METRICS} | {"best_epoch": epoch}
    return report


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- what a tracker receives ---------------------------------------------------------


def test_parameters_are_every_config_field_and_the_launch_s_versions():
    cfg = RunConfig(seed=3, lr=0.01, class_order=["yes", "no"], extra={"study": "x"},
                    trackers=[{"kind": "wandb", "project": "p", "mode": "offline"}])
    record = _record(cfg)
    values = trackers.params(record["config"], record["launches"][-1])
    assert set(values) == (set(cfg.to_dict()) - {"trackers"}) | {
        "code_version", "packages.torch", "packages.ray", "packages.python"}
    assert values["lr"] == 0.01 and values["seed"] == 3
    assert values["code_version"].endswith("-dirty") and values["packages.torch"] == "2.11.0"
    # MLflow stores text: JSON for anything that is not a string, cut to its limit
    assert trackers.param_text(values["class_order"]) == '["yes", "no"]'
    assert trackers.param_text(values["extra"]) == '{"study": "x"}'
    assert trackers.param_text(None) == "null" and trackers.param_text(0.01) == "0.01"
    assert trackers.param_text("dot") == "dot"
    assert len(trackers.param_text("w" * 10_000)) == trackers.MLFLOW_PARAM_LIMIT


def test_metrics_are_the_numbers_of_a_report_not_the_fskil_detail():
    final = _epoch(3, final=True) | {name: 0.6 for name in FSKIL_HEADLINE}
    final |= {session_metric(s, kind): 0.4 for s in range(6)
              for kind in ("overall", "seen", "unseen", "harmonic")}
    final |= {"fskil": {"per_episode": [[0.1]], "order": ["yes"]}, "logmel_last_harmonic": None}
    metrics = trackers.metrics_of(final)
    assert "fskil" not in metrics and "logmel_last_harmonic" not in metrics
    assert set(EPOCH_METRICS) | set(FINAL_METRICS) | set(FSKIL_HEADLINE) <= set(metrics)
    assert metrics[session_metric(5, "harmonic")] == 0.4 and metrics["epoch"] == 3.0
    assert trackers.metrics_of({"epoch": 1, "flag": True, "note": "x"}) == {"epoch": 1.0}


def test_tags_are_the_run_key_variant_seed_and_sweep():
    cfg = RunConfig(norm="meanstd", seed=2, run_name="r")
    record = _record(cfg)
    assert trackers.run_tags(record, {"kind": "mlflow"}) == {
        "run_key": cfg.run_key(), "variant": "dot:meanstd:global", "seed": "2"}
    assert trackers.run_tags(record, {"kind": "mlflow", "sweep": "s"})["sweep"] == "s"


def test_the_tracker_choice_does_not_change_a_run_s_key():
    spec = {"kind": "mlflow", "uri": "http://127.0.0.1:5000", "experiment": "dotsim"}
    assert RunConfig(trackers=[spec]).run_key() == RunConfig().run_key()
    assert RunConfig(trackers=[spec]).differences(RunConfig()) == []
    with pytest.raises(InputError, match="--tracker"):
        RunConfig(trackers=[{"kind": "tensorboard"}])


# --- secrets -------------------------------------------------------------------------


def test_credentials_in_a_uri_go_to_mlflow_s_environment_and_never_into_a_spec(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "before")  # restored after the test
    [spec] = trackers.resolve([f"mlflow:https://ana:{SECRET}@mlflow.lab.example:5000/"])
    assert spec == {"kind": "mlflow", "uri": "https://mlflow.lab.example:5000",
                    "experiment": "dotsim"}
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ana"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert SECRET not in json.dumps(RunConfig(trackers=[spec]).to_dict())
    said = trackers.scrub(f"POST https://ana:{SECRET}@mlflow.lab.example:5000/api failed; "
                          f"password {SECRET}")
    assert SECRET not in said and "https://***@mlflow.lab.example:5000/api" in said


def test_environment_secrets_are_scrubbed(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-abcdef")
    text = "401 for key wandb-key-0123456789 and bearer tok-abcdef at http://u:p@h/x"
    assert trackers.scrub(text) == "401 for key *** and bearer *** at http://***@h/x"
    err = ConnectionError("HTTPConnectionPool(host='h', port=1): Max retries exceeded "
                          "(Caused by NewConnectionError('<c>: Failed to establish a new "
                          "connection: [Errno 111] Connection refused'))")
    assert trackers.reason(err) == "Connection refused"


def test_the_resume_command_keeps_trackers_and_drops_their_passwords():
    typed = cli.commands["train"].make_context("train", [
        "--tracker", f"mlflow:https://ana:{SECRET}@h:5000", "--tracker", "wandb"])
    assert _resume_command(typed, "r") == ("dotsim train --tracker mlflow:https://h:5000 "
                                           "--tracker wandb --run-name r")


def test_a_mistyped_tracker_with_a_password_does_not_print_it():
    with pytest.raises(InputError) as refused:
        trackers.resolve([f"mlfow:https://ana:{SECRET}@h:5000"])
    assert SECRET not in str(refused.value) and "unknown tracker" in str(refused.value)


# --- retries and resume --------------------------------------------------------------


class Flaky:
    """A tracker call that fails its first ``failures`` times."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("[Errno 111] Connection refused")


def test_a_call_is_retried_then_given_up_on_then_tried_once_each_time():
    waits, said = [], []
    link = trackers.Link("MLflow at http://h", sleep=waits.append, say=said.append)
    assert link.call("epoch 1", Flaky(2)) and waits == [1.0, 2.0] and said == []
    gone = Flaky(99)
    assert not link.call("epoch 2", gone) and gone.calls == 3 and link.down
    assert waits == [1.0, 2.0, 1.0, 2.0]
    assert said == ["MLflow at http://h did not answer (epoch 2) after 3 tries: Connection "
                    "refused; dotsim goes on without it"]
    assert not link.call("epoch 3", gone) and gone.calls == 4  # once, and no second warning
    assert len(said) == 1 and len(waits) == 4
    assert link.call("epoch 4", Flaky(0)) and not link.down
    assert said[-1] == "MLflow at http://h answers again (epoch 4)"
    assert link.call("epoch 5", Flaky(1)) and waits[-1] == 1.0  # retried again once back


def test_a_resumed_run_sends_only_the_epochs_its_tracker_lacks():
    history = [_epoch(e) for e in (1, 2, 3, 4)]

    def epochs(delivered, monotonic):
        return [h["epoch"] for h in trackers.to_send(history, delivered, monotonic=monotonic)]

    assert epochs({1, 2}, False) == [3, 4] and epochs({1, 2}, True) == [3, 4]
    assert epochs({1, 3}, False) == [2, 4]  # MLflow takes a missing step at any time
    assert epochs({1, 3}, True) == [4]  # W&B would drop a step below its last one
    assert epochs(set(), True) == [1, 2, 3, 4] and epochs({1, 2, 3, 4}, False) == []


def test_the_end_of_a_run_says_which_epochs_did_not_reach_a_tracker():
    mlflow = {"kind": "mlflow", "uri": "http://h:5000", "experiment": "dotsim"}
    wandb = {"kind": "wandb", "project": "p", "entity": None, "mode": "offline", "dir": "/d"}
    record = {"trackers": {trackers.key(mlflow): {"run_id": "a", "epochs": [1, 2, 5]}}}
    lines = trackers.gaps([mlflow, wandb], record, [1, 2, 3, 4, 5, 6, 7], "r")
    assert lines == [
        "MLflow at http://h:5000: epochs 3-4, 6-7 (with the final metrics) of run r did not "
        "reach it; every metric is kept in the run folder, and " + trackers.RESEND,
        "W&B project p (offline): no epoch of run r reached it; every metric is kept in the "
        "run folder, and " + trackers.RESEND]
    record["trackers"][trackers.key(mlflow)]["epochs"] = [1, 2, 3, 4, 5, 6, 7]
    assert trackers.gaps([mlflow], record, [1, 2, 3, 4, 5, 6, 7], "r") == []


# --- the words of --tracker ----------------------------------------------------------


def test_tracker_words(monkeypatch, tmp_path, said):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for word, message in (("tensorboard", "unknown tracker 'tensorboard'"),
                          ("wandb:proj", "unknown tracker 'wandb:proj'"),
                          ("mlflow", "set MLFLOW_TRACKING_URI")):
        with pytest.raises(InputError, match=message):
            trackers.resolve([word])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kws")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    specs = trackers.resolve(["mlflow", "wandb", "mlflow:http://127.0.0.1:5000"])
    assert specs == [
        {"kind": "mlflow", "uri": "http://127.0.0.1:5000", "experiment": "kws"},
        {"kind": "wandb", "project": "dotsim", "entity": None, "mode": "offline",
         "dir": str(tmp_path)}]
    assert said == [f"W&B: no WANDB_API_KEY, so runs are kept offline in {tmp_path}/wandb; "
                    f"upload them later with: wandb sync {tmp_path}/wandb/offline-run-*"]
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_PROJECT", "kws")
    [spec] = trackers.resolve(["wandb"])
    assert spec["mode"] == "online" and spec["project"] == "kws"


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_is_exit_2_naming_the_extra(monkeypatch, capsys, package):
    monkeypatch.setitem(sys.modules, package, None)  # what Python does for a missing package
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(SystemExit) as done:
        main(["train", "--tracker", package])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--tracker {package} needs the {package} package" in err
    assert "pip install -e '.[track]'" in err


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_unreachable_tracker_is_exit_2_before_anything_runs(tmp_path, monkeypatch, capsys,
                                                               command):
    """Nothing prepared, started or written: the check comes before the data and Ray."""

    monkeypatch.setenv("DOTSIM_CACHE", str(tmp_path / "cache"))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")  # set by --tracker from the URI; restored after
    port = _closed_port()
    with pytest.raises(SystemExit) as done:
        main([command, "--storage-path", str(tmp_path / "runs"),
              "--tracker", f"mlflow:http://ana:{SECRET}@127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert err.strip().splitlines() == [
        f"dotsim: error: cannot use MLflow at http://127.0.0.1:{port} (Connection refused); "
        "is the server up, and is MLFLOW_TRACKING_URI (or --tracker mlflow:URI) right?"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing prepared or run


def test_a_tracker_that_hangs_does_not_hold_the_run_s_end(tmp_path, monkeypatch, caplog):
    """A server that takes connections and never answers (a dropped network, a wedged
    proxy): the run's end waits CLOSE_WAIT_S, says so, and names the epochs not logged."""
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    accepted = []
    threading.Thread(target=lambda: accepted.extend(listener.accept() for _ in range(100)),
                     daemon=True).start()
    monkeypatch.setattr(trackers, "CLOSE_WAIT_S", 1)
    monkeypatch.setattr(trackers, "BACKOFF_S", 0.01)
    spec = {"kind": "mlflow", "uri": f"http://127.0.0.1:{listener.getsockname()[1]}",
            "experiment": "dotsim"}
    cfg = RunConfig(epochs=2, run_name="r", trackers=[spec])
    record_path = tmp_path / "dotsim_run.json"
    record_path.write_text(json.dumps(_record(cfg)))
    with caplog.at_level(logging.WARNING, logger="dotsim"), \
            trackers.tracking([spec], str(record_path), [], finished=False) as session:
        session.send(_epoch(1))
        session.send(_epoch(2, final=True))
    assert session.thread.is_alive()  # still trying, in the background
    assert "had not caught up 1 s after the run ended" in caplog.text
    assert session.outcome()[0]["not_logged"] == [1, 2]
    listener.close()


# --- W&B's real client, offline ------------------------------------------------------


def test_wandb_offline_run_resumed_without_duplicate_epochs(tmp_path, monkeypatch):
    """Two launches of one run into W&B offline: the same W&B run id, each epoch once (the
    second launch sends only what the record says W&B lacks), read back from wandb's files."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "first"))
    [spec] = trackers.resolve(["wandb"])
    cfg = RunConfig(epochs=4, run_name="r", trackers=[spec])
    record_path = tmp_path / "dotsim_run.json"
    record_path.write_text(json.dumps(_record(cfg)))

    with trackers.tracking([spec], str(record_path), [], finished=False) as first:
        first.send(_epoch(1))
        first.send(_epoch(2))
    history = [_epoch(1), _epoch(2)]
    # wandb names an offline run's folder to the second: the second launch writes under
    # a folder of its own (the same tracker entry: W&B's project, not its folder)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "second"))
    [spec] = trackers.resolve(["wandb"])
    with trackers.tracking([spec], str(record_path), history, finished=False) as second:
        second.send(_epoch(2))  # a resumed run may report an epoch W&B holds: not sent again
        second.send(_epoch(3))
        second.send(_epoch(4, final=True))
    assert second.outcome()[0]["not_logged"] == []
    entry = json.loads(record_path.read_text())["trackers"]["wandb dotsim"]
    assert entry["epochs"] == [1, 2, 3, 4]

    runs = offline_runs(tmp_path / "first") + offline_runs(tmp_path / "second")
    assert [run.run_id for run in runs] == [entry["run_id"]] * 2
    assert [sorted(run.history) for run in runs] == [[1, 2], [3, 4]]
    run = runs[0]
    assert run.name == "r" and run.project == "dotsim" and run.job_type == "train"
    assert set(run.tags) == {f"run_key:{cfg.run_key()}", "variant:dot:minmax:global", "seed:0"}
    assert run.config["lr"] == cfg.lr and run.config["packages.torch"] == "2.11.0"
    assert runs[1].history[4]["test_acc"] == 0.75 and runs[0].history[2]["val_acc"] == 0.2


# --- a real MLflow server (slow) -----------------------------------------------------


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact store, in a
    process group of its own (killed whole); started again on the same port and database
    after ``kill``."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, _closed_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout_s: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # its job runners (7 processes of about 240 MB) serve features not used here
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with (self.folder / "server.log").open("a") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                 str(self.port), "--workers", "1", "--backend-store-uri",
                 f"sqlite:///{self.folder}/mlflow.db", "--artifacts-destination",
                 str(self.folder / "artifacts")],
                env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError((self.folder / "server.log").read_text()[-3000:])

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.kill()


def _runs(client, filter_string: str):
    experiment = client.get_experiment_by_name("dotsim")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string)


def _steps(client, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def _no_secret_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.ray
def test_a_train_run_in_mlflow_resumes_its_tracker_run(ray_local, small_prepared, tmp_path,
                                                       mlflow_server, monkeypatch):
    """A run fails after its first epoch, then `dotsim train` resumes it and runs once more:
    one MLflow run, every config field a parameter, each epoch once as a step, FINISHED.
    The URI's password reaches MLflow's environment only: not the run folder, not stderr."""
    import ray

    from orchestrator import plan
    from orchestrator.launch import RECORD_FILE, launch

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")  # set by --tracker from the URI; restored after
    uri = "mlflow:" + mlflow_server.uri.replace("http://", f"http://ana:{SECRET}@")
    cfg = plan.plan_run(tiny_config(small_prepared, tmp_path / "runs", epochs=3,
                                    run_name="tracked", max_failures=0), trackers=[uri])
    with pytest.raises(ray.train.TrainingFailedError, match="injected failure"):
        launch(cfg, progress=False, loop=faults.failing_loop(epoch=1))
    client = mlflow_server.client()
    [failed] = _runs(client, "attributes.run_name = 'tracked'")
    assert failed.info.status == "FAILED" and _steps(client, failed.info.run_id, "epoch") == [1]

    train = ["train", "--data", str(small_prepared), "--storage-path", str(tmp_path / "runs"),
             *tiny_options(epochs=3), "--run-name", "tracked", "--tracker", uri, "--json"]
    resumed = CliRunner().invoke(cli, train)
    assert resumed.exit_code == 0, resumed.output
    doc = json.loads(resumed.stdout)
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3]
    assert doc["trackers"] == [{"tracker": "mlflow", "where": mlflow_server.uri,
                                "run_id": failed.info.run_id, "not_logged": []}]
    again = CliRunner().invoke(cli, train)  # finished: nothing trained, nothing sent twice
    assert again.exit_code == 0 and json.loads(again.stdout)["already_finished"]

    [run] = _runs(client, "attributes.run_name = 'tracked'")
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("run_key", "variant", "seed")} == {
        "run_key": cfg.run_key(), "variant": "dot:minmax:global", "seed": "0"}
    assert set(cfg.to_dict()) - {"trackers"} <= set(run.data.params)
    assert run.data.params["lr"] == "0.004" and run.data.params["preset"] == "tiny"
    assert run.data.params["packages.ray"] == "2.60.0" and run.data.params["code_version"]
    for metric in ("epoch", "val_acc", "train_loss"):
        assert _steps(client, run.info.run_id, metric) == [1, 2, 3], metric
    by_step = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
    assert by_step == {h["epoch"]: pytest.approx(h["val_acc"]) for h in doc["history"]}
    assert _steps(client, run.info.run_id, "test_acc") == [3]
    assert run.data.metrics["probe_word_from_formant"] == pytest.approx(
        doc["metrics"]["probe_word_from_formant"])
    record = json.loads((tmp_path / "runs" / "tracked" / RECORD_FILE).read_text())
    assert record["trackers"] == {f"mlflow {mlflow_server.uri}": {
        "kind": "mlflow", "run_id": run.info.run_id, "epochs": [1, 2, 3]}}
    _no_secret_in(tmp_path / "runs")
    assert SECRET not in resumed.stderr + again.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_a_sweep_in_mlflow_and_wandb_grouped_under_the_sweep_with_its_report(
        ray_local, small_prepared, tmp_path, mlflow_server, monkeypatch):
    """A 2-trial sweep with --tracker mlflow:URI --tracker wandb (offline): in MLflow a
    parent run named like the sweep holds the report's files, its two trials nested under
    it with every epoch; in W&B the trials are grouped under the sweep and the sweep's run
    holds the report as an artifact. `dotsim report --tracker` adds to the same run."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    result = CliRunner().invoke(cli, [
        "sweep", "--data", str(small_prepared), "--storage-path", str(tmp_path), "--name", "s",
        "--variants", "cosine,dot:minmax:global", *tiny_options(epochs=2), "--seeds", "1",
        "--tracker", f"mlflow:{mlflow_server.uri}", "--tracker", "wandb", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "kept offline in" in result.stderr  # W&B without a key, said on stderr
    trials = ["cosine-seed0", "dot-minmax-global-seed0"]

    client = mlflow_server.client()
    [parent] = _runs(client, "attributes.run_name = 's'")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep"] == "s"
    children = _runs(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == trials
    for run in children:
        assert run.data.tags["sweep"] == "s" and run.info.status == "FINISHED"
        assert _steps(client, run.info.run_id, "val_acc") == [1, 2]
        assert run.data.tags["variant"] in ("cosine", "dot:minmax:global")
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert files == {"report/report.md", "report/report.json", "report/comparison.png"}
    sent = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "report/report.json", str(tmp_path))).read_text())
    assert [v["variant"] for v in sent["variants"]] == [v["variant"] for v in report["variants"]]
    assert sent["paired"][0]["verdict"] == report["paired"][0]["verdict"]

    runs = {run.name: run for run in offline_runs(tmp_path / "wandb")}
    assert set(runs) == {*trials, "s"}
    for name in trials:
        run = runs[name]
        assert run.group == "s" and run.job_type == "trial" and "sweep:s" in run.tags
        assert sorted(run.history) == [1, 2] and "test_acc" in run.history[2]
    assert runs["s"].artifacts == [
        ("report-s", "report", ["comparison.png", "report.json", "report.md"])]

    again = CliRunner().invoke(cli, ["report", str(tmp_path / "s"), "--no-plot",
                                     "--tracker", f"mlflow:{mlflow_server.uri}"])
    assert again.exit_code == 0, again.output
    assert [r.info.run_id for r in _runs(client, "attributes.run_name = 's'")] == [
        parent.info.run_id]  # the sweep's own run, not a new one


def _step_after(gate: str, model, optimizer, batch, cfg, ctx, where, **kwargs):
    if where == (1, 0):  # the first step of the second epoch waits for the gate
        while not Path(gate).exists():
            time.sleep(0.05)
    return train_step(model, optimizer, batch, cfg, ctx, where, **kwargs)


def gated_loop(gate: Path):
    """The training loop, each rank holding at the start of epoch 2 until ``gate`` exists:
    epoch 1 is reported (and sent to the trackers) first."""
    return functools.partial(train_loop_per_worker, step=functools.partial(_step_after,
                                                                           str(gate)))


@pytest.mark.slow
@pytest.mark.ray
def test_a_tracker_that_dies_mid_run_loses_no_result(ray_local, small_prepared, tmp_path,
                                                     said):
    """The MLflow server is killed once epoch 1 reached it, while training holds before
    epoch 2: the run finishes, warns once, and says which epochs did not reach MLflow; with
    the server back, `dotsim train` (exit 0) sends them to the same MLflow run, each once."""
    from orchestrator import plan
    from orchestrator.launch import RECORD_FILE, launch

    server = MlflowServer(tmp_path)
    server.start()
    cfg = plan.plan_run(tiny_config(small_prepared, tmp_path / "runs", epochs=4, run_name="r"),
                        trackers=[f"mlflow:{server.uri}"])
    record, gate = tmp_path / "runs" / "r" / RECORD_FILE, tmp_path / "gate"

    def epoch_1_in_mlflow():
        return json.loads(record.read_text())["trackers"][f"mlflow {server.uri}"]["epochs"]

    def kill_then_open_the_gate():
        deadline = time.time() + 300
        while time.time() < deadline and not faults.holds(epoch_1_in_mlflow):
            time.sleep(0.1)
        server.kill()
        gate.touch()

    killer = threading.Thread(target=kill_then_open_the_gate, daemon=True)
    killer.start()
    summary = launch(cfg, progress=False, loop=gated_loop(gate))
    killer.join()
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]  # nothing lost
    assert summary["trackers"][0]["not_logged"] == [2, 3, 4]
    gone = [line for line in said if "did not answer" in line]
    assert gone == [f"MLflow at {server.uri} did not answer (epoch 2) after 3 tries: "
                    "Connection refused; dotsim goes on without it"]
    assert said[-1] == (f"MLflow at {server.uri}: epochs 2-4 (with the final metrics) of run r "
                        "did not reach it; every metric is kept in the run folder, and "
                        "launching the run again sends what is missing")

    server.start()
    client = server.client()
    [run] = _runs(client, "attributes.run_name = 'r'")
    assert _steps(client, run.info.run_id, "epoch") == [1]
    again = CliRunner().invoke(cli, [
        "train", "--data", str(small_prepared), "--storage-path", str(tmp_path / "runs"),
        *tiny_options(epochs=4), "--run-name", "r", "--tracker", f"mlflow:{server.uri}",
        "--json"])
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["already_finished"] and doc["trackers"][0]["not_logged"] == []
    [after] = _runs(client, "attributes.run_name = 'r'")
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    for metric in ("epoch", "val_acc"):
        assert _steps(client, run.info.run_id, metric) == [1, 2, 3, 4]
    assert _steps(client, run.info.run_id, "test_acc") == [4]
    server.kill()
