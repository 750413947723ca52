"""A real two-node Ray cluster on 127.0.0.1 (`ray start --head`, `ray start --address`),
with token authentication on and an isolated HOME, shared by this module's tests:
`dotsim submit` sends a tiny training job that ends SUCCEEDED, the Jobs API refuses
requests without the token, `dotsim train --address` sends the token, a run's Train
controller waits for new nodes as long as dotsim asks, and a job's upload leaves out what
the cluster's rsync leaves out."""

import json
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
from tiny import tiny_options

pytestmark = [pytest.mark.ray, pytest.mark.slow]

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


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("cluster") / "home"
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
        yield {"env": env, "jobs": f"http://127.0.0.1:{dashboard}", "token": token,
               "gcs": f"127.0.0.1:{gcs}"}
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
           *tiny_options(epochs=1), "--run-name", "on-cluster"]
    done = subprocess.run(cmd, env=two_node_cluster["env"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SUCCEEDED" in done.stderr
    assert "test_acc" in done.stdout  # the job's own output, streamed back
    assert any((tmp_path / "runs" / "on-cluster").glob("checkpoint_*"))


DRIVER = """
import json, os, sys, ray
from orchestrator.launch import START_TIMEOUT_ENV, launch, ray_session
from tiny import tiny_config

class Probe(ray.train.UserCallback):  # runs in the Train controller's process
    def __init__(self, path):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "w") as f:
            f.write(os.environ.get(START_TIMEOUT_ENV, "unset"))

with ray_session(sys.argv[1]):
    cfg = tiny_config(sys.argv[2], sys.argv[3], workers=1, epochs=1, run_name="probe")
    launch(cfg, callbacks=[Probe(sys.argv[4])], progress=False)
print("driver keeps", os.environ.get(START_TIMEOUT_ENV))
"""


def test_the_train_controller_waits_for_new_nodes(two_node_cluster, small_prepared, tmp_path):
    """A run's Train controller waits START_TIMEOUT_S for its worker group (GPU nodes take
    minutes to join), and the launching process's environment is left as it was."""
    from orchestrator.launch import START_TIMEOUT_S

    seen = tmp_path / "controller-env"
    done = subprocess.run([sys.executable, "-c", DRIVER, two_node_cluster["gcs"],
                           str(small_prepared), str(tmp_path / "runs"), str(seen)],
                          env={**two_node_cluster["env"],
                               "PYTHONPATH": os.pathsep.join(sys.path)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert seen.read_text() == str(START_TIMEOUT_S)
    assert "driver keeps None" in done.stdout


def test_train_by_address_sends_the_ray_token(two_node_cluster, small_prepared, tmp_path):
    """`dotsim train --address HEAD:PORT` from a shell with a token in ~/.ray/auth_token
    and RAY_AUTH_MODE unset: the CLI puts Ray in token mode before Ray is imported."""
    env = {k: v for k, v in two_node_cluster["env"].items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run([str(BIN / "dotsim"), "train", "--address", two_node_cluster["gcs"],
                           "--data", str(small_prepared), "--storage-path",
                           str(tmp_path / "runs"), *tiny_options(workers=1, epochs=1),
                           "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["metrics"]["epoch"] == 1


LIST_FILES = ("import os; print(sorted(os.path.relpath(os.path.join(d, f)) "
              "for d, _, fs in os.walk('.') for f in fs))")


def test_a_job_uploads_what_the_cluster_sync_sends(two_node_cluster, tmp_path):
    """`dotsim submit`'s working-dir upload, on a real Jobs API, leaves out exactly what
    cluster.yaml's rsync leaves out: one list (.gitignore, and .git)."""
    import ast
    import time

    from ray.job_submission import JobSubmissionClient
    from test_cluster_config import NOT_SYNCED, SOURCE

    from orchestrator import submit as jobs

    checkout = tmp_path / "checkout"
    for name in SOURCE + NOT_SYNCED:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("x")
    shutil.copy(Path(__file__).parents[1] / ".gitignore", checkout / ".gitignore")
    client = JobSubmissionClient(two_node_cluster["jobs"],
                                 headers={"Authorization": f"Bearer {two_node_cluster['token']}"})
    job = client.submit_job(entrypoint=f'python -c "{LIST_FILES}"',
                            runtime_env=jobs.runtime_env(str(checkout)))
    deadline = time.monotonic() + 120
    while not client.get_job_status(job).is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
    assert client.get_job_status(job).value == "SUCCEEDED", client.get_job_logs(job)
    uploaded = ast.literal_eval(client.get_job_logs(job).strip().splitlines()[-1])
    assert set(uploaded) == set(SOURCE)
