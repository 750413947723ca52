"""The orchestrator without a cluster: variant and grid parsing, the report's statistics,
and submit with the Ray job client patched (cluster.yaml: test_cluster_config.py)."""

import json
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from handmade import trial_rows, write_sweep

from orchestrator import cluster as launcher
from orchestrator import report as reports
from orchestrator import submit as jobs
from orchestrator.cli import cli
from orchestrator.results import TUNE_NAME
from orchestrator.variants import (
    DEFAULT_VARIANTS,
    parse_grid,
    parse_variant,
    trial_configs,
)
from orchestrator.versions import code_version
from workers.errors import InputError

REPO = Path(__file__).resolve().parents[1]


# --- variants and grids ---------------------------------------------------------------


@pytest.mark.parametrize("name,fields", [
    ("cosine", {"similarity": "cosine"}),
    ("dot:meanstd:global", {"similarity": "dot", "norm": "meanstd", "scope": "global"}),
    ("dot-legacy:minmax:local:detached", {"similarity": "dot-legacy", "norm": "minmax",
                                          "scope": "local", "detach_stats": True}),
    ("losses.similarity:dot:minmax:global", {"similarity": "losses.similarity:dot",
                                             "norm": "minmax", "scope": "global"}),
    ("losses.similarity:dot", {"similarity": "losses.similarity:dot"}),
])
def test_parse_variant(name, fields):
    assert parse_variant(name) == fields


@pytest.mark.parametrize("name", ["dot:l2:global", "dott", "dot:minmax:everywhere",
                                  "nosuchmodule:fn"])
def test_bad_variants_are_value_errors(name):
    with pytest.raises(ValueError):
        parse_variant(name)


def test_default_grid_is_five_variants_times_seeds():
    trials = trial_configs(list(DEFAULT_VARIANTS), 3, {})
    assert len(trials) == 15
    assert sum(t["similarity"] == "cosine" for t in trials) == 3


def test_grid_crosses_fields_and_deduplicates():
    grid = parse_grid(["w_lpc=0.5,1", "lr=1e-3"])
    assert grid == {"w_lpc": [0.5, 1.0], "lr": [0.001]}
    trials = trial_configs(["cosine", "cosine"], 2, grid)
    assert len(trials) == 4
    world = trial_configs(["dot:minmax:global"], 1, {}, world_sizes=[1, 2, 4])
    assert [t["workers"] for t in world] == [1, 2, 4]


def test_a_grid_that_turns_a_variant_into_another_is_refused():
    """Both similarity weights at 0 make any variant the cross-entropy ablation: its trials
    would share names and be compared as the wrong variant."""
    with pytest.raises(InputError, match="turns variant cosine into ce-only"):
        trial_configs(["cosine"], 1, {"w_lpc": [0.0], "w_shuffled": [0.0]})
    assert [t["w_lpc"] for t in trial_configs(["ce-only"], 1, {})] == [0.0]


@pytest.mark.parametrize("item,match", [("w_lpc", "KEY=V1,V2"), ("nope=1", "not a config"),
                                        ("scope=local", "--variants"),
                                        ("epochs=x", "not a valid int")])
def test_bad_grids(item, match):
    with pytest.raises(ValueError, match=match):
        parse_grid([item])


# --- report statistics ------------------------------------------------------------------


def _trials(diffs, base=0.5):
    rows = []
    for seed, d in enumerate(diffs):
        for variant, acc in (("cosine", base), ("dot:minmax:global", base + d)):
            rows.append({"trial": f"{variant}-{seed}", "variant": variant, "grid": "{}",
                         "seed": seed, "status": "FINISHED", "test_acc": acc})
    return pd.DataFrame(rows)


def test_paired_comparison_verdicts():
    better = reports.paired(_trials([0.05, 0.06, 0.04, 0.05]), "cosine")[0]
    assert better["verdict"].startswith("better than the baseline") and better["p"] < 0.01
    assert "4 seeds detect a difference of" in better["power"]
    unclear = reports.paired(_trials([0.05, -0.04, 0.01]), "cosine")[0]
    assert unclear["verdict"].startswith("no clear difference")
    few = reports.paired(_trials([0.05]), "cosine")[0]
    assert few["verdict"].startswith("too few paired seeds")


