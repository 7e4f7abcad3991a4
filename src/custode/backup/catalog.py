"""The snapshots of a host in a store: listing, reading, and choosing one (``--at``).

A snapshot that cannot be read (damaged, forged, too large, or a FIFO, symlink or
directory in its place) is named in ``Catalog.damaged`` and the others stay usable; but
"the latest" is never an older snapshot while a newer one is damaged, and a damaged one
named with ``--at`` is refused with what is wrong with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from custode.backup.freshness import in_future, order_key
from custode.backup.manifest import Snapshot, read_snapshot
from custode.backup.store import Store, damaged_file
from custode.errors import IntegrityError, StateError, UsageError


@dataclass
class Catalog:
    snapshots: list[Snapshot]  # oldest first
    damaged: dict[str, str]  # key -> why


def load(store: Store, host: str, warn: Callable[[str], None] | None = None) -> Catalog:
    """Every snapshot of ``host``; a damaged one is reported, never fatal."""
    snapshots, damaged = [], {}
    prefix = f"hosts/{host}/snapshots/"
    for key, kind in store.strays(prefix):  # list() shows regular files only
        if key.endswith(".json"):
            damaged[key] = damaged_file(store.locate(key), f"is {kind}, not a regular file").message
    for key in store.list(prefix):
        if not key.endswith(".json"):
            continue
        try:
            snapshots.append(read_snapshot(store, key))
        except (IntegrityError, StateError) as exc:
            damaged[key] = exc.message
    damaged = dict(sorted(damaged.items()))
    if warn:
        for why in damaged.values():
            warn(why)
    # by each machine's own sequence, not wall time alone (one skewed clock must not win)
    snapshots.sort(key=order_key(datetime.now(UTC)))
    return Catalog(snapshots, damaged)


def hosts(store: Store) -> list[str]:
    """The host names with at least one snapshot file in ``store``, sorted (for a
    ``--host`` that found nothing: lists the whole store, so only then)."""
    found = set()
    for key in store.list("hosts/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "snapshots" and parts[3].endswith(".json"):
            found.add(parts[1])
    return sorted(found)


_ID = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")  # as manifest.new_id makes them
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
        _refuse_newer_damaged(catalog)
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
        for key, why in catalog.damaged.items():
            if snapshot_id(key).startswith(at):
                raise IntegrityError(f"snapshot {snapshot_id(key)} cannot be read: {why}")
        raise UsageError(f"no snapshot {at!r} of host {host}; list them with custode snapshots")
    raise UsageError(f"snapshot prefix {at!r} is ambiguous ({len(found)} match); give more of it")


def snapshot_id(key: str) -> str:
    """The id a snapshot's key names (``hosts/<host>/snapshots/<id>.json``)."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def _refuse_newer_damaged(catalog: Catalog) -> None:
    """Restoring "the latest" while a newer snapshot cannot be read would silently give
    older data: refuse, naming it (its id says when it was taken, its content cannot)."""
    now = datetime.now(UTC)
    # a readable snapshot dated in the future (a clock ahead) would hide them all
    present = [s.snapshot_id for s in catalog.snapshots if not in_future(s, now)]
    newest = max(present, default="")
    newer = sorted(k for k in catalog.damaged
                   if _ID.match(snapshot_id(k)) and snapshot_id(k) > newest)  # fmt: skip
    if newer:
        key = newer[-1]
        raise IntegrityError(
            f"the latest snapshot {snapshot_id(key)} cannot be read ({catalog.damaged[key]}); "
            "restore an older one by naming it with --at (custode snapshots lists them)"
        )
