"""The snapshots of a host in a store: listing, reading, and choosing one (``--at``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from custode.backup.manifest import Snapshot
from custode.backup.store import Store
from custode.errors import IntegrityError, StateError, UsageError


@dataclass
class Catalog:
    snapshots: list[Snapshot]  # oldest first
    damaged: dict[str, str]  # key -> why


def load(store: Store, host: str, warn: Callable[[str], None] | None = None) -> Catalog:
    """Every snapshot of ``host``; a damaged one is reported, never fatal."""
    snapshots, damaged = [], {}
    for key in store.list(f"hosts/{host}/snapshots/"):
        if not key.endswith(".json"):
            continue
        try:
            snapshots.append(Snapshot.from_bytes(store.get_bytes(key), key))
        except (IntegrityError, StateError) as exc:
            damaged[key] = exc.message
            if warn:
                warn(exc.message)
    snapshots.sort(key=lambda s: (s.created, s.snapshot_id))
    return Catalog(snapshots, damaged)


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+)?([+-]\d{2}:?\d{2}|Z)?$")


def choose(catalog: Catalog, at: str | None, store_url: str, host: str) -> Snapshot:
    """The latest snapshot, one named by id (or a unique prefix of it), or the latest
    taken at or before a time (``2026-11-20`` or ``2026-11-20T14:00``, local time unless
    it carries an offset)."""
    if not catalog.snapshots:
        raise StateError(
            f"no snapshot of host {host} in {store_url}; run custode backup first "
            "(or pass --host for another host's backups)"
        )
    if at is None or at == "latest":
        return catalog.snapshots[-1]
    if _DATE.match(at):
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.astimezone()
        if len(at) == 10:  # a date: the end of that day
            when = when.replace(hour=23, minute=59, second=59)
        before = [s for s in catalog.snapshots if s.time <= when.astimezone(UTC)]
        if not before:
            first = catalog.snapshots[0].created
            raise UsageError(f"no snapshot at or before {at}; the oldest is from {first}")
        return before[-1]
    found = [s for s in catalog.snapshots if s.snapshot_id.startswith(at)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"no snapshot {at!r} of host {host}; list them with custode snapshots")
    raise UsageError(f"snapshot prefix {at!r} is ambiguous ({len(found)} match); give more of it")
