"""cluster.yaml and `dotsim cluster` without a cloud.

A real `ray up` on AWS cannot run here: there are no AWS credentials and no network. So
these tests check what can be checked offline, each with Ray's own code where Ray has it:
the file against Ray's schema (`prepare_config` + `validate_config`, as `ray up` does);
what Ray's rsync command (`SSHCommandRunner.run_rsync_up`, with `rsync_exclude` and
`rsync_filter`) copies from a checkout, run locally with rsync; the token-auth, dashboard
and head-resource settings; and that `dotsim cluster up` stops with exit 2 and one line,
before `ray up` is called, when boto3, AWS credentials or a file to sync are missing.
Only the `ray up` subprocess call is patched, and only to see whether it was made.
"""

import copy
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import types
from pathlib import Path
from unittest import mock

import pytest
import ray
import yaml
from click.testing import CliRunner

from orchestrator import cluster as launcher
from orchestrator.auth import TOKEN_FILE
from orchestrator.cli import cli

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
CONTAINER_HOME = "/home/ray"  # HOME of the rayproject/ray images' user
FILLED = {"ami-00000000000000000": "ami-0123456789abcdef0",
          "fs-00000000": "fs-0123456789abcdef0"}


def filled_in(tmp_path: Path, keep: tuple[str, ...] = ()) -> Path:
    """cluster.yaml with its placeholders replaced (except those in ``keep``)."""
    text = CLUSTER_YAML.read_text()
    for placeholder, value in FILLED.items():
        if placeholder not in keep:
            text = text.replace(placeholder, value)
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


# --- Ray's validation and the placeholders ------------------------------------------------


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config())))


