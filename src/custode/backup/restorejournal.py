"""What a fleet restore into one ``--to`` has finished, so that the same command finishes
an interrupted (or partly failed) one.

A restore keeps ``.custode-restore.json`` in its ``--to`` while it works: the snapshot
(with its store and host) and each repository already moved into place with its backup
id. Run again, it restores only the rest, without ``--force``; once every repository of
the snapshot it was asked for is in place the file goes. Each repository is still
assembled aside and renamed in whole (``custode.backup.restore``), so the journal only
ever names complete repositories; one listed there whose directory has gone since is
restored again.

The file lies in a directory the person chose and is read like any untrusted file:
bounded, never blocking, parsed with the store's JSON bounds. A damaged one is refused
with the way out (remove it, or ``--force``), never guessed at.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from custode.backup.records import load_object
from custode.base import fsread
from custode.errors import IntegrityError, UsageError

NAME = ".custode-restore.json"
LIMIT = 64 * 1024 * 1024  # a journal of a million repositories' names


@dataclass
class Journal:
    """The unfinished restore recorded in ``target``."""

    target: Path
    store: str
    host: str
    snapshot: str
    done: dict[str, str] = field(default_factory=dict)  # repository -> backup id

    @property
    def path(self) -> Path:
        return self.target / NAME

    def same(self, store: str, host: str, snapshot: str) -> bool:
        return (self.store, self.host, self.snapshot) == (store, host, snapshot)

    def finished(self, repository: str, backup_id: str) -> bool:
        return self.done.get(repository) == backup_id

    def mark(self, repository: str, backup_id: str) -> None:
        """Record ``repository`` as in place (the file is replaced atomically)."""
        self.done[repository] = backup_id
        self.save()

    def save(self) -> None:
        body = {
            "format": 1,
            "store": self.store,
            "host": self.host,
            "snapshot": self.snapshot,
            # names that are not UTF-8 travel as surrogate escapes, as in every record
            "done": self.done,
        }
        data = json.dumps(body, ensure_ascii=True, indent=1).encode()
        tmp = self.target / f".{NAME}.{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with os.fdopen(os.open(tmp, flags, 0o600), "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def read(target: Path) -> Journal | None:
    """The journal in ``target``, None when there is none; UsageError when it cannot be
    used (naming the file and the two ways on)."""
    path = target / NAME
    way = f"remove {path} and restore with --force, or restore into another --to"
    try:
        data, _ = fsread.read_all(str(path), LIMIT, follow=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {fsread.fault(exc)}; {way}") from None
    try:
        body = load_object(data, str(path))
    except IntegrityError as exc:
        raise UsageError(f"{exc.message}; {way}") from None
    store, host, snapshot, done = (body.get(k) for k in ("store", "host", "snapshot", "done"))
    if (
        body.get("format") != 1
        or not isinstance(store, str)
        or not isinstance(host, str)
        or not isinstance(snapshot, str)
        or not isinstance(done, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in done.items())
    ):
        raise UsageError(f"{path} is not a restore journal this custode wrote; {way}")
    return Journal(target, store, host, snapshot, dict(done))
