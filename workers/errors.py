"""dotsim's own kinds of error, and so its exit codes (the CLI's ``main`` maps them):

- ``InputError``: the user asked for something dotsim cannot do: exit 2, one line;
- ``Interrupted``: the user stopped a run or sweep (Ctrl-C); it can be resumed: exit 130,
  with the way to resume it;
- ``Reported``: a failure dotsim has already explained in its own words: exit 1, its
  message as it is;
- anything else is a failure dotsim did not foresee: exit 1, one line naming it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: an option, a file, a folder, an address, or a run folder that
    belongs to another config. The CLI turns this, and only this, into exit code 2 and one
    line."""


class Interrupted(Exception):
    """Stopped by the user; the message says how to continue."""


class Reported(Exception):
    """A failure whose message says what failed and what to do about it."""
