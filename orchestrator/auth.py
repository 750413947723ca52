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
