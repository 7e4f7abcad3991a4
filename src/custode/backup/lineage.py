"""What this machine remembers about the stores it backs up to, and who it is.

* The machine id: a stable identity recorded in every snapshot, so that two machines
  backing up under one host name (the default name is the short host name, and machines
  cloned from one image share it) are told apart before one's ``forget --prune`` deletes
  the other's backups. It is kept in ``<state>/machine-id``; on first use it is derived
  from ``/etc/machine-id`` (hashed with a custode-specific key: that file is meant to stay
  private) or, where that is unreadable, made at random.
* The lineage: per store and host, the sequence number and id of the last snapshot this
  machine wrote (``<state>/backup-lineage.json``). A store whose newest snapshot of this
  machine is older than that went back in time (snapshots deleted, or an older copy of the
  store put in its place); an optional ``rollback`` note keeps such a finding until an
  operator accepts it (``custode verify --accept-rollback``).

Both files are written atomically with mode 0600 and read as untrusted input: a regular
file only, bounded in size, validated field by field; a bad file is reported and
rewritten, never fatal to a backup.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custode.base.fsread import FileTooLarge, NotRegularFile, read_all
from custode.errors import StateError

MACHINE_FILE = "machine-id"
LINEAGE_FILE = "backup-lineage.json"
LINEAGE_FORMAT = "custode-lineage/1"
SYSTEM_MACHINE_ID = Path("/etc/machine-id")
MACHINE = re.compile(r"^[0-9a-f]{32}$")
_SNAPSHOT_ID = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")
_MAX_FILE = 1 << 20  # thousands of stores; a larger file is not one custode wrote
_MAX_SEQ = 1 << 53
_MAX_NOTE = 2000


@dataclass(frozen=True)
class Mark:
    """The last snapshot this machine wrote to one store for one host."""

    seq: int
    snapshot: str
    rollback: str = ""  # a store-went-back-in-time finding not yet accepted
    # when this machine's newest snapshot the store was last seen to hold was taken (Unix
    # time; 0: unknown): what the backup-freshness metric may claim, not what was written
    held: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return (
            {"seq": self.seq, "snapshot": self.snapshot}
            | ({"rollback": self.rollback} if self.rollback else {})
            | ({"held": self.held} if self.held else {})
        )


def _read_small(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes; None when it does not exist."""
    fix = "remove it (custode writes it afresh)"
    try:
        data, st = read_all(str(path), limit, follow=False)  # non-blocking, capped
    except FileNotFoundError:
        return None
    except NotRegularFile:
        raise StateError(f"{path} is not a regular file; {fix}") from None
    except FileTooLarge:
        raise StateError(f"{path} is larger than {limit} bytes; {fix}") from None
    except OSError as exc:
        why = (
            "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        )
        raise StateError(f"{path} {why}; {fix}") from None
    if st.st_mode & 0o022:
        raise StateError(
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
            f"so it cannot be trusted; {fix}"
        )
    return data


def _write_atomic(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``path`` whole or not at all; ``replace=False`` raises FileExistsError rather
    than replace a file another process made meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _from_system(source: Path) -> str | None:
    """This machine's systemd/D-Bus id, hashed (an application must not expose it as is)."""
    try:
        data = _read_small(source, 64)
    except StateError:
        return None
    raw = (data or b"").strip().decode("ascii", "replace")
    if not MACHINE.match(raw) or raw == "0" * 32:
        return None
    return hmac.new(bytes.fromhex(raw), b"custode backup machine", hashlib.sha256).hexdigest()[:32]


def machine_id(state_dir: Path, *, source: Path = SYSTEM_MACHINE_ID) -> str:
    """The machine id custode records in snapshots, made and kept on first use."""
    path = state_dir / MACHINE_FILE
    data = _read_small(path, 64)
    if data is not None:
        found = data.strip().decode("ascii", "replace")
        if MACHINE.match(found):
            return found
        raise StateError(
            f"{path} does not hold a machine id (32 hex digits); remove it only if this "
            "machine's snapshots can be told apart otherwise (custode makes a new one)"
        )
    made = _from_system(source) or secrets.token_hex(16)
    try:
        _write_atomic(path, f"{made}\n".encode(), replace=False)
    except FileExistsError:  # another custode made it first: one id, whoever wrote it
        return machine_id(state_dir, source=source)
    except OSError as exc:
        raise StateError(
            f"cannot write {path} ({exc.strerror}); make the state directory writable"
        ) from None
    return made


def store_slot(store_url: str, host: str) -> str:
    return f"{store_url}#{host}"


class Lineage:
    """The lineage file of one state directory; ``update`` is one locked read-modify-write."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LINEAGE_FILE

    def load(self) -> tuple[dict[str, Mark], str]:
        """Every mark, and a problem with the file ("" when none): a bad file counts as
        empty (rollback detection starts again from the next backup), never as an error."""
        try:
            data = _read_small(self.path, _MAX_FILE)
        except StateError as exc:
            return {}, exc.message
        if data is None:
            return {}, ""
        try:
            return _parse(data), ""
        except ValueError as exc:
            return {}, f"{self.path} is damaged ({exc}); it is rewritten at the next backup"

    def get(
        self, store_url: str, host: str, warn: Callable[[str], None] | None = None
    ) -> Mark | None:
        marks, problem = self.load()
        if problem and warn:
            warn(problem)
        return marks.get(store_slot(store_url, host))

    def update(
        self, store_url: str, host: str, change: Callable[[Mark | None], Mark | None]
    ) -> None:
        """Apply ``change`` to one store's mark (None removes it) and write the file."""
        with self._locked():
            marks, _ = self.load()
            slot = store_slot(store_url, host)
            new = change(marks.get(slot))
            if new is None:
                marks.pop(slot, None)
            else:
                marks[slot] = new
            body = {"format": LINEAGE_FORMAT,
                    "stores": {k: v.to_json() for k, v in sorted(marks.items())}}  # fmt: skip
            try:
                _write_atomic(self.path, json.dumps(body, indent=1).encode() + b"\n")
            except OSError as exc:
                raise StateError(
                    f"cannot write {self.path} ({exc.strerror}); make the state directory writable"
                ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(f".{self.path.name}.lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open {lock} ({exc.strerror}); remove it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for one small write: never long
            yield
        finally:
            os.close(fd)


def _parse(data: bytes) -> dict[str, Mark]:
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(body, dict) or body.get("format") != LINEAGE_FORMAT:
        raise ValueError(f"not a {LINEAGE_FORMAT} file")
    stores = body.get("stores")
    if not isinstance(stores, dict):
        raise ValueError("'stores' is not an object")
    out = {}
    for slot, item in stores.items():
        if not isinstance(item, dict) or "#" not in slot:
            raise ValueError(f"entry {slot[:80]!r} is malformed")
        seq, snap, note = item.get("seq"), item.get("snapshot"), item.get("rollback", "")
        held = item.get("held", 0)
        if not (isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < _MAX_SEQ):
            raise ValueError(f"entry {slot[:80]!r}: 'seq' is not a positive integer")
        if not (isinstance(snap, str) and _SNAPSHOT_ID.match(snap)):
            raise ValueError(f"entry {slot[:80]!r}: 'snapshot' is not a snapshot id")
        if not isinstance(note, str) or len(note) > _MAX_NOTE:
            raise ValueError(f"entry {slot[:80]!r}: 'rollback' is malformed")
        if not (isinstance(held, int | float) and not isinstance(held, bool) and 0 <= held < 1e11):
            raise ValueError(f"entry {slot[:80]!r}: 'held' is not a time")
        out[slot] = Mark(seq, snap, note, float(held))
    return out