def test_zero_spread_says_so_instead_of_a_p_value():
    """Differences equal on every seed: no t-test (its p would read 0.0, a false certainty)."""
    flat = reports.paired(_trials([0.1, 0.1, 0.1]), "cosine")[0]
    assert flat["p"] is None and flat["p_holm"] is None
    assert "no spread across seeds" in flat["verdict"]
    markdown = reports.to_markdown({"sweep": "s", "baseline": "cosine", "metrics": ["test_acc"],
                                    "variants": [], "left_out": {}, "paired": [flat]})
    assert "no spread across seeds" in markdown and "| 0 |" not in markdown


def test_holm_applies_across_the_variants_compared():
    rows = []
    for seed, (d1, d2) in enumerate([(0.05, 0.02), (0.06, -0.01), (0.04, 0.03),
                                     (0.05, 0.00)]):
        for variant, acc in (("cosine", 0.5), ("dot:minmax:global", 0.5 + d1),
                             ("dot:meanstd:global", 0.5 + d2)):
            rows.append({"trial": f"{variant}-{seed}", "variant": variant, "grid": "{}",
                         "seed": seed, "status": "FINISHED", "test_acc": acc})
    compared = reports.paired(pd.DataFrame(rows), "cosine")
    ps = sorted(row["p"] for row in compared)
    by_p = sorted((row["p"], row["p_holm"]) for row in compared)
    assert by_p[0][1] == pytest.approx(2 * ps[0])  # smallest p: times m = 2
    assert by_p[1][1] == pytest.approx(max(2 * ps[0], ps[1]))


def test_world_size_drift():
    rows = []
    for workers, scope, shift in ((1, "global", 0), (2, "global", 1e-6), (1, "local", 0),
                                  (2, "local", 0.05)):
        for epoch in (1, 2):
            rows.append({"variant": f"dot:minmax:{scope}", "workers": workers, "seed": 0,
                         "epoch": epoch, "train_loss": 1.0 + shift, "val_acc": 0.5})
    drift = {d["variant"]: d for d in reports.world_size_drift(pd.DataFrame(rows))}
    assert drift["dot:minmax:global"]["verdict"] == "stays put (round-off)"
    assert drift["dot:minmax:local"]["verdict"] == "drifts"


