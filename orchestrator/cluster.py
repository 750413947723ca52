"""``dotsim cluster``: Ray's cluster launcher, with the config file checked offline first."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path

import jsonschema
import yaml

from workers.errors import InputError

# `ray` of the same installation as dotsim (python -m ray.scripts.scripts is the CLI)
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
ACTIONS = {
    "up": [*RAY, "up", "-y", "{config}"],
    "down": [*RAY, "down", "-y", "{config}"],
    "status": [*RAY, "exec", "{config}", "ray status"],
    # forwards the head's dashboard port to 127.0.0.1:8265 over SSH: never a public port
    "dashboard": [*RAY, "dashboard", "{config}"],
}

# The custom resource that only cluster.yaml's head node has: a Tune trial (the driver of
# its Ray Train run, whose controller Ray pins to the driver's node) requests it, so
# neither lands on a GPU worker that the autoscaler may remove.
HEAD_RESOURCE = "dotsim_head"

# Values cluster.yaml ships with, which no cluster can start from: what replaces them.
PLACEHOLDERS = {
    "ami-00000000000000000": "the id of 'Deep Learning Base OSS Nvidia Driver GPU AMI "
                             "(Ubuntu 24.04)' in the provider's region (docs/cluster.md: the GPU "
                             "cluster)",
    "fs-00000000": "your EFS file system's id (fs-...) in the provider's region",
}

# Where the AWS credentials come from, for the message when there are none.
AWS_CREDENTIALS_HINT = ("run `aws configure`, set AWS_PROFILE to a profile in ~/.aws/config, "
                        "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


def validate(config_path: Path) -> dict:
    """Load ``config_path``, check it with Ray's own schema, offline, check the worker
    types' own setup (``node_setup_problems``), and refuse the placeholders cluster.yaml
    ships with.

    Ray's ``prepare_config`` fills in the provider's defaults (as ``ray up`` does) and
    ``validate_config`` checks the result against ``ray-schema.json``; neither needs cloud
    access. A problem with the file becomes an InputError with one line; anything else
    (a bug in Ray, say) stays the error it is.
    """
    # Ray's public autoscaler API (ray.autoscaler.sdk) has no offline check of a config:
    # this is the one place dotsim imports a private Ray module, and it is tested
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)
    path = Path(config_path)
    if not path.is_file():
        raise InputError(f"cluster config {path} not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a Ray cluster config (expected a mapping)")
    try:
        # filling in the defaults looks keys up: a missing or misshapen one surfaces here
        prepared = prepare_config(copy.deepcopy(config))
    except (LookupError, TypeError, ValueError) as err:
        raise InputError(f"{path} is not a valid Ray cluster config: {type(err).__name__} "
                         f"{str(err).splitlines()[0] if str(err) else ''} (a key is missing "
                         "or of the wrong kind)") from err
    try:
        validate_config(prepared)
    except (jsonschema.ValidationError, ValueError) as err:  # Ray's two ways to say "bad"
        message = getattr(err, "message", None) or str(err)
        where = "/".join(str(p) for p in getattr(err, "absolute_path", []))
        raise InputError(f"{path} is not a valid Ray cluster config: "
                         f"{(where + ': ') if where else ''}{message.splitlines()[0]}") from err
    if problems := node_setup_problems(config):
        raise InputError(f"{path}: " + "; ".join(problems))
    if left := placeholders(config):
        raise InputError(f"{path}: " + "; ".join(
            f"replace the placeholder {value} in {', '.join(keys)} with {PLACEHOLDERS[value]}"
            for value, keys in left.items()))
    return config


def node_setup_problems(config: dict) -> list[str]:
    """What the worker node types' own setup lacks, in words.

    A node type's ``worker_setup_commands`` replace the global ``setup_commands`` and
    ``worker_setup_commands`` for its nodes (Ray's autoscaler takes one list or the other),
    so a type's list must repeat them, or its nodes start without dotsim installed. A spot
    type must also start the watcher in the background, or a reclaim takes its node
    without a drain: Ray Train would see a failure instead of a preemption.
    """
    common = [*config.get("setup_commands", []), *config.get("worker_setup_commands", [])]
    problems = []
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:  # the head runs head_setup_commands
            continue
        own = node_type.get("worker_setup_commands")
        if own is not None and (missing := [c for c in common if c not in own]):
            problems.append(f"available_node_types/{name}/worker_setup_commands replaces the "
                            f"global setup_commands and worker_setup_commands and lacks "
                            f"{missing[0]!r}")
        if is_spot(node_type) and not any(starts_watcher(c) for c in own or []):
            problems.append(f"available_node_types/{name} is a spot type whose "
                            f"worker_setup_commands do not start `nohup {SPOT_WATCHER} ... &`: "
                            "a reclaim would take its node without a drain")
    return problems


# The command that turns a spot reclaim notice into a Ray drain (orchestrator/spot.py).
SPOT_WATCHER = "dotsim cluster watch-spot"


def is_spot(node_type: dict) -> bool:
    """Whether the node type asks EC2 for spot instances."""
    market = node_type.get("node_config", {}).get("InstanceMarketOptions", {})
    return market.get("MarketType") == "spot"


def starts_watcher(command: str) -> bool:
    """Whether a setup command starts the watcher so that it outlives the setup shell
    (nohup: the SSH session's hangup; a trailing &: setup goes on to `ray start`)."""
    return (SPOT_WATCHER in command and command.startswith("nohup ")
            and command.rstrip().endswith("&"))


def placeholders(config: dict) -> dict[str, list[str]]:
    """{placeholder: the keys (a/b/0 paths) whose values contain it} for those left."""
    found: dict[str, list[str]] = {}

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}/{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")
        elif isinstance(node, str):
            for value in PLACEHOLDERS:
                if value in node:
                    found.setdefault(value, []).append(where)

    walk(config, "")
    return found


def command(action: str, config_path: Path) -> list[str]:
    if action not in ACTIONS:
        raise InputError(f"unknown cluster action {action!r}; allowed: {', '.join(ACTIONS)}")
    return [part.format(config=str(config_path)) for part in ACTIONS[action]]


def run(action: str, config_path: Path) -> int:
    """Validate, then run Ray's launcher command; returns its exit code. ``up`` first
    checks what ``ray up`` needs on this machine, so a missing piece is one line here
    rather than a traceback (or a half-started head node) there."""
    config = validate(config_path)
    if action == "up":
        check_launcher(config, config_path)
    return subprocess.call(command(action, config_path))


def check_launcher(config: dict, config_path: Path) -> None:
    """What ``ray up`` on AWS needs here: boto3, AWS credentials, ssh and rsync, and every
    local file that ``file_mounts`` copies to the nodes. Offline; InputError if missing."""
    try:
        import boto3  # noqa: F401  (Ray's AWS node provider imports it)
    except ImportError as err:
        raise InputError("`ray up` on AWS needs boto3, which is not installed: "
                         "pip install -e '.[aws]'") from err
    if not aws_credentials_found():
        raise InputError(f"no AWS credentials found: {AWS_CREDENTIALS_HINT}")
    missing = [tool for tool in ("ssh", "rsync") if shutil.which(tool) is None]
    if missing:
        raise InputError(f"`ray up` reaches and fills the nodes with ssh and rsync; this "
                         f"machine lacks {' and '.join(missing)}: install it (Debian/Ubuntu: "
                         "apt-get install openssh-client rsync)")
    for remote, local in config.get("file_mounts", {}).items():
        if remote == SOURCE_MOUNT and not is_dotsim_checkout(Path(local)):
            raise InputError(f"{config_path}: file_mounts syncs {Path(local).resolve()} to "
                             f"{remote} on every node, and it is not the dotsim checkout: "
                             "run `dotsim cluster up` from the checkout")
        if not Path(local).expanduser().exists():  # relative to the working dir, as in Ray
            fix = ("create it with `ray get-auth-token --generate`"
                   if Path(local).name == "auth_token" else "create it or change the entry")
            raise InputError(f"{config_path}: file_mounts copies {local} to {remote} on every "
                             f"node, and {local} does not exist: {fix}")
    check_aws_reachable(config["provider"]["region"])


SOURCE_MOUNT = "/home/ray/dotsim"  # where cluster.yaml puts the source on every node


def is_dotsim_checkout(folder: Path) -> bool:
    """Whether ``folder`` holds dotsim's source (its pyproject.toml names the project)."""
    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return False
    return project.get("name") == "dotsim"


def check_aws_reachable(region: str, timeout_s: float = 5.0) -> None:
    """Open (and close) a connection to the EC2 API of ``region``, or to the endpoint that
    AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL name, as boto3 would: a machine without the
    network fails here in one line, not in a traceback from inside `ray up`."""
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_EC2") or os.environ.get("AWS_ENDPOINT_URL")
                or f"https://ec2.{region}.amazonaws.com")
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        raise InputError(f"cannot reach AWS at {url.hostname}:{port} "
                         f"({err.strerror or err}): `ray up` needs this machine to reach the "
                         "EC2 API; check its network (and proxy)") from err


def aws_credentials_found() -> bool:
    """Whether boto3's own credential chain (environment, profiles, SSO, assume-role,
    credential_process, container role) yields credentials, without a network call:
    the EC2 instance-metadata service is asked only on an EC2 instance, where it
    answers locally. Credentials are found, not checked: AWS checks them at `ray up`."""
    import botocore.session
    from botocore.credentials import create_credential_resolver
    from botocore.exceptions import BotoCoreError

    try:
        resolver = create_credential_resolver(botocore.session.Session())
        if not on_ec2():
            resolver.remove("iam-role")
        return resolver.load_credentials() is not None
    except BotoCoreError as err:  # a named profile that does not exist, a broken config
        raise InputError(f"AWS credentials: {str(err).splitlines()[0]}: "
                         f"{AWS_CREDENTIALS_HINT}") from err


def on_ec2() -> bool:
    """Whether this machine is an EC2 instance (the firmware says so; no network)."""
    for path in ("/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/bios_vendor",
                 "/sys/hypervisor/uuid"):
        try:
            text = Path(path).read_text().strip().lower()
        except OSError:
            continue
        if text.startswith("ec2") or "amazon ec2" in text:
            return True
    return False
