"""The one kind of error that means "the user asked for something dotsim cannot do"."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: an option, a file, a folder, an address, or a run folder that
    belongs to another config. The CLI turns this, and only this, into exit code 2 and one
    line; any other exception is a failure (exit 1)."""