def test_report_on_a_folder_that_is_not_a_sweep(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a dotsim sweep folder" in result.output


def test_sweep_resume_refuses_the_options_it_would_ignore(tmp_path):
    """--resume continues the sweep as defined: --epochs or --max-concurrent given with it
    are refused (dropping them without a word would run another sweep than asked); --json
    may be given."""
    result = CliRunner().invoke(cli, ["sweep", "--resume", str(tmp_path), "--epochs", "10",
                                      "--max-concurrent", "4", "--json"])
    assert result.exit_code == 2
    assert "drop --epochs, --max-concurrent" in result.output
    result = CliRunner().invoke(cli, ["sweep", "--resume", str(tmp_path), "--json"])
    assert result.exit_code == 2 and "not a dotsim sweep folder" in result.output


def test_an_interrupted_sweep_still_lists_its_failed_trials(capsys, monkeypatch):
    """Ctrl-C during a sweep with a failed trial: the failure, then the way to resume,
    exit 130 (the sweep itself is replaced by one that raises what Tune's would)."""
    from types import SimpleNamespace

    from orchestrator import sweep as sweeps
    from orchestrator.cli import main

    failed = SimpleNamespace(name="cosine-seed1", error="RuntimeError: worker died")

    def interrupted(folder, **_):
        raise sweeps.SweepInterrupted("sweep interrupted; continue it: ...", [failed])
    monkeypatch.setattr(sweeps, "resume", interrupted)
    with pytest.raises(SystemExit) as done:
        main(["sweep", "--resume", "/nowhere"])
    err = capsys.readouterr().err
    assert done.value.code == 130
    assert "trial cosine-seed1 failed: RuntimeError: worker died" in err
    assert err.index("failed") < err.index("sweep interrupted")


def test_a_sweep_with_failed_trials_lists_them_prints_its_report_and_exits_1(tmp_path,
                                                                          capsys, monkeypatch):
    from types import SimpleNamespace

    from orchestrator import sweep as sweeps
    from orchestrator.cli import main

    write_sweep(tmp_path, [*trial_rows("cosine", 0, 0.5), *trial_rows("cosine", 1, 0.6),
                           *trial_rows("dot:minmax:global", 0, None, epochs=0,
                                       status="ERROR", error="OSError: disk full")])
    failed = SimpleNamespace(name="dot-minmax-global-seed0", error="OSError: disk full")

    def with_failure(folder, **_):
        raise sweeps.SweepFailed("1 of 3 trials failed; ...", [failed])
    monkeypatch.setattr(sweeps, "resume", with_failure)
    with pytest.raises(SystemExit) as done:
        main(["sweep", "--resume", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert done.value.code == 1
    assert json.loads(out)["left_out"]["failed"][0]["trial"] == "dot:minmax:global-0"
    lines = err.strip().splitlines()
    assert lines[0] == "dotsim: trial dot-minmax-global-seed0 failed: OSError: disk full"
    assert lines[-1] == "dotsim: 1 of 3 trials failed; ..."


def test_damaged_tune_state_is_an_error_not_an_empty_sweep(tmp_path):
    """Only "no state saved yet" reads as no trials; a damaged state file (damaged here by
    the test, under Tune's own file name) must not make every trial look pending."""
    from orchestrator import sweep as sweeps

    tune_dir = tmp_path / TUNE_NAME
    tune_dir.mkdir()
    assert sweeps._tune_states(str(tmp_path)) == {}
    (tune_dir / "experiment_state-2026-12-01_10-00-00.json").write_text("{not json")
    with pytest.raises(ValueError):
        sweeps._tune_states(str(tmp_path))


def test_a_failure_inside_a_library_is_not_a_user_error(tmp_path, capsys, monkeypatch):
    """A ValueError from pyarrow (a damaged results.parquet) is a failure: exit 1, one line
    that says how to see the traceback; only dotsim's own InputError is exit 2."""
    from orchestrator.cli import main

    (tmp_path / "sweep.json").write_text(json.dumps({"trials": [], "study": None}))
    (tmp_path / "results.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 1
    assert len(err.strip().splitlines()) == 1 and "DOTSIM_DEBUG=1" in err
    assert "Traceback" not in err
    monkeypatch.setenv("DOTSIM_DEBUG", "1")  # the traceback, and the same exit code
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "Traceback" in err and "Parquet" in err
    with pytest.raises(SystemExit) as done:  # a user error stays exit 2
        main(["report", str(tmp_path / "nowhere")])
    assert done.value.code == 2 and "Traceback" in capsys.readouterr().err


# --- submit ------------------------------------------------------------------------------


class FakeStatus:
    def __init__(self, value):
        self.value = value


@pytest.fixture
def fake_client(monkeypatch):
    client = mock.MagicMock()
    client.submit_job.return_value = "raysubmit_1"
    client.get_job_status.return_value = FakeStatus("SUCCEEDED")
    client.get_job_logs.return_value = "log line\n"
    client.stop_job.return_value = True

    async def tail(job_id):
        yield "epoch 1\n"
    client.tail_job_logs = tail
    factory = mock.MagicMock(return_value=client)
    monkeypatch.setattr(jobs, "JobSubmissionClient", factory)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-token")
    return factory, client


def test_submit_sends_the_cli_as_a_job(fake_client):
    factory, client = fake_client
    result = CliRunner().invoke(cli, ["submit", "--address", "http://head:8265", "--",
                                      "train", "--epochs", "3", "--run-name", "a b"])
    assert result.exit_code == 0, result.output
    factory.assert_called_once_with("http://head:8265",
                                    headers={"Authorization": "Bearer secret-token"})
    client.submit_job.assert_called_once_with(
        entrypoint="dotsim train --epochs 3 --run-name 'a b'",
        runtime_env={"working_dir": ".", "excludes": jobs.EXCLUDES,
                     "env_vars": {"DOTSIM_CODE_VERSION": code_version()}})
    assert "epoch 1" in result.stdout and "SUCCEEDED" in result.output


def test_a_submitted_job_records_the_commit_it_was_sent_from(fake_client, monkeypatch):
    """The upload leaves .git out, so the commit travels in the job's environment, and the
    job's run records read it from there."""
    _, client = fake_client
    monkeypatch.setattr(jobs, "code_version", lambda: "0123abcd-dirty")
    CliRunner().invoke(cli, ["submit", "--no-wait", "--address", "http://h:8265", "--",
                             "train"])
    sent = client.submit_job.call_args.kwargs["runtime_env"]["env_vars"]
    monkeypatch.setenv("DOTSIM_CODE_VERSION", sent["DOTSIM_CODE_VERSION"])
    assert code_version() == "0123abcd-dirty"


def test_the_code_version_is_the_commit_of_a_checkout_else_the_package(tmp_path,
                                                                       monkeypatch):
    import subprocess

    monkeypatch.delenv("DOTSIM_CODE_VERSION", raising=False)
    assert code_version(tmp_path) == "dotsim 0.1.0"  # not a git checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "f.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert code_version(tmp_path) == commit
    (tmp_path / "f.py").write_text("x = 2\n")
    assert code_version(tmp_path) == commit + "-dirty"


def test_ray_client_addresses_are_refused_with_the_way_on():
    result = CliRunner().invoke(cli, ["train", "--address", "ray://127.0.0.1:10001"])
    assert result.exit_code == 2
    assert "Ray Client (ray://) is not supported" in result.output
    assert "dotsim submit" in result.output


def test_submit_prints_the_job_id_before_following_it(fake_client, capsys):
    """As `ray job submit` does: the id and the commands come first, so Ctrl-C (or a dropped
    tunnel) while the logs stream does not lose the job."""
    from orchestrator.cli import main

    _, client = fake_client

    async def interrupted(job_id):
        raise KeyboardInterrupt
        yield
    client.tail_job_logs = interrupted
    with pytest.raises(SystemExit) as done:
        main(["submit", "--address", "http://head:8265", "--", "train"])
    err = capsys.readouterr().err
    assert done.value.code == 130
    assert err.index("Job raysubmit_1 submitted.") < err.index("dotsim: aborted")
    for action in ("status", "logs", "stop"):
        assert f"dotsim job {action} raysubmit_1 --address http://head:8265" in err


def test_submit_exits_non_zero_when_the_job_fails(fake_client):
    _, client = fake_client
    client.get_job_status.return_value = FakeStatus("FAILED")
    result = CliRunner().invoke(cli, ["submit", "--address", "http://h:8265", "--", "train"])
    assert result.exit_code == 1


def test_submit_no_wait_prints_the_job_id(fake_client):
    _, client = fake_client
    result = CliRunner().invoke(cli, ["submit", "--no-wait", "--address", "http://h:8265",
                                      "--working-dir", "", "--", "sweep", "--seeds", "2"])
    assert result.exit_code == 0 and result.stdout.strip() == "raysubmit_1"
    client.submit_job.assert_called_once_with(entrypoint="dotsim sweep --seeds 2",
                                              runtime_env=None)


def test_submit_address_from_environment(fake_client, monkeypatch):
    factory, _ = fake_client
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    result = CliRunner().invoke(cli, ["job", "status", "raysubmit_1"])
    assert result.exit_code == 0 and result.output.strip() == "SUCCEEDED"
    assert factory.call_args.args == ("http://from-env:8265",)


@pytest.mark.parametrize("action,method,printed", [("logs", "get_job_logs", "log line"),
                                                   ("stop", "stop_job", "stopped")])
def test_job_logs_and_stop(fake_client, action, method, printed):
    _, client = fake_client
    result = CliRunner().invoke(cli, ["job", action, "j1", "--address", "http://h:8265"])
    assert result.exit_code == 0 and printed in result.output
    getattr(client, method).assert_called_once_with("j1")


def test_submit_refuses_the_old_job_verbs_and_what_is_not_a_command(fake_client):
    """`dotsim submit status ID` would send `dotsim status ID` to the cluster as a job."""
    _, client = fake_client
    result = CliRunner().invoke(cli, ["submit", "--address", "http://h:8265", "status", "j1"])
    assert result.exit_code == 2 and "job verb" in result.output
    assert "dotsim job status JOB_ID" in result.output
    result = CliRunner().invoke(cli, ["submit", "--address", "http://h:8265", "--", "trian"])
    assert result.exit_code == 2 and "'trian' is not a dotsim command" in result.output
    client.submit_job.assert_not_called()


def test_submit_token_from_file(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token = tmp_path / "tok"
    token.write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert jobs.auth_headers() == {"Authorization": "Bearer from-file"}
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.auth_headers() == {}


def test_submit_without_address_or_command(fake_client, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(cli, ["submit", "--", "train"])
    assert result.exit_code == 2 and "no cluster address" in result.output
    result = CliRunner().invoke(cli, ["submit", "--address", "http://h:8265"])
    assert result.exit_code == 2 and "nothing to submit" in result.output


def test_submit_unreachable_address_is_one_line(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["job", "status", "x", "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "cannot reach the Ray Jobs API" in result.output


def test_json_report_shape(tmp_path):
    """A report built from a hand-made sweep folder (no Ray): JSON and Markdown agree."""
    write_sweep(tmp_path, [row for variant, acc in (("cosine", 0.5), ("dot:minmax:global", 0.6))
                           for seed in (0, 1) for row in trial_rows(variant, seed,
                                                                     acc + seed * 0.01)])
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [v["variant"] for v in doc["variants"]] == ["cosine", "dot:minmax:global"]
    assert doc["paired"][0]["mean_diff"] == pytest.approx(0.1)
    assert Path(doc["plot"]).is_file()
    markdown = CliRunner().invoke(cli, ["report", str(tmp_path), "--no-plot"]).stdout
    assert "| dot:minmax:global | - | 2 |" in markdown
    test_acc = doc["variants"][1]["test_acc"]  # the compared metric: t, and no bootstrap
    assert test_acc["bootstrap95"] is None  # at 2 seeds (tests/test_report_decisions.py)
    assert f"{test_acc['mean']:.3f} ± {test_acc['ci95']:.3f} |" in markdown
    assert "Bootstrap shown from 13 seeds: below, it covers less than 90%." in markdown
    unknown = CliRunner().invoke(cli, ["report", str(tmp_path), "--baseline", "dot:minmax"])
    assert unknown.exit_code == 2
    assert "variants: cosine, dot:minmax:global" in unknown.stderr  # not silently another


def test_report_keeps_failed_trials_apart_from_stopped_ones(tmp_path):
    """A failed trial (with its error) and an ASHA-stopped one are listed separately and
    left out of the intervals."""
    write_sweep(tmp_path, [*trial_rows("cosine", 0, 0.5, epochs=1),
                           *trial_rows("cosine", 1, None, epochs=1, status="STOPPED"),
                           *trial_rows("cosine", 2, None, epochs=0, status="ERROR",
                                       error="RuntimeError: worker died")])
    report = reports.build_report(str(tmp_path))
    assert report["left_out"]["failed"] == [
        {"trial": "cosine-2", "epochs_done": 0, "error": "RuntimeError: worker died"}]
    assert [t["trial"] for t in report["left_out"]["stopped early by the scheduler"]] == [
        "cosine-1"]
    assert report["variants"][0]["seeds"] == [0]
    markdown = reports.to_markdown(report)
    assert "Left out, failed:\n- cosine-2 (0 epochs): RuntimeError: worker died" in markdown


def test_submit_retries_while_the_job_agent_starts(fake_client, monkeypatch):
    _, client = fake_client
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    client.submit_job.side_effect = [
        RuntimeError("Request failed with status code 500: No available agent to submit job"),
        "raysubmit_2"]
    result = CliRunner().invoke(cli, ["submit", "--no-wait", "--address", "http://h:8265",
                                      "--", "train"])
    assert result.exit_code == 0 and result.stdout.strip() == "raysubmit_2"
    assert client.submit_job.call_count == 2


def test_concurrency_on_fixed_and_autoscaling_clusters():
    from orchestrator.plan import concurrency
    from workers.config import RunConfig

    trials = [{"seed": s} for s in range(5)]
    eight = {"CPU": 8.0}
    assert concurrency(RunConfig(workers=2), trials, eight) == 4
    assert concurrency(RunConfig(workers=2), trials, eight, 3) == 3
    # more at once than the cluster can place: refused up front, not fewer seeds later
    with pytest.raises(InputError, match="--max-concurrent 5 cannot be placed.*room for 4"):
        concurrency(RunConfig(workers=2), trials, eight, 5)
    # one run (dotsim train) that does not fit a fixed cluster
    with pytest.raises(InputError, match="4 workers x 1 CPUs does not fit.*lower --workers"):
        concurrency(RunConfig(workers=4), [{}], {"CPU": 2.0})
    with pytest.raises(InputError, match="2 GPUs"):
        concurrency(RunConfig(workers=2, gpu=True), [{}], {"CPU": 8.0, "GPU": 1.0})
    # GPU workers on a cluster that scales up from zero GPUs
    gpu = RunConfig(workers=2, gpu=True)
    assert concurrency(gpu, trials, eight, 2, elastic=True) == 2
    assert concurrency(gpu, trials, eight, None, elastic=True) == 1


def test_trials_stay_on_the_head_of_a_cluster_from_cluster_yaml(monkeypatch):
    from orchestrator import sweep as sweeps

    monkeypatch.setattr(sweeps.ray, "cluster_resources", lambda: {"CPU": 8.0})
    assert sweeps.trial_resources() == {"CPU": 0, "memory": 2**20}
    monkeypatch.setattr(sweeps.ray, "cluster_resources",
                        lambda: {"CPU": 8.0, launcher.HEAD_RESOURCE: 1000.0})
    assert sweeps.trial_resources()[launcher.HEAD_RESOURCE] == 1
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert launcher.HEAD_RESOURCE in config["available_node_types"]["head"]["resources"]


def test_the_report_reads_only_metrics_the_training_loop_defines():
    """One definition of the metrics: every metric the report summarises is one that
    workers/metrics.py names (the derived ones are computed from them)."""
    from workers.metrics import EPOCH_METRICS, FINAL_METRICS, FSKIL_HEADLINE

    derived = {"val_acc_final", "val_acc_best", "minutes"}
    assert set(reports.SUMMARY_METRICS) - derived <= set(EPOCH_METRICS) | set(FINAL_METRICS)
    assert set(reports.FSKIL_METRICS) == set(FSKIL_HEADLINE)


def _fskil_finals(acc: float) -> dict:
    """The final metrics of an FSKIL trial whose every accuracy is ``acc`` (the log-mel
    baseline's 0.1), session 0 without new words."""
    from workers.metrics import FSKIL_HEADLINE, FSKIL_KINDS, LOGMEL_HEADLINE, session_metric

    finals = dict.fromkeys(FSKIL_HEADLINE, acc) | dict.fromkeys(LOGMEL_HEADLINE, 0.1)
    for session in range(6):
        for kind in FSKIL_KINDS:
            none = session == 0 and kind in ("unseen", "harmonic")
            finals[session_metric(session, kind)] = None if none else acc
            finals[session_metric(session, kind, "logmel")] = None if none else 0.1
    return finals


def test_fskil_report_from_a_hand_made_sweep(tmp_path):
    """Under FSKIL the report compares the headline numbers, adds the log-mel baseline's
    row, a per-session table of the four accuracies, and sessions.png."""
    rows = [row for variant, acc in (("cosine", 0.8), ("dot:meanstd:global", 0.85))
            for seed in (0, 1)
            for row in trial_rows(variant, seed, 0.9, **_fskil_finals(acc + seed * 0.01))]
    write_sweep(tmp_path, rows, protocol="fskil")
    report = reports.make(str(tmp_path))
    assert report["protocol"] == "fskil"
    assert [v["variant"] for v in report["variants"]] == [
        "cosine", "dot:meanstd:global", "log-mel baseline (no training)"]
    assert report["variants"][-1]["fskil_mean_acc"]["mean"] == pytest.approx(0.1)
    assert [p["metric"] for p in report["paired"]] == [
        "fskil_mean_acc", "fskil_last_acc", "fskil_last_harmonic"]
    assert all(p["mean_diff"] == pytest.approx(0.05) for p in report["paired"])
    table = {v["variant"]: v["sessions"] for v in report["sessions"]}
    assert set(table) == {"cosine", "dot:meanstd:global", "log-mel baseline (no training)"}
    assert all(len(sessions) == 6 for sessions in table.values())
    assert table["cosine"][0]["unseen"]["mean"] is None  # no new word yet in session 0
    assert table["cosine"][5]["harmonic"]["mean"] == pytest.approx(0.805)
    assert (tmp_path / "sessions.png").stat().st_size > 10_000
    markdown = reports.to_markdown(report)
    assert "## FSKIL headline numbers" in markdown and "## FSKIL sessions" in markdown


def test_a_variant_has_one_colour_in_every_plot(tmp_path):
    """In the report's order of variants (here not alphabetical), whatever each plot groups
    its lines by."""
    rows = [row for variant, acc in (("cosine", 0.8), ("ce-only", 0.7)) for seed in (0, 1)
            for row in trial_rows(variant, seed, 0.9, **_fskil_finals(acc))]
    write_sweep(tmp_path, rows, protocol="fskil")
    report = reports.build_report(str(tmp_path))
    colour = reports.colours(report)

    def line_colours(figure):
        return {line.get_label(): line.get_color() for ax in figure.axes
                for line in ax.get_lines() if not line.get_label().startswith("_")}

    comparison = line_colours(reports.comparison_figure(reports.load_results(str(tmp_path)),
                                                        colour))
    sessions = line_colours(reports.sessions_figure(report, colour))
    assert comparison == {"cosine": "C0", "ce-only": "C1"}
    assert sessions == comparison | {"log-mel baseline (no training)": "0.4"}


def test_submit_refuses_a_working_dir_without_gitignore(fake_client, tmp_path):
    """The upload leaves out what .gitignore lists: without one it would send a venv, data
    and results (gigabytes) with every job."""
    _, client = fake_client
    result = CliRunner().invoke(cli, ["submit", "--no-wait", "--address", "http://h:8265",
                                      "--working-dir", str(tmp_path), "--", "train"])
    assert result.exit_code == 2 and "has no .gitignore" in result.output
    client.submit_job.assert_not_called()
    (tmp_path / ".gitignore").write_text("/data/\n")
    result = CliRunner().invoke(cli, ["submit", "--no-wait", "--address", "http://h:8265",
                                      "--working-dir", str(tmp_path), "--", "train"])
    assert result.exit_code == 0, result.output
    assert client.submit_job.call_args.kwargs["runtime_env"]["working_dir"] == str(tmp_path)


def test_submit_refuses_a_password_in_the_command(fake_client):
    _, client = fake_client
    result = CliRunner().invoke(cli, ["submit", "--address", "http://h:8265", "--", "train",
                                      "--tracker", "mlflow:https://ana:s3cr3t@m:5000"])
    assert result.exit_code == 2 and "s3cr3t" not in result.output
    assert "user:password" in result.output
    client.submit_job.assert_not_called()
