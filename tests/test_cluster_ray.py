"""A real two-node Ray cluster on 127.0.0.1 (`ray start --head`, `ray start --address`),
with token authentication on and an isolated HOME: `dotsim submit` sends a tiny training
job that ends SUCCEEDED, and the Jobs API refuses requests without the token."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Ports a node's agents would otherwise take at fixed defaults: two nodes on one
    machine (and any other Ray running here, such as the test session's) would clash."""
    return [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port")]


def _kill_cluster(marker: str) -> None:
    """Kill exactly this cluster's processes (their command lines name its temp dir);
    `ray stop` would also stop every other Ray on the machine."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if marker in cmdline and int(proc.name) != os.getpid():
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def two_node_cluster(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(16)
    (home / ".ray" / "auth_token").write_text(token)
    temp_dir = Path("/tmp") / f"dotsim-{secrets.token_hex(4)}"  # short: socket paths
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = _free_port(), _free_port()
    ray = [str(BIN / "ray")]
    subprocess.run([*ray, "start", "--head", f"--port={gcs}", "--num-cpus=1",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}",
                    f"--ray-client-server-port={_free_port()}", *_node_ports(),
                    "--disable-usage-stats"], env=env, check=True, capture_output=True)
    try:
        subprocess.run([*ray, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                        *_node_ports(), "--disable-usage-stats"],
                       env=env, check=True, capture_output=True)
        yield {"env": env, "jobs": f"http://127.0.0.1:{dashboard}", "token": token}
    finally:
        _kill_cluster(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_jobs_api_needs_the_token(two_node_cluster):
    url = two_node_cluster["jobs"] + "/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 401
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {two_node_cluster['token']}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


def test_submit_tiny_train_job_succeeds(two_node_cluster, small_prepared, tmp_path):
    cmd = [str(BIN / "dotsim"), "submit", "--address", two_node_cluster["jobs"],
           "--working-dir", "", "--",
           "train", "--data", str(small_prepared), "--storage-path", str(tmp_path / "runs"),
           "--preset", "tiny", "--epochs", "1", "--batch-size", "32", "--clips-per-class",
           "2", "--workers", "2", "--run-name", "on-cluster"]
    done = subprocess.run(cmd, env=two_node_cluster["env"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SUCCEEDED" in done.stderr
    assert "test_acc" in done.stdout  # the job's own output, streamed back
    assert any((tmp_path / "runs" / "on-cluster").glob("checkpoint_*"))
