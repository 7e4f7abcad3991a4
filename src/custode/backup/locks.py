"""Store locks, as restic does it: backups share, a prune is exclusive.

A backup chooses its parent among manifests that may belong to no kept snapshot, and
writes files before its snapshot exists; a concurrent prune would delete exactly those.
So each backup writes ``hosts/<host>/locks/<id>.json`` (shared) before it reads anything,
and a prune writes an exclusive one; each then lists the locks and backs off if it sees
a conflicting one. Both write before they look, so of two racing processes at least one
sees the other. A lock whose process is gone (same machine, dead pid) or that is older
than ``STALE_AFTER`` is ignored and removed. A lock names its process by pid and start
time (``base.process``): a killed backup's pid is soon another process's.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime

from custode.backup.manifest import LOCK_FORMAT, id_time, new_id
from custode.backup.records import LOCK_LIMIT, read_object
from custode.backup.store import Store
from custode.base.process import process_alive, started
from custode.errors import CustodeError, LockedError

STALE_AFTER = 24 * 3600.0


def _stale(store: Store, key: str, now: datetime) -> bool:
    try:
        info = read_object(store, key, LOCK_LIMIT, f"lock {key}")  # bounded: hostile store
        when = id_time(key.rsplit("/", 1)[1].removesuffix(".json"))
    except (CustodeError, ValueError, TypeError):
        return True
    if (now - when).total_seconds() > STALE_AFTER:
        return True
    pid, since = info.get("pid"), info.get("started")
    if info.get("machine") != socket.gethostname() or not isinstance(pid, int):
        return False
    if isinstance(since, bool) or not isinstance(since, int | float):
        since = None  # written by an older custode: the pid alone
    return not process_alive(pid, since)


@contextmanager
def store_lock(store: Store, host: str, *, exclusive: bool, purpose: str) -> Iterator[None]:
    now = datetime.now(UTC)
    prefix = f"hosts/{host}/locks/"
    key = f"{prefix}{new_id(now)}.json"
    body = {"format": LOCK_FORMAT, "exclusive": exclusive, "purpose": purpose,
            "machine": socket.gethostname(), "pid": os.getpid(),
            "started": started(os.getpid()),
            "created": now.isoformat(timespec="seconds")}  # fmt: skip
    store.put_bytes(key, json.dumps(body).encode())
    try:
        for other in store.list(prefix):
            if other == key or not other.endswith(".json"):
                continue
            if _stale(store, other, now):
                with suppress(CustodeError, OSError):
                    store.delete(other)
                continue
            try:
                theirs = read_object(store, other, LOCK_LIMIT, f"lock {other}")
            except CustodeError:
                continue
            if exclusive or theirs.get("exclusive"):
                what = theirs.get("purpose", "another custode")
                raise LockedError(
                    f"store {store.url} is busy: {what} on {theirs.get('machine')} "
                    f"(pid {theirs.get('pid')}, since {theirs.get('created')}) holds {other}; "
                    "try again when it has finished"
                )
        yield
    finally:
        with suppress(CustodeError, OSError):
            store.delete(key)
