"""The checks each backup command makes against this machine's memory of a store.

``backup`` refuses a host name another machine writes under, numbers its snapshot one
past the last this machine wrote, and remembers it; when the store went back in time it
still backs up (the data of tonight needs a copy more than ever) but keeps a note of it.
``verify`` reports a rollback (live, or noted by a backup since) until an operator accepts
it; ``restore`` refuses to pick the "latest" of such a store by itself. The decisions are
``backup/freshness.py``'s; the memory is ``backup/lineage.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from custode.backup.catalog import Catalog
from custode.backup.freshness import (
    clash,
    in_future,
    next_seq,
    noted,
    refuse_clash,
    refuse_restore,
    rollback,
    taken,
)
from custode.backup.lineage import Lineage, Mark, machine_id
from custode.backup.manifest import Snapshot
from custode.errors import CustodeError

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Ticket:
    """What a backup writes into its snapshot, and what it found wrong with the store."""

    machine: str
    seq: int
    rollback: str = ""


def before_backup(state_dir: Path, store_url: str, host: str, catalog: Catalog,
                  warn: Warn) -> Ticket:  # fmt: skip
    machine = machine_id(state_dir)
    refuse_clash(catalog.snapshots, host, machine, "backup")
    mark = Lineage(state_dir).get(store_url, host, warn)
    live = rollback(catalog.snapshots, list(catalog.damaged), host=host, store=store_url,
                    machine=machine, mark=mark)  # fmt: skip
    if live is not None:
        warn(f"{live.message}; backing up anyway, and custode verify reports it until "
             "accepted with custode verify --accept-rollback")  # fmt: skip
    return Ticket(machine, next_seq(catalog.snapshots, machine, mark),
                  live.message if live is not None else "")  # fmt: skip


def after_backup(state_dir: Path, store_url: str, host: str, snap: Snapshot, *,
                 ticket: Ticket, warn: Warn) -> None:  # fmt: skip
    def change(old: Mark | None) -> Mark:
        note = (old.rollback if old else "") or ticket.rollback
        if old is not None and old.seq > snap.seq:  # a later run of this machine finished first
            return Mark(old.seq, old.snapshot, note, old.held)
        return Mark(snap.seq, snap.snapshot_id, note, _stamp(snap))

    try:
        Lineage(state_dir).update(store_url, host, change)
    except CustodeError as exc:
        warn(f"snapshot {snap.snapshot_id} not remembered, so a rollback of the store to "
             f"before it goes unnoticed: {exc.message}")  # fmt: skip


@dataclass
class Standing:
    """What ``verify`` and ``snapshots`` report about the store as a whole."""

    clash: str = ""
    rollback: str = ""
    future: list[Snapshot] = field(default_factory=list)


def standing(
    state_dir: Path, store_url: str, host: str, catalog: Catalog, *, own_host: bool,
    warn: Warn, accept: bool = False,
) -> Standing:  # fmt: skip
    """The store's standing for this machine; ``accept`` first makes the store's present
    state the one remembered (after a deliberate restore of the store from an older copy)."""
    now = datetime.now(UTC)
    out = Standing(future=[s for s in catalog.snapshots if in_future(s, now)])
    lineage = Lineage(state_dir)
    mark = lineage.get(store_url, host, warn)
    machine = None
    if own_host or mark is not None:
        try:
            machine = machine_id(state_dir)
        except CustodeError as exc:
            warn(f"cannot tell this machine's snapshots apart: {exc.message}")
            return out
    out.clash = clash(catalog.snapshots, host, machine if own_host else None)
    if machine is None or mark is None:
        return out
    own = [s for s in catalog.snapshots if s.machine == machine]
    newest = max(own, key=lambda s: s.seq, default=None)
    held = _stamp(newest) if newest is not None else 0.0
    if accept:
        keep = None if newest is None else Mark(newest.seq, newest.snapshot_id, held=held)
        _remember(lineage, store_url, host, lambda old: keep, warn)
        return out
    live = rollback(catalog.snapshots, list(catalog.damaged), host=host, store=store_url,
                    machine=machine, mark=mark)  # fmt: skip
    out.rollback = live.message if live is not None else noted(mark)
    if held != mark.held or out.rollback != mark.rollback:
        # kept until accepted (a backup would hide it in the store), and the freshness
        # metric tells what the store holds, not what was sent to it
        note = out.rollback
        _remember(lineage, store_url, host,
                  lambda old: replace(old, held=held, rollback=note) if old else None,
                  warn)  # fmt: skip
    return out


def _stamp(snap: Snapshot) -> float:
    """Its date as Unix time, within what the lineage file accepts (a forged date can be
    anything from year 1 to 9999)."""
    return min(max(taken(snap).timestamp(), 0.0), 99_999_999_999.0)


def _remember(lineage: Lineage, store_url: str, host: str,
              change: Callable[[Mark | None], Mark | None], warn: Warn) -> None:  # fmt: skip
    try:
        lineage.update(store_url, host, change)
    except CustodeError as exc:
        warn(exc.message)


def check_restore(state_dir: Path, store_url: str, host: str, catalog: Catalog,
                  warn: Warn) -> None:  # fmt: skip
    """Refuse to restore the "latest" snapshot of a store that went back in time."""
    mark = Lineage(state_dir).get(store_url, host, warn)
    if mark is None:
        return
    try:
        machine = machine_id(state_dir)
    except CustodeError as exc:
        warn(f"cannot tell whether the store went back in time: {exc.message}")
        return
    live = rollback(catalog.snapshots, list(catalog.damaged), host=host, store=store_url,
                    machine=machine, mark=mark)  # fmt: skip
    refuse_restore(live.message if live is not None else noted(mark))
