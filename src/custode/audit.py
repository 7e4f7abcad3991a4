"""The audit log: an append-only, hash-chained record of every action that changes a
repository or a store (``<state_dir>/audit.jsonl``).

Each line is one entry in canonical JSON (sorted keys, compact separators). ``hash`` is
the SHA-256 of the entry's canonical JSON without ``hash``; ``prev`` is the previous
entry's hash (64 zeros for the first), so editing, removing or reordering an entry
breaks the chain. A chain cannot show that its *last* entries were removed, so a sidecar
``audit.jsonl.head`` (replaced atomically) records the last entry's seq and hash.

Appends are serialised across threads and processes by ``flock`` on a sidecar
``audit.jsonl.lock``; under the lock the writer reads the last line to chain from,
writes the new line with a single ``os.write`` on an ``O_APPEND`` descriptor, fsyncs,
then replaces the head file. A crash between the two leaves the head one entry behind,
which both ``append`` and ``verify`` accept. ``append`` refuses to extend a log whose
tail disagrees with its head, so it never papers over a truncation.

The log is evidence, not a vault: anyone who can write the state directory can rewrite
the whole chain. It catches accidents, careless edits and truncation.

Callers must never put secrets in ``details`` (passwords, tokens, keys, age identities).
As a defence, values under keys matching ``REDACT_KEYS`` are replaced by ``[redacted]``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pwd
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from custode.errors import IntegrityError, StateError

GENESIS = "0" * 64
REDACT_KEYS = re.compile(r"password|secret|token|key|identity", re.IGNORECASE)
REDACTED = "[redacted]"
_FIELDS = ("seq", "time", "host", "user", "pid", "action", "target", "details", "prev", "hash")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def entry_hash(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of an entry's fields other than ``hash``."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def redact(value: Any) -> Any:
    """``value`` with every value under a secret-looking key replaced, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if REDACT_KEYS.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    host: str
    user: str
    pid: int
    action: str
    target: str
    details: dict[str, Any]
    prev: str
    hash: str

    def to_line(self) -> str:
        return canonical(asdict(self)) + "\n"

    @classmethod
    def from_fields(cls, fields: Any) -> AuditEntry:
        """An entry from a parsed line; ``ValueError`` naming what is wrong otherwise."""
        if not isinstance(fields, dict):
            raise ValueError("not an audit entry (not a JSON object)")
        missing = [name for name in _FIELDS if name not in fields]
        if missing:
            raise ValueError(f"not an audit entry (missing {', '.join(missing)})")
        entry = cls(**{name: fields[name] for name in _FIELDS})
        types = {"seq": int, "pid": int, "details": dict, "prev": str, "hash": str}
        wrong = [n for n, t in types.items() if not isinstance(getattr(entry, n), t)]
        if wrong:
            raise ValueError(f"not an audit entry (wrong type for {', '.join(wrong)})")
        return entry


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str


@dataclass
class VerifyReport:
    path: Path
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry, common in containers
        return str(os.getuid())


def _head_problem(head: Head | None, last: AuditEntry | None) -> str | None:
    """Why ``head`` does not describe the end of a log whose last entry is ``last``."""
    if last is None:
        return (
            f"the log is missing or empty but the head file records seq {head.seq}"
            if head
            else None
        )
    if head is None:  # fine after one entry: the first append may crash before the head
        return None if last.seq == 1 else f"the head file is missing (log ends at seq {last.seq})"
    if (head.seq, head.hash) in ((last.seq, last.hash), (last.seq - 1, last.prev)):
        return None  # in step, or one behind: an append that crashed before the head
    if head.seq == last.seq:
        return (
            f"the head file records another hash for seq {head.seq}, the last entry "
            "(last entry replaced, or head file edited)"
        )
    why = "entries removed from the end" if head.seq > last.seq else "head file edited"
    return f"log ends at seq {last.seq} but the head file records seq {head.seq} ({why})"


