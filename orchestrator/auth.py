"""Ray 2.60's token authentication, as a client of a cluster sees it."""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_FILE = Path("~/.ray/auth_token")


def ray_auth_token() -> str | None:
    """The token Ray itself would use: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names,
    or ~/.ray/auth_token (written by `ray start` / `ray.init`); None without one."""
    if token := os.environ.get("RAY_AUTH_TOKEN"):
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    file = Path(path).expanduser() if path else TOKEN_FILE.expanduser()
    return file.read_text().strip() if file.is_file() else None


def token_mode_for_ray() -> None:
    """RAY_AUTH_MODE=token in this process when a Ray token is configured and no mode is
    set, as Ray's own `ray` commands do: Ray sends the token only in token mode, and reads
    the mode once, when it is imported. The CLI calls this before anything imports Ray."""
    if "RAY_AUTH_MODE" not in os.environ and ray_auth_token():
        os.environ["RAY_AUTH_MODE"] = "token"
