"""``dotsim cluster``: Ray's cluster launcher, with the config file checked offline first."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import yaml

# `ray` of the same installation as dotsim (python -m ray.scripts.scripts is the CLI)
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
ACTIONS = {
    "up": [*RAY, "up", "-y", "{config}"],
    "down": [*RAY, "down", "-y", "{config}"],
    "status": [*RAY, "exec", "{config}", "ray status"],
    # forwards the head's dashboard port to 127.0.0.1:8265 over SSH: never a public port
    "dashboard": [*RAY, "dashboard", "{config}"],
}


def validate(config_path: Path) -> dict:
    """Load ``config_path`` and check it with Ray's own schema, offline.

    Ray's ``prepare_config`` fills in the provider's defaults (as ``ray up`` does) and
    ``validate_config`` checks the result against ``ray-schema.json``; neither needs cloud
    access. Any problem becomes a ValueError with one line.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)
    path = Path(config_path)
    if not path.is_file():
        raise ValueError(f"cluster config {path} not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a Ray cluster config (expected a mapping)")
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as err:  # jsonschema.ValidationError, ValueError: both mean a bad file
        message = getattr(err, "message", None) or str(err)
        where = "/".join(str(p) for p in getattr(err, "absolute_path", []))
        raise ValueError(f"{path} is not a valid Ray cluster config: "
                         f"{(where + ': ') if where else ''}{message.splitlines()[0]}") from err
    return config


def command(action: str, config_path: Path) -> list[str]:
    if action not in ACTIONS:
        raise ValueError(f"unknown cluster action {action!r}; allowed: {', '.join(ACTIONS)}")
    return [part.format(config=str(config_path)) for part in ACTIONS[action]]


def run(action: str, config_path: Path) -> int:
    """Validate, then run Ray's launcher command; returns its exit code."""
    validate(config_path)
    return subprocess.call(command(action, config_path))