class AuditLog:
    """The audit log at ``path`` with its ``.head`` and ``.lock`` sidecars."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        self.lock_path = path.with_name(path.name + ".lock")

    def append(self, action: str, target: str, details: dict[str, Any] | None = None) -> AuditEntry:
        """Record one action. ``details`` must be JSON-serialisable and hold no secrets."""
        # Round-trip through JSON so the hash covers exactly what verify will read back
        # (tuples become lists, paths strings).
        raw = json.dumps(details or {}, default=str, allow_nan=False)
        clean = redact(json.loads(raw))
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    entry = self._append_locked(fd, action, str(target), clean)
                finally:
                    os.close(fd)
                self._write_head(Head(entry.seq, entry.hash))
            finally:
                os.close(lock_fd)  # releases the flock
        except OSError as exc:
            raise StateError(
                f"cannot append to audit log {self.path}: {exc}; check the permissions of "
                f"{self.path.parent} and free disk space"
            ) from exc
        return entry

    def _append_locked(self, fd: int, action: str, target: str, details: Any) -> AuditEntry:
        size = os.fstat(fd).st_size
        last = self._last_entry(fd, size)
        problem = self._head_problem(last)
        if problem:
            raise self._refuse(problem)
        fields: dict[str, Any] = {
            "seq": last.seq + 1 if last else 1,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "host": socket.gethostname(),
            "user": _user(),
            "pid": os.getpid(),
            "action": action,
            "target": target,
            "details": details,
            "prev": last.hash if last else GENESIS,
        }
        entry = AuditEntry(**fields, hash=entry_hash(fields))
        data = entry.to_line().encode()
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # leave no partial line for the next append to trip on
            raise
        return entry

    def entries(self) -> Iterator[AuditEntry]:
        """Every entry in order; ``IntegrityError`` at the first line that is not one."""
        for lineno, line in self._lines():
            try:
                yield AuditEntry.from_fields(json.loads(line))
            except ValueError as exc:
                raise IntegrityError(
                    f"audit log {self.path} line {lineno}: {exc}; run custode audit verify"
                ) from None

    def verify(self) -> VerifyReport:
        """Check every line, the chain and the head file; never raises for a bad log."""
        report = VerifyReport(self.path)
        try:
            with self._shared_lock():  # a consistent snapshot: no append half-done
                last = self._check_lines(report)
                problem = self._head_problem(last)
        except OSError as exc:
            raise StateError(
                f"cannot read audit log {self.path}: {exc}; check the permissions of "
                f"{self.path.parent}"
            ) from exc
        if problem:
            report.problems.append(problem)
        return report

    def _check_lines(self, report: VerifyReport) -> AuditEntry | None:
        prev_hash, prev_seq, prev_line = GENESIS, 0, 0
        last: AuditEntry | None = None
        for lineno, line in self._lines():
            report.entries += 1
            where = f"line {lineno}"
            if not line.endswith("\n"):
                report.problems.append(f"{where}: incomplete last line (truncated write)")
                continue
            try:
                fields = json.loads(line)
                entry = AuditEntry.from_fields(fields)
            except json.JSONDecodeError:
                report.problems.append(f"{where}: not valid JSON")
                continue
            except ValueError as exc:
                report.problems.append(f"{where}: {exc}")
                continue
            # Hash what was read, not just the known fields: an added field is an edit too.
            try:
                edited = entry_hash(fields) != entry.hash
            except ValueError:  # NaN or Infinity: never written by custode
                edited = True
            if edited:
                report.problems.append(f"{where}: entry edited (hash mismatch)")
            if entry.seq != prev_seq + 1:
                why = "entry removed" if entry.seq > prev_seq else "entry duplicated or reordered"
                report.problems.append(f"{where}: seq {entry.seq} follows {prev_seq} ({why})")
            if entry.prev != prev_hash:
                before = f"line {prev_line}" if prev_line else "the start of the log"
                report.problems.append(
                    f"{where}: chain broken: prev does not match {before} "
                    "(entry removed or reordered)"
                )
            prev_hash, prev_seq, prev_line, last = entry.hash, entry.seq, lineno, entry
        return last

    @contextmanager
    def _shared_lock(self) -> Iterator[None]:
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # nothing was ever appended
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            f = self.path.open(encoding="utf-8", errors="replace", newline="\n")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"cannot read audit log {self.path}: {exc}") from exc
        with f:
            yield from enumerate(f, start=1)

    def _last_entry(self, fd: int, end: int) -> AuditEntry | None:
        """The entry on the last line, read backwards from ``end``, the file's size."""
        if end == 0:
            return None
        tail, chunk = b"", 4096
        while True:
            start = max(0, end - chunk)
            tail = os.pread(fd, end - start, start) + tail
            newline = tail.rfind(b"\n", 0, len(tail) - 1)
            if newline >= 0 or start == 0:
                break
            end, chunk = start, chunk * 2
        line = tail[newline + 1 :]
        try:
            if not line.endswith(b"\n"):
                raise ValueError("incomplete last line")
            return AuditEntry.from_fields(json.loads(line))
        except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
            raise self._refuse(f"its last line is damaged ({exc})") from None

    def _head_problem(self, last: AuditEntry | None) -> str | None:
        try:
            raw = json.loads(self.head_path.read_bytes())
            head = Head(int(raw["seq"]), str(raw["hash"]))
        except FileNotFoundError:
            head = None
        except (ValueError, KeyError, TypeError) as exc:
            return f"the head file {self.head_path.name} is damaged ({type(exc).__name__})"
        return _head_problem(head, last)

    def _write_head(self, head: Head) -> None:
        tmp = self.head_path.with_name(f"{self.head_path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.write(fd, (canonical(asdict(head)) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.head_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _refuse(self, problem: str) -> IntegrityError:
        return IntegrityError(
            f"audit log {self.path} will not be appended to: {problem}; run custode audit "
            f"verify, keep a copy, then start a new log by moving {self.path.name} and "
            f"{self.head_path.name} aside"
        )