def test_filled_in_cluster_yaml_passes_validate(tmp_path):
    text = CLUSTER_YAML.read_text().lower()
    for secret in ("aws_access_key", "secret", "password", "token:"):
        assert secret not in text  # credentials come from the environment, never the file
    path = filled_in(tmp_path)
    assert launcher.validate(path)["available_node_types"]["gpu_worker"]["node_config"][
        "ImageId"] == FILLED["ami-00000000000000000"]
    result = CliRunner().invoke(cli, ["cluster", "validate", "--config", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("keep,keys", [
    (("fs-00000000",), ["initialization_commands/1"]),
    (("ami-00000000000000000",), ["available_node_types/head/node_config/ImageId",
                                  "available_node_types/gpu_worker/node_config/ImageId"]),
    (tuple(FILLED), ["initialization_commands/1", "ImageId"]),
])
def test_placeholders_are_refused_with_one_line(tmp_path, keep, keys):
    path = filled_in(tmp_path, keep=keep)
    with mock.patch("orchestrator.cluster.subprocess.call") as call:
        for action in ("validate", "up"):
            result = CliRunner().invoke(cli, ["cluster", action, "--config", str(path)])
            assert result.exit_code == 2, result.output
            line = one_line(result)
            assert all(key in line for key in keys), line
            assert all(placeholder in line for placeholder in keep), line
            assert "replace the placeholder" in line and "Traceback" not in result.output
    call.assert_not_called()


def test_shipped_cluster_yaml_names_both_placeholders():
    result = CliRunner().invoke(cli, ["cluster", "validate", "--config", str(CLUSTER_YAML)])
    assert result.exit_code == 2
    line = one_line(result)
    assert "ImageId" in line and "EFS file system's id" in line
    assert "Deep Learning Base OSS Nvidia Driver GPU AMI" in line


def test_the_image_carries_the_launchers_ray_and_python():
    """Head and client must agree on Ray, and the image's Python on pyproject's."""
    image = config()["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    floor = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor == ">=3.11"


@pytest.mark.parametrize("damage", ["typo_top", "typo_node", "not_yaml", "wrong_type"])
def test_broken_cluster_yaml_is_rejected(tmp_path, damage):
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    broken = copy.deepcopy(config)
    if damage == "typo_top":
        broken["max_worker"] = broken.pop("max_workers")
    elif damage == "typo_node":
        broken["available_node_types"]["gpu_worker"]["min_worker"] = 0
    elif damage == "wrong_type":
        broken["max_workers"] = "four"
    path = tmp_path / "cluster.yaml"
    path.write_text("{[not yaml" if damage == "not_yaml" else yaml.safe_dump(broken))
    with pytest.raises(ValueError):
        launcher.validate(path)
    result = CliRunner().invoke(cli, ["cluster", "up", "--config", str(path)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("action,tail", [("down", ["down", "-y"]), ("status", ["exec"]),
                                         ("dashboard", ["dashboard"])])
def test_cluster_actions_call_ray_launcher(tmp_path, action, tail):
    path = filled_in(tmp_path)
    with mock.patch("orchestrator.cluster.subprocess.call", return_value=0) as call:
        result = CliRunner().invoke(cli, ["cluster", action, "--config", str(path)])
    assert result.exit_code == 0, result.output
    argv = call.call_args.args[0]
    assert argv[1:3] == ["-m", "ray.scripts.scripts"] and argv[3:3 + len(tail)] == tail
    assert argv[-1 if action != "status" else -2] == str(path)


# --- what gets synced ---------------------------------------------------------------------


SOURCE = ["pyproject.toml", "README.md", ".gitignore", "losses/__init__.py",
          "workers/data.py", "workers/train.py", "orchestrator/cli.py", "tests/test_x.py",
          ".ci/run"]
NOT_SYNCED = [".venv/lib/python3.11/site-packages/torch/__init__.py", ".venv/pyvenv.cfg",
              ".git/HEAD", ".git/objects/ab/cdef", "data/sc2/meta.json",
              "data/sc2/train/part-0.parquet", "results/sweep/results.parquet",
              "workers/__pycache__/data.cpython-311.pyc", "__pycache__/x.pyc",
              ".pytest_cache/v/cache/nodeids", ".ruff_cache/0.6/x", ".hypothesis/examples/x",
              "dotsim.egg-info/PKG-INFO", "build/lib/losses/__init__.py", "stray.parquet"]


def rays_rsync_command(source: str, target: str, options: dict) -> list[str]:
    """The rsync command Ray's SSHCommandRunner builds for a file mount, with its ssh
    transport and remote host taken out so that it runs locally."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    recorded = []
    runner = SSHCommandRunner(
        log_prefix="", node_id="node", provider=None,
        auth_config={"ssh_user": "ubuntu", "ssh_proxy_use_node_id": True},
        cluster_name="dotsim", use_internal_ip=False,
        process_runner=types.SimpleNamespace(
            DEVNULL=subprocess.DEVNULL, check_call=lambda cmd, **kw: recorded.append(cmd)))
    runner.run_rsync_up(source, target, options=options)
    (argv,) = recorded
    rsh = argv.index("--rsh")
    argv = argv[:rsh] + argv[rsh + 2:]
    assert argv[0] == "rsync" and argv[-1] == f"ubuntu@node:{target}"
    return argv[:-1] + [target]


def sync(source: Path, target: Path, options: dict) -> set[str]:
    """Sync a folder as Ray's updater does (trailing slashes on both ends), return what
    arrived."""
    argv = rays_rsync_command(f"{source}/", f"{target}/", options)
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode in (0, 24), done.stderr  # 24: a file vanished while copying
    return {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}


@pytest.fixture
def rsync_options():
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (`ray up` needs it too: apt-get install rsync)")
    c = config()
    return {"rsync_exclude": c["rsync_exclude"], "rsync_filter": c["rsync_filter"]}


def test_only_the_source_is_synced_to_the_head_and_on_to_the_workers(tmp_path,
                                                                     rsync_options):
    checkout = tmp_path / "checkout"
    for name in SOURCE + NOT_SYNCED:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("x")
    shutil.copy(REPO / ".gitignore", checkout / ".gitignore")
    head = sync(checkout, tmp_path / "head", rsync_options)
    assert head == set(SOURCE)
    # the head's autoscaler syncs its copy to each worker with the same options
    assert sync(tmp_path / "head", tmp_path / "worker", rsync_options) == set(SOURCE)


def test_the_real_checkout_syncs_its_source_and_nothing_heavy(tmp_path, rsync_options):
    synced = sync(REPO, tmp_path / "head", rsync_options)
    for name in ("pyproject.toml", "README.md", "orchestrator/cluster.py",
                 "workers/train.py", "losses/__init__.py"):
        assert name in synced
    heavy = [".venv", ".git", "data", "results", "__pycache__", ".pytest_cache",
             ".ruff_cache", ".hypothesis", "dotsim.egg-info"]
    assert not [n for n in synced if set(Path(n).parts) & set(heavy)]
    assert not [n for n in synced if n.endswith((".parquet", ".pyc"))]
    assert sum((tmp_path / "head" / n).stat().st_size for n in synced) < 20 * 2**20


def test_single_file_mounts_are_not_filtered_out(tmp_path, rsync_options):
    """The token and Ray's bootstrap files are synced with the same options."""
    for name in ("auth_token", "ray-bootstrap-abc123", "ray_bootstrap_key.pem"):
        (tmp_path / name).write_text("x")
        argv = rays_rsync_command(str(tmp_path / name), str(tmp_path / f"{name}.copy"),
                                  rsync_options)
        subprocess.run(argv, check=True, capture_output=True)
        assert (tmp_path / f"{name}.copy").read_text() == "x"


def test_the_train_settings_are_variables_ray_train_reads_and_hands_to_its_controller():
    from ray.train.v2._internal.constants import (
        ENV_VARS_TO_PROPAGATE,
        HEALTH_CHECK_INTERVAL_S_ENV_VAR,
        WORKER_GROUP_START_TIMEOUT_S_ENV_VAR,
    )

    from orchestrator.launch import (
        POLL_INTERVAL_ENV,
        POLL_INTERVAL_S,
        START_TIMEOUT_ENV,
        START_TIMEOUT_S,
    )

    assert START_TIMEOUT_ENV == WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
    assert POLL_INTERVAL_ENV == HEALTH_CHECK_INTERVAL_S_ENV_VAR
    # set in the fitting process, they reach the controller, which reads them
    assert {START_TIMEOUT_ENV, POLL_INTERVAL_ENV} <= ENV_VARS_TO_PROPAGATE
    assert START_TIMEOUT_S >= 600  # a GPU node boots, pulls the image, installs torch
    assert 0 < POLL_INTERVAL_S < 2  # Ray's default, 2 s, is what a trial's end waited


@pytest.mark.parametrize("name", ["START_TIMEOUT", "POLL_INTERVAL"])
def test_a_train_setting_is_set_while_a_run_is_fitted_and_a_users_value_stays(
        monkeypatch, name):
    from orchestrator import launch

    variable, ours = getattr(launch, f"{name}_ENV"), getattr(launch, f"{name}_S")
    monkeypatch.delenv(variable, raising=False)
    with launch.ray_train_settings():
        assert os.environ[variable] == str(ours)
    assert variable not in os.environ
    monkeypatch.setenv(variable, "77")
    with launch.ray_train_settings():
        assert os.environ[variable] == "77"
    assert os.environ[variable] == "77"


def test_a_configured_ray_token_puts_ray_in_token_mode(tmp_path, monkeypatch):
    from orchestrator.auth import token_mode_for_ray

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    token_mode_for_ray()
    assert "RAY_AUTH_MODE" not in os.environ  # no token: Ray's own default
    (tmp_path / "none").write_text("t0ken")
    token_mode_for_ray()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's choice stays
    token_mode_for_ray()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


# --- token auth, dashboard, head resource -------------------------------------------------


def start_command(commands: list[str], marker: str) -> str:
    (line,) = [c for c in commands if marker in c]
    return line


def start_env(line: str) -> dict[str, str]:
    """The VAR=value assignments in front of `ray start` in a start command."""
    words = shlex.split(line.split(";")[-1])
    env = dict(w.split("=", 1) for w in words[:words.index("ray")])
    assert words[words.index("ray") + 1] == "start"
    return env


def test_token_auth_is_on_for_head_and_workers_with_the_launchers_token():
    c = config()
    head = start_command(c["head_start_ray_commands"], "ray start --head")
    worker = start_command(c["worker_start_ray_commands"], "ray start --address")
    # RAY_AUTH_MODE=token: `ray start` then refuses to run without a token
    assert start_env(head)["RAY_AUTH_MODE"] == "token"
    assert start_env(worker)["RAY_AUTH_MODE"] == "token"
    assert "export RAY_AUTH_MODE=token" in " ".join(c["setup_commands"])  # `ray exec`
    # the token: this machine's (which `dotsim submit` sends) at Ray's default path on
    # every node
    token_path = f"{CONTAINER_HOME}/.ray/auth_token"
    assert c["file_mounts"][token_path] == str(TOKEN_FILE)
    with mock.patch.dict(os.environ, {"HOME": CONTAINER_HOME}):
        from ray._private.authentication.authentication_token_setup import (
            _get_default_token_path,
        )

        assert str(_get_default_token_path()) == token_path
    assert "cluster_synced_files" not in c  # file_mounts already reach every worker


def test_dashboard_listens_on_127_0_0_1_only():
    head = start_command(config()["head_start_ray_commands"], "ray start --head")
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_only_the_head_has_the_custom_resource():
    types_ = config()["available_node_types"]
    head = types_[config()["head_node_type"]]
    assert head["resources"][launcher.HEAD_RESOURCE] >= 100
    for name, node_type in types_.items():
        if node_type is not head:
            assert launcher.HEAD_RESOURCE not in node_type["resources"], name


# --- spot workers -------------------------------------------------------------------------


def test_the_spot_worker_is_the_gpu_worker_on_the_spot_market():
    types_ = config()["available_node_types"]
    on_demand, spot_ = types_["gpu_worker"], types_["gpu_spot_worker"]
    assert not launcher.is_spot(on_demand) and launcher.is_spot(spot_)
    assert spot_["node_config"]["InstanceType"] == on_demand["node_config"]["InstanceType"]
    assert spot_["node_config"]["ImageId"] == on_demand["node_config"]["ImageId"]
    assert spot_["resources"] == on_demand["resources"] == {}


def test_the_spot_worker_sets_up_as_the_others_then_starts_the_watcher():
    """Its own worker_setup_commands replace the global lists in Ray's autoscaler."""
    c = config()
    own = c["available_node_types"]["gpu_spot_worker"]["worker_setup_commands"]
    assert own[:-1] == c["setup_commands"] + c["worker_setup_commands"]
    assert launcher.starts_watcher(own[-1])
    assert not any(launcher.SPOT_WATCHER in cmd for cmd in c["worker_setup_commands"])
    assert launcher.node_setup_problems(c) == []


def test_the_watcher_command_in_cluster_yaml_is_one_dotsim_accepts():
    (line,) = [c for c in config()["available_node_types"]["gpu_spot_worker"][
        "worker_setup_commands"] if launcher.SPOT_WATCHER in c]
    words = shlex.split(line.replace("$RAY_HEAD_IP", "10.0.0.1"))
    args = words[words.index("watch-spot") + 1:words.index(">>")]
    command = cli.commands["cluster"].commands["watch-spot"]
    assert command.make_context("watch-spot", args).params["address"] == "10.0.0.1:6379"
    # the same head address as the workers' `ray start`
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(config()["worker_start_ray_commands"])


@pytest.mark.parametrize("damage,words", [
    ("no_watcher", "gpu_spot_worker is a spot type whose worker_setup_commands do not start"),
    ("watcher_in_the_foreground", "do not start `nohup dotsim cluster watch-spot ... &`"),
    ("no_install", "gpu_spot_worker/worker_setup_commands replaces the global setup_commands"),
])
def test_validate_refuses_a_spot_type_set_up_wrong(tmp_path, damage, words):
    c = yaml.safe_load(filled_in(tmp_path).read_text())
    own = c["available_node_types"]["gpu_spot_worker"]["worker_setup_commands"]
    if damage == "no_watcher":
        own.pop()
    elif damage == "watcher_in_the_foreground":
        own[-1] = "dotsim cluster watch-spot"
    else:
        own.remove(c["setup_commands"][0])
    path = tmp_path / "damaged.yaml"
    path.write_text(yaml.safe_dump(c))
    result = CliRunner().invoke(cli, ["cluster", "validate", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert words in one_line(result)


def test_the_aws_extra_brings_boto3():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("boto3") for r in extras["aws"])
    assert "dotsim[aws]" in extras["dev"]


# --- `dotsim cluster up` before `ray up` --------------------------------------------------


@pytest.fixture
def no_aws(tmp_path, monkeypatch):
    """A HOME without ~/.aws or a Ray token, no AWS_* variables; and the instance-metadata
    service off, so that nothing here could ever make a network call."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


def up(path: Path):
    with mock.patch("orchestrator.cluster.subprocess.call", return_value=0) as call:
        result = CliRunner().invoke(cli, ["cluster", "up", "--config", str(path)])
    return result, call


def test_up_without_aws_credentials_stops_before_ray_up(tmp_path, no_aws):
    result, call = up(filled_in(tmp_path))
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "no AWS credentials" in line
    assert "aws configure" in line and "AWS_PROFILE" in line and "AWS_ACCESS_KEY_ID" in line
    call.assert_not_called()


def test_up_with_a_missing_aws_profile_stops_before_ray_up(tmp_path, no_aws, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nowhere")
    result, call = up(filled_in(tmp_path))
    assert result.exit_code == 2, result.output
    assert "nowhere" in one_line(result)
    call.assert_not_called()


def test_up_without_boto3_names_the_extra(tmp_path, no_aws, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if not installed
    result, call = up(filled_in(tmp_path))
    assert result.exit_code == 2, result.output
    assert "pip install -e '.[aws]'" in one_line(result)
    call.assert_not_called()


@pytest.fixture
def fake_aws_keys(no_aws, monkeypatch):
    """Credentials in the environment: found offline, never sent anywhere here."""
    if shutil.which("rsync") is None or shutil.which("ssh") is None:
        pytest.skip("`ray up` needs ssh and rsync on the launching machine")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-key")
    # the EC2 API stands in as a listening socket on 127.0.0.1 (no traffic leaves here)
    listener = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    yield no_aws
    listener.close()


def test_up_without_the_network_stops_before_ray_up(tmp_path, fake_aws_keys, monkeypatch):
    (fake_aws_keys / ".ray").mkdir()
    (fake_aws_keys / ".ray" / "auth_token").write_text("t" * 32)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nobody answers there
    result, call = up(filled_in(tmp_path))
    assert result.exit_code == 2, result.output
    assert "cannot reach AWS at 127.0.0.1:9" in one_line(result)
    call.assert_not_called()


def test_up_without_a_ray_token_says_how_to_make_one(tmp_path, fake_aws_keys):
    result, call = up(filled_in(tmp_path))
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "~/.ray/auth_token" in line and "ray get-auth-token --generate" in line
    call.assert_not_called()


def test_up_from_another_folder_is_refused(tmp_path, fake_aws_keys, monkeypatch):
    """cluster.yaml syncs "." to every node: from anywhere but the checkout, that would
    be the wrong folder."""
    (fake_aws_keys / ".ray").mkdir()
    (fake_aws_keys / ".ray" / "auth_token").write_text("t" * 32)
    path = filled_in(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result, call = up(path)
    assert result.exit_code == 2, result.output
    assert "is not the dotsim checkout" in one_line(result)
    call.assert_not_called()


def test_up_with_everything_in_place_calls_ray_up(tmp_path, fake_aws_keys):
    (fake_aws_keys / ".ray").mkdir()
    (fake_aws_keys / ".ray" / "auth_token").write_text("t" * 32)
    path = filled_in(tmp_path)
    result, call = up(path)
    assert result.exit_code == 0, result.output
    argv = call.call_args.args[0]
    assert argv[3:6] == ["up", "-y", str(path)]
