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

The head file goes with the log: deleting both would leave "0 entries, chain intact". So
every append also anchors the head (seq and hash) in the state database beside the log
(``StateDB.audit_anchor``), and ``verify`` checks the log against it: a log that is gone,
cut short or replaced is reported, and so is an anchor that is gone (the database deleted
or replaced) once the head file says the log was anchored. ``append`` refuses to extend a
log the anchor says is short; a log that is gone altogether (both files moved aside, on
purpose or not) is started anew with a first ``audit.new-log`` entry that records the
anchor of the log it replaces, so the loss stays on record. Anchoring is best effort: a
busy or damaged database costs the anchor (with a warning), never the entry.

The log is evidence, not a vault: anyone who can write the state directory can rewrite
the whole chain (so the directory and its files must be custode's own, not writable by
others: ``secretfile.require_private_dir``). It catches accidents, careless edits,
truncation and deletion.

Callers must never put secrets in ``details`` (passwords, tokens, keys, age identities).
As a defence, values under keys matching ``REDACT_KEYS`` are replaced by ``[redacted]``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import pwd
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from custode.base.secretfile import require_private_dir, require_private_file
from custode.errors import IntegrityError, StateError, StateUnusableError
from custode.records.problems import note_problem
from custode.records.state import AuditAnchor, StateDB

GENESIS = "0" * 64
NEW_LOG = "audit.new-log"  # the first entry of a log started where an anchored one was lost
log = logging.getLogger(__name__)
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
    anchored: bool = True  # written by a custode that anchors: a missing anchor is news


@dataclass
class VerifyReport:
    path: Path
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts worth saying that are not damage

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


@dataclass
class _Seen:
    """What ``verify`` noted while reading the lines."""

    last: AuditEntry | None = None
    anchored_hash: str = ""  # of the entry whose seq the anchor names
    lost_log: Any = None  # the entry count of the log this one replaced, if it says so


