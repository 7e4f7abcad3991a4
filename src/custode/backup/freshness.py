"""Which snapshot is newest, and whether a store can be trusted to be current.

Pure decisions over a host's snapshots, this machine's id and its memory of the store
(``backup/lineage.py``); nothing here reads or writes anything.

* Order: by the writing machine's sequence number, never by wall time alone. A clock a
  year ahead for one night must not make that night's snapshot the "latest" for a year
  (restore, the drill and ``forget --keep-last`` all take the newest). Snapshots from
  before sequence numbers (``seq`` 0) come first, in time order, except that a snapshot
  dated in the future (beyond ``FUTURE_TOLERANCE``) sorts before the others of its
  sequence number: it never wins on its date alone.
* Rollback: this machine remembers the last snapshot it wrote to each store. When that
  snapshot is gone and nothing newer of this machine is there, the store went back in
  time (its newest snapshots deleted, or an older copy put in its place).
* Clash: two machines backing up under one host name share one namespace, and one's
  ``forget --prune`` deletes the other's backups; snapshots of the host carrying another
  machine's id make ``backup`` and ``forget`` refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from custode.backup.lineage import Mark
from custode.backup.manifest import Snapshot
from custode.errors import IntegrityError, UsageError

MAX_SEQ = 1 << 53  # what snapshots and the lineage file accept (exact in every JSON reader)
FUTURE_TOLERANCE = timedelta(minutes=10)  # clocks kept by NTP are seconds apart, not minutes
ROLLBACK_FIX = (
    "fix: find out who deleted or replaced snapshots; if the store was put back from an "
    "older copy on purpose, accept it with custode verify --accept-rollback"
)


def taken(snap: Snapshot) -> datetime:
    """When the snapshot says it was taken (a time without offset counts as UTC)."""
    when = snap.time
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def in_future(snap: Snapshot, now: datetime) -> bool:
    return taken(snap) > now + FUTURE_TOLERANCE


def future_note(snap: Snapshot, now: datetime) -> str:
    return (
        f"snapshot {snap.snapshot_id} of host {snap.host} is dated {snap.created}, in the "
        f"future (now is {now.isoformat(timespec='seconds')}): it was taken with a clock "
        "ahead and is never the latest by its date; check the clock (NTP) of that host"
    )


def order_key(now: datetime) -> Callable[[Snapshot], tuple[int, int, datetime, str]]:
    """Sort key, oldest first (see the module docstring)."""

    def key(snap: Snapshot) -> tuple[int, int, datetime, str]:
        return (snap.seq, 0 if in_future(snap, now) else 1, taken(snap), snap.snapshot_id)

    return key


def machines(snapshots: Sequence[Snapshot]) -> set[str]:
    return {s.machine for s in snapshots if s.machine}


def clash(snapshots: Sequence[Snapshot], host: str, machine: str | None) -> str:
    """A message when the host's snapshots were written by another machine than
    ``machine`` (None: by more than one machine), else ""."""
    found = machines(snapshots)
    others = sorted(found - {machine}) if machine else sorted(found)[1:] if len(found) > 1 else []
    if not others:
        return ""
    theirs = f"machine {others[0][:12]}" + (
        f" and {len(others) - 1} more" if len(others) > 1 else ""
    )
    mine = f"this machine is {machine[:12]}" if machine else "another machine"
    return (
        f"snapshots of host {host} were written by {theirs}, {mine}: two machines share the "
        f"host name {host}; set a distinct backup.host on each machine (a reinstalled "
        "machine: put its old id in the state directory's machine-id file)"
    )


def refuse_clash(snapshots: Sequence[Snapshot], host: str, machine: str | None, what: str) -> None:
    why = clash(snapshots, host, machine)
    if why:
        raise UsageError(f"{what} refused: {why}")


def next_seq(snapshots: Sequence[Snapshot], machine: str, mark: Mark | None) -> int:
    """One more than the highest this machine remembers or the store holds of it (a lost
    memory never makes a new snapshot look older than one already there)."""
    own = [s for s in snapshots if s.machine == machine]
    top = max(own, key=lambda s: s.seq, default=None)
    held = top.seq if top is not None else 0
    if top is not None and held >= MAX_SEQ - 1_000_000:  # no machine writes that many
        raise IntegrityError(
            f"snapshot {top.key} claims sequence number {held}, which no backup reaches: "
            "it is forged; remove it from the store"
        )
    return max(held, mark.seq if mark else 0) + 1


@dataclass(frozen=True)
class Rollback:
    host: str
    store: str
    mark: Mark
    newest: Snapshot | None  # this machine's newest snapshot in the store

    @property
    def message(self) -> str:
        if self.newest is None:
            now = "holds no snapshot of this machine"
        else:
            now = f"is seq {self.newest.seq} ({self.newest.snapshot_id})"
        return (
            f"store went back in time: newest snapshot of host {self.host} in {self.store} "
            f"{now}, this host last wrote seq {self.mark.seq} (snapshot {self.mark.snapshot}), "
            "which is gone"
        )


def rollback(
    snapshots: Sequence[Snapshot], damaged: Sequence[str], *, host: str, store: str,
    machine: str, mark: Mark | None,
) -> Rollback | None:  # fmt: skip
    """The store lost what this machine last wrote to it, with nothing newer of it since."""
    if mark is None:
        return None
    ids = {s.snapshot_id for s in snapshots} | {
        key.rsplit("/", 1)[-1].removesuffix(".json")
        for key in damaged  # damaged, not gone
    }
    own = [s for s in snapshots if s.machine == machine]
    newest = max(own, key=lambda s: s.seq, default=None)
    if mark.snapshot in ids or (newest is not None and newest.seq > mark.seq):
        return None
    return Rollback(host, store, mark, newest)


def noted(mark: Mark | None) -> str:
    """A rollback found earlier (by a backup that then wrote a new snapshot) and not yet
    accepted: it is still reported, although the new snapshot hides it in the store."""
    return mark.rollback if mark is not None else ""


def refuse_restore(found: str) -> None:
    """Restoring the "latest" of a store that went back in time would silently return old
    data: only a snapshot named with --at is restored."""
    if found:
        raise IntegrityError(
            f"{found}; restore refused: name the snapshot to restore with --at (custode "
            "snapshots lists them), or accept the store with custode verify --accept-rollback"
        )
