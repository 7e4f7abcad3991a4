"""trace2 events to observations: one per git process, with the repository it ran on.

``Sessions`` is fed parsed events and keeps the git processes in flight by ``sid`` (a
child's sid is its parent's plus ``/...``). ``exit`` (or ``atexit``/``signal`` when that
was lost) completes a process: its ``t_abs`` is the duration, its ``cmd_name`` the
operation (unknown or malformed names become ``other``; at most ``max_operations``).

The repository: ``upload-pack``, ``receive-pack`` and ``upload-archive`` name it in argv
(they emit no ``def_repo``); other processes count for the nearest ancestor's (an
``index-pack`` under a clone reports the clone's cwd as its work tree), else their own
``def_repo``. Each git writes to its own connection, so a parent's exit, or all of its
stream, can be read before its child's first event (a reader delayed under load accepts
the child's connection after draining the parent's): an ancestor that ended still counts
for its children, from the ``max_ended`` processes that ended last (what a child inherited
when it began stands in for one forgotten since). Bare repositories emit no ``def_repo``:
outside a serving command they count without one. A serving command whose argv path is
relative learns its child's.

Memory is bounded in bytes: every field kept is capped (a longer sid, name or path
rejects its event, before anything changes), each process in flight or remembered as
ended costs what it holds, and beyond ``max_bytes`` the ended are forgotten first, then
the oldest in flight (git processes killed before their exit never send one). Walks over
a sid's ancestors are bounded by the sid's cap: an uncapped sid of 200,000 levels took
the old parser 25 s to 50 s per event.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from custode.monitoring.trace2lines import Rejected

__all__ = ["MAX_NAME", "MAX_PATH", "MAX_SID", "SERVING", "Observation", "Sessions"]

SERVING = frozenset({"upload-pack", "receive-pack", "upload-archive"})
_OPERATION = re.compile(r"_?[a-z0-9][a-z0-9_-]{0,39}")

#: git's sid is ~45 characters per process level ("<time>-H<hash>-P<pid>", a child's
#: prefixed by its parent's and "/"): 1,024 is more than twenty levels.
MAX_SID = 1024
MAX_NAME = 256  # event and command names: git's are a few words
MAX_PATH = 4096  # PATH_MAX: a longer path cannot name a repository
#: What a process in flight costs beyond its strings (its dict slot, the object).
SESSION_OVERHEAD = 256
#: What a process remembered as ended costs beyond its sid and path (slot, tuple, int).
ENDED_OVERHEAD = 128


@dataclass(frozen=True)
class Observation:
    operation: str
    seconds: float
    path: str | None  # the repository it ran on, as git named it


@dataclass(slots=True)
class _Session:
    cost: int  # bytes, as counted in Sessions.bytes
    operation: str | None = None
    argv_path: str | None = None  # the absolute path last in argv, if any (see _served_path)
    served: str | None = None  # the repository a serving command names in argv
    worktree: str | None = None  # def_repo
    inherited: str | None = None  # the nearest ancestor's repository when this one began
    inherited_level: int = 0  # that ancestor's level (the "/" in its sid)

    def own_path(self) -> str | None:
        return self.served or self.worktree


class Sessions:
    """The git processes in flight, fed one parsed event at a time (not thread-safe;
    ``len()``, ``bytes`` and ``evicted`` may be read from another thread)."""

    def __init__(
        self, max_sessions: int = 20_000, max_operations: int = 200, *,
        max_bytes: int = 16 << 20, max_ended: int = 4096,
    ) -> None:  # fmt: skip
        self._live: dict[str, _Session] = {}
        #: sid -> (the repository its children count for, its cost), oldest first
        self._ended: dict[str, tuple[str, int]] = {}
        self.max_ended = max_ended
        self._operations: set[str] = set()
        self.max_sessions = max_sessions
        self.max_operations = max_operations
        self.max_bytes = max_bytes
        self.bytes = 0  # what the processes in flight and the ended ones kept hold
        self.evicted = 0  # processes forgotten before their exit

    def __len__(self) -> int:
        return len(self._live)

    def feed(self, name: str, sid: str, event: dict[str, Any]) -> Observation | None:
        """The observation ``event`` completes, if any. Rejected (a ValueError) if the
        event is malformed or a field is over its cap; nothing changes then."""
        if len(sid) > MAX_SID:
            raise Rejected("field", f"sid longer than {MAX_SID} characters")
        if name in ("exit", "atexit", "signal"):
            seconds = _seconds(name, event.get("t_abs"))
            session = self._live.pop(sid, None)
            if session is None:
                return None  # began before custode listened, or was forgotten
            self.bytes -= session.cost
            self._remember(sid, session)
            if session.operation is None:
                return None  # its cmd_name was dropped
            path = session.served or self._path_at_exit(sid, session)
            return Observation(session.operation, seconds, path or session.worktree)
        changed = [sid]
        if name == "start":
            argv, path = event.get("argv"), None
            if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
                path = _served_path(argv)
            self._session(sid).argv_path = path
        elif name == "cmd_name":
            operation = self._operation(event.get("name"))
            session = self._session(sid)
            session.operation = operation
            if operation in SERVING:
                session.served = session.argv_path
                changed += self._lend(sid, session.served)
        elif name == "def_repo":
            worktree = event.get("worktree")
            if isinstance(worktree, str) and len(worktree) > MAX_PATH:
                raise Rejected("field", f"def_repo worktree longer than {MAX_PATH} characters")
            if isinstance(worktree, str) and os.path.isabs(worktree):
                self._session(sid).worktree = worktree
                changed += self._lend(sid, worktree)
        self._account(changed)
        return None

    def _session(self, sid: str) -> _Session:
        session = self._live.get(sid)
        if session is None:
            path, level = self._nearest(sid) or (None, 0)
            session = _Session(0, inherited=path, inherited_level=level)
            self._live[sid] = session
        return session

    def _remember(self, sid: str, session: _Session) -> None:
        """Keep what an ended process's children count for, for those read after it."""
        path = session.own_path() or session.inherited
        if path is None or self.max_ended <= 0:
            return
        cost = ENDED_OVERHEAD + sys.getsizeof(sid) + sys.getsizeof(path)
        self._ended[sid] = (path, cost)
        self.bytes += cost
        self._account([])

    def _account(self, sids: list[str]) -> None:
        """Recount the bytes of ``sids`` (changed), then, while over a bound, forget the
        oldest ended processes, then the oldest in flight (this one too if it is the
        oldest: a bound is a bound)."""
        for sid in sids:
            if (session := self._live.get(sid)) is not None:
                cost = _cost(sid, session)
                self.bytes += cost - session.cost
                session.cost = cost
        while self._ended and (len(self._ended) > self.max_ended or self.bytes > self.max_bytes):
            self.bytes -= self._ended.pop(next(iter(self._ended)))[1]
        while self._live and (self.bytes > self.max_bytes or len(self._live) > self.max_sessions):
            self.bytes -= self._live.pop(next(iter(self._live))).cost
            self.evicted += 1

    def _ancestors(self, sid: str) -> Iterator[tuple[str, _Session]]:
        while "/" in sid:
            sid = sid.rpartition("/")[0]
            if (parent := self._live.get(sid)) is not None:
                yield sid, parent

    def _nearest(self, sid: str) -> tuple[str, int] | None:
        """The repository of the nearest ancestor, in flight or ended, that has one, and
        that ancestor's level (the "/" in its sid)."""
        level = sid.count("/")
        while "/" in sid:
            sid, level = sid.rpartition("/")[0], level - 1
            if (parent := self._live.get(sid)) is not None:
                path = parent.own_path() or parent.inherited
            else:
                path = self._ended[sid][0] if sid in self._ended else None
            if path is not None:
                return path, level
        return None

    def _path_at_exit(self, sid: str, session: _Session) -> str | None:
        """The repository of a process that ended (not serving one): the nearest
        ancestor's, in flight or ended, unless the one it inherited when it began came
        from a nearer one since forgotten. upload-pack's whole stream can be read before
        its pack-objects' first event, which must not fall to the clone above."""
        nearest = self._nearest(sid)
        if nearest is None or (session.inherited and nearest[1] < session.inherited_level):
            return session.inherited
        return nearest[0]

    def _lend(self, sid: str, path: str | None) -> list[str]:
        """A serving command without a usable argv path learns it from its child; the
        sids of the ancestors that did."""
        lent: list[str] = []
        if path is None:
            return lent
        for parent_sid, parent in self._ancestors(sid):
            if parent.own_path() or parent.inherited:
                break
            parent.worktree = path
            lent.append(parent_sid)
        return lent

    def _operation(self, name: object) -> str:
        if isinstance(name, str) and len(name) > MAX_NAME:
            raise Rejected("field", f"cmd_name name longer than {MAX_NAME} characters")
        if not isinstance(name, str) or not _OPERATION.fullmatch(name):
            return "other"
        if name not in self._operations:
            if len(self._operations) >= self.max_operations:
                return "other"
            self._operations.add(name)
        return name


def _served_path(argv: list[str]) -> str | None:
    """``git-upload-pack '/srv/x.git'``, ``git receive-pack --stateless-rpc /srv/x.git``:
    the last word that is no option, if it is an absolute path (at most MAX_PATH long:
    argv is any command's, so a longer word is not refused, only not kept)."""
    last = next((a for a in reversed(argv[1:]) if not a.startswith("-")), None)
    if last is None or len(last) > MAX_PATH or not os.path.isabs(last):
        return None
    return last


def _seconds(name: str, value: object) -> float:
    """``t_abs``: a finite number of seconds, at least 0; Rejected otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)  # OverflowError for a 400-digit integer
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    raise Rejected("type", f"{name} without t_abs (a finite number of seconds, at least 0)")


def _cost(sid: str, session: _Session) -> int:
    """Bytes a process in flight holds (a string shared with another counts for each)."""
    size = SESSION_OVERHEAD + sys.getsizeof(sid)
    for text in (session.argv_path, session.served, session.worktree, session.inherited):
        if text is not None:
            size += sys.getsizeof(text)
    return size
