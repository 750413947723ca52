"""Security defaults of a local Ray that dotsim starts with --dashboard: the dashboard and
Jobs API listen on 127.0.0.1 only, and token authentication is on (401 without it)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PROBE = r"""
import json, urllib.error, urllib.request
import psutil
from orchestrator.launch import ray_session

with ray_session(num_cpus=1, dashboard=True) as context:
    url = "http://" + context.dashboard_url
    port = int(url.rsplit(":", 1)[1])
    family = {psutil.Process().pid} | {c.pid for c in psutil.Process().children(recursive=True)}
    listening = [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in family]
    def status(headers):
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/api/jobs/",
                                                               headers=headers), timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code
    token = open(__import__("os").path.expanduser("~/.ray/auth_token")).read().strip()
    print(json.dumps({"port": port, "listening": listening, "no_token": status({}),
                      "token": status({"Authorization": "Bearer " + token})}))
"""


def test_local_dashboard_is_private_and_needs_the_token(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_MODE", None)  # Ray's own default for a local cluster: token on
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    dashboard = [ip for ip, port in probe["listening"] if port == probe["port"]]
    assert dashboard == ["127.0.0.1"]
    assert probe["no_token"] == 401 and probe["token"] == 200
    assert (tmp_path / ".ray" / "auth_token").is_file()
