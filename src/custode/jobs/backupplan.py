"""The backup plan: what ``custode backup`` would do to each repository of a scan, and why,
without doing it (``custode backup --dry-run``).

The same steps as the backup (``custode.jobs.backup``), stopped before the first write:
the history's skip (``why_read``: a repository whose refs, object files and kept files
are as at its last backup is not read), the fleet's sharing plan (``backup/plan.py``),
then for each repository read the engine's own way (``backup/engine.py``: ``observe``,
``plan_repository``, the very decision the backup carries out, ``backup/decide.py``) and
a prediction of how a full bundle's pack would be made (``decide.predict_pack``).

Nothing is written: the store is reached through a wrapper that refuses every write, no
lock is taken (a plan is a reading; a backup running meanwhile may make it stale), no
history row, refs cache entry, scan cache or scratch directory is made, and the history
database is opened only when it exists. A store that does not exist yet is not created:
every repository is then planned as the first backup into it.

Where the plan cannot know what the backup will know: a fork whose base is backed up in
the same run builds on the base's backup of that run, which does not exist yet; the plan
checks the base's latest existing backup instead, or, for a base backed up for the first
time, assumes it will be usable.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from custode.backup import extras
from custode.backup.crypto import Recipient
from custode.backup.decide import Policy, decide, predict_pack
from custode.backup.engine import (
    BackupSettings,
    by_age,
    manifests_by_repo,
    observe,
    plan_repository,
)
from custode.backup.manifest import repo_prefix
from custode.backup.plan import Sharing
from custode.backup.refscache import REFS_CACHE, RefsCache
from custode.backup.store import DEFAULT_READ_LIMIT, Store
from custode.base.pathtext import sql_row
from custode.config.model import BackupConfig, Config
from custode.errors import CustodeError, StateError
from custode.jobs import backupsetup
from custode.jobs import record as history
from custode.jobs.backup import BackupJob, _sharing, why_read
from custode.jobs.fleet import Bar, nothing_found
from custode.records.state import StateDB, TaskHistory
from custode.scan.fleet import FleetScan, scan
from custode.scan.repostate import RepoState

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class PlannedRepository:
    """What the backup would do to one repository, on what, and why."""

    repository: str
    root: str
    action: str  # "unchanged", "in-place", "incremental", "new-chain", or "failed"
    why: str  # with numbers
    parent: str = ""  # the backup id it stands on, replaces or follows
    base: str = ""  # the repository whose backup a new chain builds on
    read: bool = True  # False: the history alone shows it unchanged (not read)
    pack: str = ""  # predicted for a new bundle: "copy", "generate", "" (no new bundle)
    pack_why: str = ""

    @property
    def on(self) -> str:
        """What it is built on, as the plan prints it."""
        if self.action == "new-chain":
            return f"{self.base} (base)" if self.base else ""
        return f"backup {self.parent}" if self.parent else ""

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "on": self.on}


@dataclass(frozen=True)
class BackupPlan:
    """What a backup would do, repository by repository (by relative path)."""

    store: str
    host: str
    store_exists: bool  # False: nothing backed up yet (the store is not created here)
    repositories: list[PlannedRepository]

    def count(self, action: str) -> int:
        return sum(1 for r in self.repositories if r.action == action)

    def summary(self) -> dict[str, Any]:
        actions = ("unchanged", "in-place", "incremental", "new-chain", "failed")
        return {
            "store": self.store,
            "store_exists": self.store_exists,
            "host": self.host,
            "repositories": len(self.repositories),
            **{a: self.count(a) for a in actions},
            "full": sum(1 for r in self.repositories if r.action == "new-chain" and not r.base),
            "copy_predicted": sum(1 for r in self.repositories if r.pack == "copy"),
        }


def open_for_plan(config: BackupConfig, given: str | None = None) -> tuple[Store, bool]:
    """The store to plan against, read-only, and whether it exists: a directory store
    that does not exist yet is not created (the backup would create it)."""
    url = backupsetup.store_url(config, given)
    parts = urlsplit(url)
    local = None
    if "://" not in url:
        local = Path(url)
    elif parts.scheme == "file" and parts.netloc in ("", "localhost"):
        local = Path(unquote(parts.path))
    if local is not None and not local.exists():
        return ReadOnlyStore(None, Path(os.path.abspath(local)).as_uri()), False
    return ReadOnlyStore(backupsetup.open_backup_store(config, given, create=False)), True


def read_fleet(roots: Sequence[Path], config: Config, *, bar: Bar, notice: Say) -> FleetScan:
    """The fleet, as ``custode.jobs.fleet.read`` reads it but without its scan cache (the
    plan writes nothing)."""
    with bar("reading repositories") as tick:
        found = scan(list(roots), config.discovery, tick)
    for problem in found.problems:
        notice(f"{problem.path}: {problem.message}")
    if not found.states:
        raise nothing_found(roots)
    return found


def known_recipients(config: BackupConfig, given: Sequence[str] = ()) -> list[Recipient]:
    """The keys a backup would encrypt to (``backupsetup.recipients``), without creating
    the identity file: [] when the backup would create it."""
    if list(given) or list(config.recipients):
        return backupsetup.recipients(config, given)
    path = backupsetup.identity_path(config)
    return backupsetup.recipients(config) if path.exists() else []


def plan(
    job: BackupJob, states: Sequence[RepoState], *, store_exists: bool = True,
    warn: Say = _quiet,
) -> BackupPlan:  # fmt: skip
    """What ``custode.jobs.backup.backup(job, states)`` would do, writing nothing (its
    store is used read-only). ``store_exists`` False: the store does not exist yet.
    No ``job.recipients``: no backup key exists yet (the backup would create it)."""
    store: Store = job.store if isinstance(job.store, ReadOnlyStore) else ReadOnlyStore(job.store)
    job = dataclasses.replace(job, store=store)
    digest = backupsetup.recipients_digest(job.recipients) if job.recipients else ""
    cache = RefsCache(job.state_dir / REFS_CACHE, job.store.url, job.host)
    settings = BackupSettings(job.host, job.recipients, job.scratch, job.full_every,
                              job.full_after, job.full, cache)  # fmt: skip
    failed: list[PlannedRepository] = []
    todo: list[RepoState] = []
    seen: dict[str, str] = {}
    for s in states:
        if s.problems:
            failed.append(PlannedRepository(s.relative, s.root, "failed", "; ".join(s.problems)))
        elif s.relative in seen:
            why = (
                f"another root ({seen[s.relative]}) holds a repository at the same "
                "relative path; back the roots up under different backup.host names"
            )
            failed.append(PlannedRepository(s.relative, s.root, "failed", why))
        else:
            seen[s.relative] = s.root
            todo.append(s)
    before = _history(job.state_dir, warn)
    sharing = _sharing(job, settings, todo, before, warn)
    keys = manifests_by_repo(store, job.host) if store_exists else {}
    now = datetime.now(UTC)
    planned: dict[str, PlannedRepository] = {}  # by relative path: a base's, for its forks
    # bases (and every repository sharing nothing) first, then the forks built on them
    for s in [s for s in todo if s.relative not in sharing] + [
        s for s in todo if s.relative in sharing
    ]:
        base = _base_key(sharing.get(s.relative), planned, keys, job.host, now)
        row = before.get((s.root, s.relative))
        planned[s.relative] = _one(job, settings, s, row, digest, base, keys, now, warn)
    done = sorted([*failed, *planned.values()], key=lambda r: r.repository)
    return BackupPlan(job.store.url, job.host, store_exists, done)


def _base_key(
    base: Sharing | None, planned: dict[str, PlannedRepository], keys: dict[str, list[str]],
    host: str, now: datetime,
) -> Sharing | None:  # fmt: skip
    """The plan's base with the key of the backup a fork will build on: the base's as it
    stands (unchanged), else its latest existing one (to check; the run makes a newer
    one), else none yet (the base's first backup, made earlier in the same run)."""
    if base is None:
        return None
    done = planned.get(base.base)
    if done is None or done.action == "failed":
        return None  # as the backup: no backup of the base, so a full bundle
    existing = by_age(keys.get(repo_prefix(host, base.base), []), now)
    stands = [k for k in existing if k.rsplit("/", 2)[-2] == done.parent]
    key = (stands if done.action == "unchanged" and stands else existing or [_THIS_RUN])[-1]
    return dataclasses.replace(base, key=key)


_THIS_RUN = "(its backup in this run)"


def _one(  # noqa: PLR0917  (one repository's facts, passed through once)
    job: BackupJob, settings: BackupSettings, s: RepoState, before: TaskHistory | None,
    digest: str, base: Sharing | None, keys: dict[str, list[str]], now: datetime, warn: Say,
) -> PlannedRepository:  # fmt: skip
    known = {"store": job.store.url, "host": job.host, "fingerprint": s.fingerprint,
             "stamp": extras.stamp(Path(s.git_dir)), "recipients": digest}  # fmt: skip
    why = why_read(before, known, full=job.full)
    if not why and before is not None:
        key = str(before.details["manifest"])
        if job.store.size(key) is not None:
            ident = key.rsplit("/", 2)[1] if key.count("/") >= 2 else ""
            return PlannedRepository(s.relative, s.root, "unchanged",
                                     f"not read: nothing changed since backup {ident}", ident,
                                     read=False, pack_why="no new bundle")  # fmt: skip
        why = f"its last backup's manifest {key} is no longer in the store"
    manifests = keys.get(repo_prefix(job.host, s.relative), [])
    try:
        obs = observe(job.store, job.git, settings, s.relative, Path(s.git_dir), s.bare,
                      s.object_format, manifests, warn)  # fmt: skip
        if base is not None and base.key == _THIS_RUN:  # not made yet: checked when it is
            policy = Policy(settings.full_every, settings.full_after)
            decision = decide(obs.facts, policy, now, base)
        else:
            decision, _ = plan_repository(
                job.store, job.git, settings, obs, repository=s.relative,
                git_dir=Path(s.git_dir), object_format=s.object_format, base=base, now=now,
                warn=warn,
            )  # fmt: skip
    except CustodeError as exc:
        return PlannedRepository(s.relative, s.root, "failed", exc.message)
    except OSError as exc:
        where = exc.filename or s.git_dir
        return PlannedRepository(s.relative, s.root, "failed", f"{exc.strerror or exc} ({where})")
    pack = predict_pack(decision, s)
    return PlannedRepository(
        s.relative, s.root, decision.action, _joined(why, decision.why),
        decision.parent, decision.base.base if decision.base else "", True, pack.method,
        f"predicted: {pack.why}" if pack.method else pack.why,
    )  # fmt: skip


def _joined(read: str, decided: str) -> str:
    """Why it is read, then the decision's reason (once, when they start alike: --full)."""
    return decided if not read or decided.startswith(read) else f"{read}; {decided}"


def _history(state_dir: Path, warn: Say) -> dict[tuple[str, str], TaskHistory]:
    """The history's backup rows, read without a write: not created when missing, and
    opened immutable (SQLite then makes no -wal/-shm file; a backup writing meanwhile may
    be missed, which only makes the plan as stale as any reading)."""
    path = history.database(state_dir)
    if not path.exists():
        return {}
    conn = None
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        conn.row_factory = sql_row  # a non-UTF-8 repository name comes back as it went in
        return StateDB(path, conn).task_history("backup")
    except (sqlite3.Error, ValueError) as exc:
        warn(f"history {path} unreadable, planning every repository as read afresh: {exc}")
        return {}
    finally:
        if conn is not None:
            conn.close()


class ReadOnlyStore:
    """A store that can be read, never written: the plan's guarantee. ``inner`` None: a
    store that does not exist yet (empty)."""

    def __init__(self, inner: Store | None, url: str = "") -> None:
        self._inner = inner
        self.url = inner.url if inner is not None else url

    def _refuse(self, key: str) -> StateError:
        return StateError(f"the backup plan must not write to the store ({key}); a bug")

    def put(self, key: str, src: Path) -> None:
        raise self._refuse(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        raise self._refuse(key)

    def delete(self, key: str) -> None:
        raise self._refuse(key)

    def remove_abandoned(self, prefix: str) -> int:
        raise self._refuse(prefix)

    def get(self, key: str, dst: BinaryIO) -> None:
        if self._inner is None:
            raise StateError(f"{key} is not in the store (it does not exist yet)")
        self._inner.get(key, dst)

    def get_bytes(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        if self._inner is None:
            raise StateError(f"{key} is not in the store (it does not exist yet)")
        return self._inner.get_bytes(key, limit)

    def size(self, key: str) -> int | None:
        return self._inner.size(key) if self._inner is not None else None

    def list(self, prefix: str) -> Iterator[str]:
        return self._inner.list(prefix) if self._inner is not None else iter(())

    def strays(self, prefix: str) -> Iterator[tuple[str, str]]:
        return self._inner.strays(prefix) if self._inner is not None else iter(())

    def locate(self, key: str) -> str:
        return self._inner.locate(key) if self._inner is not None else key
