"""trace2 events to observations: one per git process, with the repository it ran on.

``Sessions`` is fed parsed events and keeps the git processes in flight by ``sid`` (a
child's sid is its parent's plus ``/...``). ``exit`` (or ``atexit``/``signal`` when that
was lost) completes a process: its ``t_abs`` is the duration, its ``cmd_name`` the
operation (unknown or malformed names become ``other``; at most ``max_operations``).

The repository: ``upload-pack``, ``receive-pack`` and ``upload-archive`` name it in argv
(they emit no ``def_repo``); other processes count for the nearest ancestor's (an
``index-pack`` under a clone reports the clone's cwd as its work tree), else their own
``def_repo``. Bare repositories emit no ``def_repo``: outside a serving command they count
without one. A serving command whose argv path is relative learns its child's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["SERVING", "Observation", "Sessions"]

SERVING = frozenset({"upload-pack", "receive-pack", "upload-archive"})
_OPERATION = re.compile(r"_?[a-z0-9][a-z0-9_-]{0,39}")


@dataclass(frozen=True)
class Observation:
    operation: str
    seconds: float
    path: str | None  # the repository it ran on, as git named it


@dataclass
class _Session:
    operation: str | None = None
    argv: tuple[str, ...] = ()
    served: str | None = None  # the repository a serving command names in argv
    worktree: str | None = None  # def_repo
    inherited: str | None = None  # the nearest ancestor's repository when this one began

    def own_path(self) -> str | None:
        return self.served or self.worktree


class Sessions:
    """The git processes in flight, fed one parsed event at a time (not thread-safe)."""

    def __init__(self, max_sessions: int = 20_000, max_operations: int = 200) -> None:
        self._live: dict[str, _Session] = {}
        self._operations: set[str] = set()
        self.max_sessions = max_sessions
        self.max_operations = max_operations

    def __len__(self) -> int:
        return len(self._live)

    def feed(self, name: str, sid: str, event: dict[str, Any]) -> Observation | None:
        """The observation ``event`` completes, if any. ValueError if it is malformed."""
        if name in ("exit", "atexit", "signal"):
            session = self._live.pop(sid, None)
            seconds = event.get("t_abs")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                raise ValueError(f"{name} without t_abs")
            if session is None or session.operation is None:
                return None  # began before custode listened, or its start was dropped
            path = session.served or self._ancestor_path(sid) or session.inherited
            return Observation(session.operation, float(seconds), path or session.worktree)
        session = self._live.get(sid)
        if session is None:
            session = self._begin(sid)
        if name == "start":
            argv = event.get("argv")
            if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
                session.argv = tuple(argv)
        elif name == "cmd_name":
            session.operation = self._operation(event.get("name"))
            if session.operation in SERVING:
                session.served = _served_path(session.argv)
                self._lend(sid, session.served)
        elif name == "def_repo":
            worktree = event.get("worktree")
            if isinstance(worktree, str) and os.path.isabs(worktree):
                session.worktree = worktree
                self._lend(sid, worktree)
        return None

    def _begin(self, sid: str) -> _Session:
        while len(self._live) >= self.max_sessions:  # killed gits never exit: oldest go
            del self._live[next(iter(self._live))]
        session = _Session(inherited=self._ancestor_path(sid))
        self._live[sid] = session
        return session

    def _ancestors(self, sid: str) -> Iterator[_Session]:
        while "/" in sid:
            sid = sid.rpartition("/")[0]
            if (parent := self._live.get(sid)) is not None:
                yield parent

    def _ancestor_path(self, sid: str) -> str | None:
        for parent in self._ancestors(sid):
            if (path := parent.own_path() or parent.inherited) is not None:
                return path
        return None

    def _lend(self, sid: str, path: str | None) -> None:
        """A serving command without a usable argv path learns it from its child."""
        if path is None:
            return
        for parent in self._ancestors(sid):
            if parent.own_path() or parent.inherited:
                return
            parent.worktree = path

    def _operation(self, name: object) -> str:
        if not isinstance(name, str) or not _OPERATION.fullmatch(name):
            return "other"
        if name not in self._operations:
            if len(self._operations) >= self.max_operations:
                return "other"
            self._operations.add(name)
        return name


def _served_path(argv: tuple[str, ...]) -> str | None:
    """``git-upload-pack '/srv/x.git'``, ``git receive-pack --stateless-rpc /srv/x.git``."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    return words[-1] if words and os.path.isabs(words[-1]) else None
