"""Failures of custode's own records — the history database, the audit log — as one line
each, and a per-process journal of them.

SQLite's errors say little ("database is locked"); ``unusable`` tells busy (another process
held the write lock past ``state.busy_timeout``), unreachable (permissions, a full disk)
and damaged apart, and gives the fix. Commands only warn when their records are not kept
(the backup matters more than its record), so each failure is also journaled here:
``custode run`` reads the journal (``problem_mark``, ``problems_since``) to tell which of
its stages lost their records, and names them. A database this process waited on in vain
gets a short wait next time, until it is written again: a run's every stage would
otherwise wait the full time on the same holder.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from pathlib import Path

from custode.errors import StateUnusableError

BUSY_TIMEOUT_S = 30.0  # the default of state.busy_timeout
_settings = {"busy_timeout": BUSY_TIMEOUT_S}


def set_busy_timeout(seconds: float) -> None:
    """How long every later ``StateDB`` of this process waits for another writer
    (``state.busy_timeout``; the CLI sets it once the config is loaded)."""
    _settings["busy_timeout"] = max(0.0, seconds)


def busy_timeout(path: Path | None = None) -> float:
    """The wait for another writer; short for a database this process already waited on in
    vain and has not written since (each stage of a run would wait the full time again)."""
    full = _settings["busy_timeout"]
    return min(full, AFTER_BUSY_S) if path is not None and str(path) in _busy else full


AFTER_BUSY_S = 1.0
_busy: set[str] = set()  # databases this process found busy, until it writes one again


def clear_busy(path: Path) -> None:
    """``path`` was written: the next wait on it is the full one again."""
    _busy.discard(str(path))


class _Journal:
    """The failures of custode's records (the history database, the audit log) this
    process met, newest last (a few, and a count).

    Commands only warn when their history is not recorded (the backup matters more than
    its record); the journal lets ``custode run`` tell which of its stages lost records.
    """

    def __init__(self, keep: int = 32) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._recent: deque[tuple[int, str]] = deque(maxlen=keep)

    def note(self, message: str) -> None:
        with self._lock:
            self._count += 1
            self._recent.append((self._count, message))

    def mark(self) -> int:
        return self._count

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return [message for n, message in self._recent if n > mark]


_journal = _Journal()


def problem_mark() -> int:
    """A mark to pass to ``problems_since`` later."""
    return _journal.mark()


def problems_since(mark: int) -> list[str]:
    """The (most recent) failures of custode's records since ``mark``, one line each."""
    return _journal.since(mark)


def note_problem(message: str) -> None:
    """Journal a record that could not be kept elsewhere in the state directory (the audit
    log): ``custode run`` counts it like a failure of the history database."""
    _journal.note(message)


_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_UNREACHABLE = {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY,
                sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_NOLFS}  # fmt: skip


def unusable(path: Path, exc: BaseException) -> StateUnusableError:
    """One line for an error met on the database at ``path``: busy, unreachable or damaged
    (anything else SQLite or a damaged column says), with the fix; noted in the journal."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _BUSY:
        message = (
            f"state database {path} is busy (another custode or a sqlite tool holds it): "
            f"{exc} after {busy_timeout(path):g}s; fix: let the holder finish (find it with "
            f"'fuser {path}') or raise state.busy_timeout"
        )
        _busy.add(str(path))
    elif primary in _UNREACHABLE or isinstance(exc, OSError):
        message = (
            f"cannot use state database {path}: {exc}; fix: check the permissions of "
            f"{path.parent} and free disk space, or set state.directory in the config"
        )
    else:
        message = (
            f"state database {path} is damaged: {exc}; fix: move it aside "
            f"('mv {path} {path}.damaged'), custode starts a new one"
        )
    return noted(StateUnusableError(message))


def noted(error: StateUnusableError) -> StateUnusableError:
    """``error``, journaled."""
    _journal.note(error.message)
    return error
