"""What code and packages a run ran with, for its record (``dotsim_run.json``)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

PACKAGES = ("dotsim", "torch", "torchaudio", "ray", "pyarrow", "numpy", "click", "soundfile")
CODE_VERSION_ENV = "DOTSIM_CODE_VERSION"  # set by `dotsim submit` for the job it sends


def code_version(source: Path | None = None) -> str:
    """The git commit of the dotsim source (with -dirty), or the package version outside
    a checkout. A job from ``dotsim submit`` carries the commit of the checkout it was
    sent from (the upload leaves .git out). ``source``: the folder to ask (this file's)."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    here = source or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                                cwd=here, capture_output=True, text=True, timeout=5, check=True)
        return commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "dotsim " + importlib.metadata.version("dotsim")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = sys.version.split()[0]
    return versions