def _identity(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (-1, -1)
    return (info.st_dev, info.st_ino)


def _anchor_problem(anchor: AuditAnchor | None, last: AuditEntry | None, db: Path) -> str | None:
    """Why ``anchor`` says entries are missing from a log ending at ``last`` (an anchor one
    behind is fine: an append that ended before anchoring, or a busy database)."""
    if anchor is None:
        return None
    if last is None:
        return (
            f"the log is missing but {db} anchors {anchor.seq} entries (the log and its head "
            "file were deleted or moved aside)"
        )
    if anchor.seq > last.seq:
        return (
            f"log ends at seq {last.seq} but {db} anchors seq {anchor.seq} "
            "(entries removed from the end)"
        )
    if anchor.seq == last.seq and anchor.hash != last.hash:
        return f"the last entry, seq {last.seq}, is not the one anchored in {db} (replaced)"
    return None


class AuditLog:
    """The audit log at ``path`` with its ``.head`` and ``.lock`` sidecars, anchored in the
    state database ``anchor`` (default: ``state.db`` beside it)."""

    def __init__(self, path: Path, anchor: Path | None = None) -> None:
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        self.lock_path = path.with_name(path.name + ".lock")
        self.anchor_path = anchor or path.with_name("state.db")
        self._anchoring = True  # off after a failure: one wait on a busy database, not many
        # One connection per thread and process, kept open: closing the last connection
        # checkpoints the database with an fsync, which would double the cost of an append.
        self._dbs = threading.local()

    def append(self, action: str, target: str, details: dict[str, Any] | None = None) -> AuditEntry:
        """Record one action. ``details`` must be JSON-serialisable and hold no secrets."""
        try:
            return self._append(action, target, details)
        except (IntegrityError, StateError) as exc:  # callers warn; custode run counts it
            note_problem(exc.message)
            raise

    def _append(self, action: str, target: str, details: dict[str, Any] | None) -> AuditEntry:
        # Round-trip through JSON so the hash covers exactly what verify will read back
        # (tuples become lists, paths strings).
        raw = json.dumps(details or {}, default=str, allow_nan=False)
        clean = redact(json.loads(raw))
        try:
            self._require_private(create=True)
            lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                entry = self._append_anchored(self._anchor_db(), action, str(target), clean)
            finally:
                os.close(lock_fd)  # releases the flock
        except OSError as exc:
            raise StateError(
                f"cannot append to audit log {self.path}: {exc}; check the permissions of "
                f"{self.path.parent} and free disk space"
            ) from exc
        return entry

    def _append_anchored(
        self, db: StateDB | None, action: str, target: str, details: Any
    ) -> AuditEntry:
        anchor = self._anchor_of(db)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            last = self._last_entry(fd, size)
            head_problem = self._head_problem(last)[1]
            short = _anchor_problem(anchor, last, self.anchor_path)
            if head_problem or (short and last is not None):
                raise self._refuse(head_problem or short or "")
            if short and anchor is not None:  # all gone: start anew, the loss on record
                lost = {"seq": anchor.seq, "hash": anchor.hash, "anchored_at": anchor.at}
                last = self._write_entry(fd, None, NEW_LOG, str(self.path), {"lost_log": lost})
            entry = self._write_entry(fd, last, action, target, details)
        finally:
            os.close(fd)
        self._write_head(Head(entry.seq, entry.hash))
        if db is not None and self._anchoring:
            try:
                db.set_audit_anchor(self.path.name, entry.seq, entry.hash)
            except StateUnusableError as exc:
                self._anchor_failed(exc)
        return entry

    def _anchor_db(self) -> StateDB | None:
        if not self._anchoring:
            return None
        # not a connection from before a fork, nor to a file deleted or replaced since
        opened: tuple[int, tuple[int, int], StateDB] | None = getattr(self._dbs, "open", None)
        if opened is not None and opened[:2] == (os.getpid(), _identity(self.anchor_path)):
            return opened[2]
        if opened is not None:
            opened[2].close()
        try:
            db = StateDB.open(self.anchor_path)
        except StateUnusableError as exc:
            self._anchor_failed(exc)
            return None
        self._dbs.open = (os.getpid(), _identity(self.anchor_path), db)
        return db

    def _anchor_of(self, db: StateDB | None) -> AuditAnchor | None:
        if db is None:
            return None
        try:
            return db.audit_anchor(self.path.name)
        except StateUnusableError as exc:
            self._anchor_failed(exc)
            return None

    def _anchor_failed(self, exc: StateUnusableError) -> None:
        self._anchoring = False
        log.warning("audit log %s: its head is not anchored: %s", self.path, exc)

    def _write_entry(
        self, fd: int, last: AuditEntry | None, action: str, target: str, details: Any
    ) -> AuditEntry:
        size = os.fstat(fd).st_size
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
        """Check every line, the chain, the head file and the anchor; never raises for a
        bad log (``StateUnusableError`` for an unsafe directory or file)."""
        report = VerifyReport(self.path)
        self._require_private(create=False)
        anchor, anchor_problem = self._read_anchor()
        try:
            with self._shared_lock():  # a consistent snapshot: no append half-done
                seen = self._check_lines(report, anchor.seq if anchor else 0)
                head, problem = self._head_problem(seen.last)
        except OSError as exc:
            raise StateError(
                f"cannot read audit log {self.path}: {exc}; check the permissions of "
                f"{self.path.parent}"
            ) from exc
        if problem:
            report.problems.append(problem)
        else:  # the anchor is for what the head file cannot tell: it went with the log
            report.problems += self._anchor_verdict(anchor, anchor_problem, head, seen)
        if seen.lost_log is not None:
            report.notes.append(
                f"this log began where an earlier one of {seen.lost_log} entries was lost "
                f"or moved aside (entry 1, {NEW_LOG}, records its anchor)"
            )
        return report

    def _read_anchor(self) -> tuple[AuditAnchor | None, str]:
        """The anchor, and why it could not be read ("" if it could or there is none)."""
        if not self.anchor_path.exists():  # reading must not create the database
            return None, ""
        try:
            with StateDB.open(self.anchor_path) as db:
                return db.audit_anchor(self.path.name), ""
        except StateUnusableError as exc:
            return None, f"the log's anchor cannot be read: {exc}"

    def _anchor_verdict(
        self, anchor: AuditAnchor | None, unreadable: str, head: Head | None, seen: _Seen
    ) -> list[str]:
        if unreadable:
            return [unreadable]
        if anchor is None:
            if seen.last is not None and head is not None and head.anchored:
                return [
                    f"the log's anchor in {self.anchor_path} is gone (the state database was "
                    "deleted or replaced): a log cut short can no longer be told; the next "
                    "append anchors it again"
                ]
            return []
        problem = _anchor_problem(anchor, seen.last, self.anchor_path)
        if problem:
            return [problem]
        if seen.anchored_hash != anchor.hash:
            return [
                f"entry seq {anchor.seq} is not the one anchored in {self.anchor_path} "
                "(the log was rewritten or replaced)"
            ]
        return []

    def _check_lines(self, report: VerifyReport, anchored_seq: int) -> _Seen:
        seen = _Seen()
        prev_hash, prev_seq, prev_line = GENESIS, 0, 0
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
            if entry.seq == anchored_seq:
                seen.anchored_hash = entry.hash
            if lineno == 1 and entry.action == NEW_LOG:
                lost = entry.details.get("lost_log")
                seen.lost_log = lost.get("seq", "?") if isinstance(lost, dict) else "?"
            prev_hash, prev_seq, prev_line, seen.last = entry.hash, entry.seq, lineno, entry
        return seen

    def _require_private(self, *, create: bool) -> None:
        if require_private_dir(self.path.parent, "state directory", create=create):
            for path in (self.path, self.head_path, self.lock_path):
                require_private_file(path, "audit log file")

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

    def _head_problem(self, last: AuditEntry | None) -> tuple[Head | None, str | None]:
        """The head file, and why it does not describe the end of a log ending at ``last``."""
        try:
            raw = json.loads(self.head_path.read_bytes())
            head = Head(int(raw["seq"]), str(raw["hash"]), raw.get("anchored") is True)
        except FileNotFoundError:
            return None, _head_problem(None, last)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return None, f"the head file {self.head_path.name} is damaged ({type(exc).__name__})"
        return head, _head_problem(head, last)

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
