"""Whether a process named in a lock file or a directory name still runs.

A pid alone does not name a process for long: Linux hands out pids up to ``pid_max``
(32,768 by default) and a busy host wraps around within minutes, so a killed custode's
pid soon belongs to another process. A record therefore keeps the pid *and* when that
process started (``started``); a process under that pid that started at another time
is another process, and the record's owner is gone.
"""

from __future__ import annotations

import os

#: Two readings of one process's start time agree exactly; this only absorbs a float
#: written to JSON and read back. A pid is not reused within the same second.
_SAME_START = 0.5


def started(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch as the kernel counts it
    (the same for every reading of one process); None if there is no such process or
    its start cannot be read."""
    import psutil  # noqa: PLC0415  (only for locks: start-up of the commands without one)

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, ValueError, OverflowError):
        return None


def process_alive(pid: int, started_at: float | None = None) -> bool:
    """Whether a process ``pid`` exists on this machine (one we may not signal counts)
    and, if ``started_at`` is given, is the one that started then, not a later process
    that was handed the same pid (one whose start cannot be read counts as that one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OverflowError, ValueError):
        return False  # no valid pid: no process
    if started_at is None:
        return True
    now = started(pid)
    if now is None:  # gone meanwhile, or not ours to read
        return process_alive(pid)
    return abs(now - started_at) < _SAME_START
