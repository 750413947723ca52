"""Where a run's time goes: phase marks, read by ``bench/bench_sweep.py``.

When the environment variable ``DOTSIM_PHASES`` names a file, ``mark`` appends one JSON
line to it: the time, the process, the phase and, in a Train worker, its rank. The
processes of a local Ray inherit the variable from the driver that started it, so the
driver, each Tune trial and each Train worker mark into one file. Unset (always, outside
the bench), ``mark`` only reads the environment.
"""

from __future__ import annotations

import json
import os
import time

PHASES_ENV = "DOTSIM_PHASES"


def mark(phase: str, rank: int | None = None) -> None:
    """Append (now, this process, ``phase``, ``rank``) to the marks file, if one is set. A
    line is one short append, which lands whole even from several processes at once."""
    path = os.environ.get(PHASES_ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "phase": phase, "rank": rank})
    with open(path, "a") as out:
        out.write(line + "\n")
