"""The history database (``<state_dir>/state.db``): runs, per-repository results, observations.

SQLite in WAL mode, so readers never block the writer and two custode processes can record
at once (writers queue on the busy timeout). ``schema.MIGRATIONS`` is an append-only list of SQL
scripts and ``PRAGMA user_version`` counts those applied; each runs in its own ``BEGIN
IMMEDIATE`` transaction that re-reads the version, so racing processes apply it once.
Times are UTC ISO-8601 text of fixed width, so they sort as strings.

Every SQLite error becomes one ``StateUnusableError`` line saying whether the database is
busy, damaged or not reachable, with the fix, and is journaled (``custode.records.problems``).
The database also anchors the audit log's head (``audit_anchor``), so that deleting the
whole log is noticed. Reports read it through the methods here too (``runs_between``,
``totals_by_*``…, aggregated in SQLite): no SQL against it lives outside this package.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, Self, TypeVar

from custode.base.pathtext import sql_row, sql_value
from custode.base.secretfile import require_private_dir, require_private_file
from custode.base.times import epoch
from custode.errors import StateError, StateUnusableError
from custode.records.problems import (
    BUSY_TIMEOUT_S,
    busy_timeout,
    clear_busy,
    noted,
    unusable,
)
from custode.records.schema import MIGRATIONS

# SQLite's TEXT is UTF-8: a repository name that is not (a lone surrogate from os.fsdecode)
# is stored as a BLOB of its bytes instead of failing the whole run (pathtext.sql_value).
# The adapter is process-wide; it changes nothing for any str that is valid UTF-8.
sqlite3.register_adapter(str, sql_value)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Observation:
    """One repository's cheap facts as seen by one run (the input to the fast path)."""

    repository: str
    root: str
    verdict: str
    loose_objects: int
    loose_objects_bytes: int
    packs: int
    pack_bytes: int
    loose_refs: int
    size_bytes: int
    fingerprint: str
    observed_at: str = field(default_factory=utcnow)
    reasons: str = ""  # the health verdict's reasons, "; "-joined (for reports)


@dataclass(frozen=True)
class RepositoryResult:
    """What one task (e.g. ``repack``) did to one repository in one run."""

    repository: str
    root: str
    task: str
    outcome: str
    started_at: str
    duration_s: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskHistory:
    """The first and the latest result of one task in one repository (times: epoch s)."""

    first: float
    latest: float
    outcome: str  # of the latest
    details: dict[str, Any]  # of the latest


@dataclass(frozen=True)
class LatestResult:
    """The latest result of one task in one repository, and when it last succeeded."""

    task: str
    root: str
    repository: str
    at: float  # epoch seconds
    outcome: str
    duration_s: float
    details: dict[str, Any]
    last_ok: float | None


@dataclass(frozen=True)
class AuditAnchor:
    """The audit log's head as last anchored here: its entry count (the last seq) and hash."""

    seq: int
    hash: str
    at: str


@dataclass(frozen=True)
class Run:
    id: int
    command: str
    host: str
    started_at: str
    finished_at: str | None
    status: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class ResultTotals:
    """Totals over a group of repository results: one run's, one repository's, one task's."""

    results: int
    ok: int  # outcome "ok"
    failed: int  # outcome "failed"
    skipped: int  # outcome "skipped"
    seconds: float  # the durations summed
    longest: float  # the longest duration
    detail: int  # a numeric key of the results' details, summed (0: not asked, none recorded)
    detail_negative: int = 0  # that key's negative values alone, summed (<= 0)


#: the groups ``StateDB.totals_by_*`` sum over: SQL of this module, never of input
_GROUPS = {"run": "u.id", "repository": "r.root, r.repository", "task": "r.task"}


def _insert(table: str, names: tuple[str, ...]) -> str:
    # Column names come from the dataclasses here, never from input.
    return f"INSERT INTO {table} (run_id, {', '.join(names)}) VALUES (?{', ?' * len(names)})"  # noqa: S608


_OBS_FIELDS = tuple(f.name for f in fields(Observation))
_RESULT_FIELDS = tuple(f.name for f in fields(RepositoryResult))
_INSERT_OBS, _INSERT_RESULT = (
    _insert("observations", _OBS_FIELDS),
    _insert("repository_results", _RESULT_FIELDS),
)
_SELECT_OBS = f"SELECT {', '.join(_OBS_FIELDS)} FROM observations"  # noqa: S608
#: each repository's latest observation (the base for change detection, kept when pruning)
_LATEST_OBS = "SELECT MAX(id) FROM observations GROUP BY root, repository"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    method: Callable[Concatenate[StateDB, _P], _R],
) -> Callable[Concatenate[StateDB, _P], _R]:
    """Turn SQLite's errors, and damaged values in a column, into ``unusable``'s line."""

    @functools.wraps(method)
    def guarded(db: StateDB, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(db, *args, **kwargs)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a damaged JSON column, date
            raise unusable(db.path, exc) from exc

    return guarded


def _enable_wal(conn: sqlite3.Connection, timeout: float = BUSY_TIMEOUT_S) -> None:
    """Switch to WAL, waiting out other processes doing the same, as the busy timeout would.

    The switch reads the header under a SHARED lock, then upgrades to write it. SQLite never
    runs the busy handler for that upgrade when another connection holds RESERVED (waiting
    could deadlock), so when several processes open a new (rollback-mode) database at once
    all but one fail at once with SQLITE_BUSY, whatever the timeout. The failed statement
    drops its lock, so the winner finishes and a retry then finds WAL already set (a no-op
    that takes no write lock). Once the database is in WAL mode this never retries.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        else:
            return


def _statements(script: str) -> Iterator[str]:
    """One statement at a time: ``executescript`` would commit our transaction first."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""


class StateDB:
    """An open history database. Use ``StateDB.open(path)``, ideally as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> StateDB:
        """Open (creating and migrating as needed) the database at ``path``.

        The directory and the files must be custode's own and not writable by others
        (anyone who can write them can make custode's history say anything)."""
        conn = None
        try:
            require_private_dir(path.parent, "state directory")
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                require_private_file(name, "state database file")
            if not path.exists():  # private from the start; SQLite gives -wal/-shm its mode
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            # timeout= is SQLite's busy_timeout: a second writer waits instead of failing.
            wait = busy_timeout(path)
            conn = sqlite3.connect(path, timeout=wait, isolation_level=None)
            conn.row_factory = sql_row  # a non-UTF-8 repository name comes back as it went in
            db = cls(path, conn)
            db._check_version()
            _enable_wal(conn, wait)  # not covered by the busy timeout when racing
            conn.execute("PRAGMA synchronous = NORMAL")  # in WAL: may lose, never corrupts
            conn.execute("PRAGMA foreign_keys = ON")
            db._migrate()
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, StateUnusableError):
                raise noted(exc) from None
            if isinstance(exc, OSError | sqlite3.Error):
                raise unusable(path, exc) from exc
            raise
        return db

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self) -> int:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise StateUnusableError(
                f"state database {self.path} was written by a newer custode "
                f"(schema {version} > {len(MIGRATIONS)}); upgrade custode"
            )
        return version

    def _migrate(self) -> None:
        for target, script in enumerate(MIGRATIONS, start=1):
            if self.schema_version >= target:
                continue
            with self._transaction():
                if self._check_version() >= target:  # another process won the race
                    continue
                for statement in _statements(script):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {target}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: a second writer then waits out the busy
        # timeout instead of failing with SQLITE_BUSY when it would upgrade a read lock.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        clear_busy(self.path)  # free again: the next wait is the full one

    @_guarded
    def begin_run(self, command: str) -> int:
        with self._transaction():
            cur = self._conn.execute(
                "INSERT INTO runs (command, host, started_at) VALUES (?, ?, ?)",
                (command, socket.gethostname(), utcnow()),
            )
        assert cur.lastrowid is not None  # noqa: S101  (an INSERT always sets it)
        return cur.lastrowid

    @_guarded
    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        with self._transaction():
            cur = self._conn.execute(
                "UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
                (utcnow(), status, _dumps(summary), run_id),
            )
        if cur.rowcount != 1:
            raise StateError(f"no run {run_id} in state database {self.path}")

    @_guarded
    def record_observations(self, run_id: int, rows: Iterable[Observation]) -> None:
        """Insert many observations in one transaction (10,000 take well under a second)."""
        values = attrgetter(*_OBS_FIELDS)
        with self._transaction():
            self._conn.executemany(_INSERT_OBS, ((run_id, *values(o)) for o in rows))

    @_guarded
    def record_results(self, run_id: int, rows: Iterable[RepositoryResult]) -> None:
        values = attrgetter(*_RESULT_FIELDS[:-1])  # all but details, the last, stored as JSON
        with self._transaction():
            self._conn.executemany(
                _INSERT_RESULT,
                ((run_id, *values(r), _dumps(r.details)) for r in rows),
            )

    @_guarded
    def last_task_times(self, task: str) -> dict[tuple[str, str], float]:
        """(root, repository) → when ``task`` last succeeded there (seconds since the epoch)."""
        rows = self._conn.execute(
            "SELECT root, repository, MAX(started_at) FROM repository_results "
            "WHERE task = ? AND outcome = 'ok' GROUP BY root, repository",
            (task,),
        )
        return {(r[0], r[1]): epoch(r[2]) for r in rows}

    @_guarded
    def task_history(self, task: str) -> dict[tuple[str, str], TaskHistory]:
        """(root, repository) → the first and the latest result of ``task`` there."""
        rows = self._conn.execute(
            "SELECT r.root, r.repository, r.started_at, r.outcome, r.details, f.first "
            "FROM repository_results r JOIN (SELECT MIN(started_at) AS first, "
            "MAX(id) AS last FROM repository_results WHERE task = ? "
            "GROUP BY root, repository) f ON r.id = f.last",
            (task,),
        )
        return {
            (r[0], r[1]): TaskHistory(epoch(r[5]), epoch(r[2]), r[3], json.loads(r[4]))
            for r in rows
        }

    @_guarded
    def remember_borrowers(self, links: Iterable[tuple[str, str]]) -> None:
        """Record (borrower git dir, lender object dir) pairs seen by an alternates sweep:
        a pool must not expire what a borrower needs once the borrower is out of sight."""
        now = utcnow()
        with self._transaction():
            self._conn.executemany(
                "INSERT INTO borrowers (lender, borrower, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (lender, borrower) "
                "DO UPDATE SET last_seen = excluded.last_seen",
                ((lender, borrower, now, now) for borrower, lender in links),
            )

    @_guarded
    def forget_borrowers(self, links: Iterable[tuple[str, str]]) -> None:
        """Forget (borrower, lender) pairs: the borrower is gone or borrows elsewhere now."""
        with self._transaction():
            self._conn.executemany(
                "DELETE FROM borrowers WHERE borrower = ? AND lender = ?", list(links)
            )

    @_guarded
    def remembered_borrowers(self) -> set[tuple[str, str]]:
        """Every (borrower git dir, lender object dir) pair on record."""
        rows = self._conn.execute("SELECT borrower, lender FROM borrowers")
        return {(r[0], r[1]) for r in rows}

    @_guarded
    def check_records(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """(root, repository) → the JSON record of its last sound check (integrity.verified),
        for those of ``keys`` that have one; a record that is not JSON is left out."""
        found: dict[tuple[str, str], Any] = {}
        for root, repository in keys:
            row = self._conn.execute(
                "SELECT record FROM check_records WHERE root = ? AND repository = ?",
                (root, repository),
            ).fetchone()
            if row is None:
                continue
            try:
                found[(root, repository)] = json.loads(row[0])
            except (TypeError, ValueError):
                continue
        return found

    @_guarded
    def save_check_records(self, records: Iterable[tuple[str, str, dict[str, Any] | None]]) -> None:
        """Replace each (root, repository)'s check record; None drops it."""
        now = utcnow()
        with self._transaction():
            for root, repository, record in records:
                if record is None:
                    self._conn.execute(
                        "DELETE FROM check_records WHERE root = ? AND repository = ?",
                        (root, repository),
                    )
                    continue
                self._conn.execute(
                    "INSERT OR REPLACE INTO check_records (root, repository, recorded_at, record) "
                    "VALUES (?, ?, ?, ?)",
                    (root, repository, now, json.dumps(record, separators=(",", ":"))),
                )

    @_guarded
    def record_host_sample(self, cpu_ratio: float, memory_ratio: float, load1: float) -> None:
        """One sample of the host's resource use (for reports against the 70% target)."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO host_samples (taken_at, cpu_ratio, memory_ratio, load1) "
                "VALUES (?, ?, ?, ?)",
                (utcnow(), cpu_ratio, memory_ratio, load1),
            )

    @_guarded
    def record_alert_event(
        self, name: str, state: str, severity: str, labels: dict[str, str], value: float
    ) -> None:
        """An alert instance started firing (``firing``) or stopped (``resolved``)."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO alert_events (at, name, state, severity, labels, value) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (utcnow(), name, state, severity, _dumps(labels), value),
            )

    # Reads for reports. Times are this module's ISO-8601 text; ``since`` and ``until``
    # bound a window, both included.

    @_guarded
    def has_records(self) -> bool:
        """Whether anything was ever recorded: a run or a host sample."""
        row = self._conn.execute(
            "SELECT EXISTS (SELECT 1 FROM runs) OR EXISTS (SELECT 1 FROM host_samples)"
        ).fetchone()
        return bool(row[0])

    @_guarded
    def runs_between(self, since: str, until: str) -> list[Run]:
        """The runs started in the window, in the order they started."""
        rows = self._conn.execute(
            "SELECT * FROM runs WHERE started_at >= ? AND started_at <= ? ORDER BY started_at",
            (since, until),
        )
        return [Run(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    @_guarded
    def last_started(self, command: str) -> str | None:
        """When a ``command`` run last started (None: never)."""
        row = self._conn.execute(
            "SELECT MAX(started_at) FROM runs WHERE command = ?", (command,)
        ).fetchone()
        return row[0] if row else None

    @_guarded
    def latest_observations(self) -> dict[tuple[str, str], Observation]:
        """(root, repository) → the repository's latest observation."""
        rows = self._conn.execute(f"{_SELECT_OBS} WHERE id IN ({_LATEST_OBS})")
        return {(o.root, o.repository): o for o in (Observation(*r) for r in rows)}

    @_guarded
    def alert_events(
        self, since: str, until: str
    ) -> list[tuple[str, str, str, str, dict[str, str], float]]:
        """(at, name, state, severity, labels, value) of each alert event in the window."""
        rows = self._conn.execute(
            "SELECT at, name, state, severity, labels, value FROM alert_events "
            "WHERE at >= ? AND at <= ? ORDER BY at",
            (since, until),
        )
        return [(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    @_guarded
    def alert_events_before(self, since: str) -> list[tuple[str, str, dict[str, str]]]:
        """(name, state, labels) of each alert event before ``since``, oldest first."""
        rows = self._conn.execute(
            "SELECT name, state, labels FROM alert_events WHERE at < ? ORDER BY at", (since,)
        )
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    @_guarded
    def host_samples(self, since: str, until: str) -> list[tuple[str, float, float, float]]:
        """(taken_at, cpu_ratio, memory_ratio, load1) of each host sample in the window."""
        rows = self._conn.execute(
            "SELECT taken_at, cpu_ratio, memory_ratio, load1 FROM host_samples "
            "WHERE taken_at >= ? AND taken_at <= ? ORDER BY taken_at",
            (since, until),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def totals_by_run(
        self, command: str, since: str, until: str, *, task: str | None = None, detail: str = "",
        roots: Iterable[str] | None = None,
    ) -> dict[int, ResultTotals]:  # fmt: skip
        """Run id → totals of its results (of ``task`` only, if given; of results under
        ``roots`` only, if given), for the ``command`` runs started in the window, in the
        order they started; ``detail``: a numeric key of the results' details to sum."""
        rows = self._totals("run", command, since, until, task=task, detail=detail, roots=roots)
        return {r[0]: ResultTotals(*r[1:]) for r in rows}

    def totals_by_repository(
        self, command: str, since: str, until: str, *, task: str | None = None, detail: str = "",
        roots: Iterable[str] | None = None,
    ) -> dict[tuple[str, str], ResultTotals]:  # fmt: skip
        """(root, repository) → totals of its results, as ``totals_by_run``."""
        rows = self._totals(
            "repository", command, since, until, task=task, detail=detail, roots=roots
        )
        return {(r[0], r[1]): ResultTotals(*r[2:]) for r in rows}

    def totals_by_task(
        self, command: str, since: str, until: str, *, roots: Iterable[str] | None = None
    ) -> dict[str, ResultTotals]:
        """Task → totals of its results, as ``totals_by_run``."""
        rows = self._totals("task", command, since, until, roots=roots)
        return {r[0]: ResultTotals(*r[1:]) for r in rows}

    @_guarded
    def _totals(
        self, by: str, command: str, since: str, until: str, *, task: str | None = None,
        detail: str = "", roots: Iterable[str] | None = None,
    ) -> list[tuple[Any, ...]]:  # fmt: skip
        group = _GROUPS[by]
        value = "json_extract(r.details, ?)"
        summed = f"IFNULL(SUM({value}), 0), IFNULL(SUM(MIN(0, {value})), 0)" if detail else "0, 0"
        only, where = _only(task, roots)
        params = ([f"$.{detail}"] * 2 if detail else []) + [command, since, until]
        rows = self._conn.execute(  # only this module's SQL and "?" placeholders go in
            f"SELECT {group}, COUNT(*), SUM(r.outcome = 'ok'), SUM(r.outcome = 'failed'), "  # noqa: S608
            f"SUM(r.outcome = 'skipped'), SUM(r.duration_s), MAX(r.duration_s), {summed} "
            "FROM repository_results r JOIN runs u ON r.run_id = u.id "
            f"WHERE u.command = ? AND u.started_at >= ? AND u.started_at <= ?{only} "
            f"GROUP BY {group} ORDER BY MIN(u.started_at)",
            params + where,
        )
        n = group.count(",") + 1  # the group's columns come first
        return [
            (*r[:n], *(int(v) for v in r[n : n + 4]), float(r[n + 4]), float(r[n + 5]),
             int(r[n + 6]), int(r[n + 7]))
            for r in rows
        ]  # fmt: skip

    @_guarded
    def results_between(
        self, command: str, since: str, until: str, *, task: str,
        order: Literal["slowest", "newest"], limit: int, failing: bool = False,
        roots: Iterable[str] | None = None,
    ) -> list[tuple[str, RepositoryResult]]:  # fmt: skip
        """Up to ``limit`` results of ``task`` recorded by the ``command`` runs started in
        the window, each with when its run started, ``order`` "slowest" or "newest" first;
        only those not ok if ``failing``, only those under ``roots`` if given."""
        by = {"slowest": "r.duration_s DESC", "newest": "u.started_at DESC"}[order]
        only, where = _only(task, roots)
        only += " AND r.outcome != 'ok'" if failing else ""
        rows = self._conn.execute(  # only this module's SQL and "?" placeholders go in
            "SELECT u.started_at, r.repository, r.root, r.task, r.outcome, r.started_at, "  # noqa: S608
            "r.duration_s, r.details FROM repository_results r JOIN runs u ON r.run_id = u.id "
            "WHERE u.command = ? AND u.started_at >= ? AND u.started_at <= ?"
            f"{only} ORDER BY {by} LIMIT ?",
            [command, since, until, *where, limit],
        )
        return [
            (r[0], RepositoryResult(r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])))
            for r in rows
        ]

    @_guarded
    def count_slower(
        self, command: str, since: str, until: str, *, task: str, seconds: float,
        roots: Iterable[str] | None = None,
    ) -> int:  # fmt: skip
        """How many results of ``task`` (under ``roots`` only, if given) the ``command``
        runs started in the window recorded that took longer than ``seconds``."""
        only, where = _only(task, roots)
        row = self._conn.execute(  # only this module's SQL and "?" placeholders go in
            "SELECT COUNT(*) FROM repository_results r JOIN runs u ON r.run_id = u.id "  # noqa: S608
            f"WHERE u.command = ? AND u.started_at >= ? AND u.started_at <= ?{only} "
            "AND r.duration_s > ?",
            [command, since, until, *where, seconds],
        ).fetchone()
        return int(row[0])

    @_guarded
    def latest_results(self, tasks: Iterable[str]) -> list[LatestResult]:
        """For each (task, root, repository): its latest result and its latest success."""
        names = sorted(set(tasks))
        if not names:
            return []
        marks = ",".join("?" * len(names))
        rows = self._conn.execute(  # only "?" placeholders are formatted in
            "SELECT r.task, r.root, r.repository, r.started_at, r.outcome, r.duration_s, "  # noqa: S608
            "r.details, f.last_ok FROM repository_results r JOIN (SELECT MAX(id) AS last, "
            "MAX(CASE WHEN outcome = 'ok' THEN started_at END) AS last_ok "
            f"FROM repository_results WHERE task IN ({marks}) "
            "GROUP BY task, root, repository) f ON r.id = f.last",
            names,
        )
        return [
            LatestResult(
                r[0],
                r[1],
                r[2],
                epoch(r[3]),
                r[4],
                r[5],
                json.loads(r[6]),
                epoch(r[7]) if r[7] else None,
            )
            for r in rows
        ]

    @_guarded
    def latest_fingerprints(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(root, repository) → (fingerprint, verdict) of each repository's last observation.

        Callers record an observation only when these change: history is a log of
        changes, not a row per repository per run.
        """
        rows = self._conn.execute(
            "SELECT root, repository, fingerprint, verdict FROM observations "  # noqa: S608
            f"WHERE id IN ({_LATEST_OBS})"
        )
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    @_guarded
    def forget_before(self, cutoff: str) -> int:
        """Delete runs started before ``cutoff`` (UTC ISO-8601) with all they recorded,
        keeping each repository's latest observation (the base for change detection)."""
        with self._transaction():
            self._conn.execute(
                f"DELETE FROM observations WHERE observed_at < ? AND id NOT IN ({_LATEST_OBS})",  # noqa: S608
                (cutoff,),
            )
            self._conn.execute(
                "DELETE FROM repository_results WHERE run_id IN "
                "(SELECT id FROM runs WHERE started_at < ?)",
                (cutoff,),
            )
            self._conn.execute("DELETE FROM host_samples WHERE taken_at < ?", (cutoff,))
            self._conn.execute("DELETE FROM alert_events WHERE at < ?", (cutoff,))
            cur = self._conn.execute(
                "DELETE FROM runs WHERE started_at < ? AND id NOT IN "
                "(SELECT DISTINCT run_id FROM observations)",
                (cutoff,),
            )
        return cur.rowcount

    @_guarded
    def runs(self, limit: int = 20) -> list[Run]:
        """The most recent runs, newest first."""
        rows = self._conn.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        return [Run(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    @_guarded
    def audit_anchor(self, log: str) -> AuditAnchor | None:
        """The head last anchored for the audit log named ``log`` (None: none yet)."""
        row = self._conn.execute(
            "SELECT seq, hash, at FROM audit_anchor WHERE log = ?", (log,)
        ).fetchone()
        return AuditAnchor(int(row[0]), str(row[1]), str(row[2])) if row else None

    @_guarded
    def set_audit_anchor(self, log: str, seq: int, digest: str) -> None:
        """Anchor the audit log ``log`` at its entry ``seq`` with hash ``digest``."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO audit_anchor (log, seq, hash, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (log) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                "at = excluded.at",
                (log, seq, digest, utcnow()),
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _only(task: str | None, roots: Iterable[str] | None) -> tuple[str, list[Any]]:
    """The SQL that keeps the results of ``task`` under ``roots`` (None: any), its values."""
    sql, values = "", list[Any]()
    if task is not None:
        sql, values = " AND r.task = ?", [task]
    if roots is not None:
        names = sorted(set(roots))
        sql += f" AND r.root IN ({','.join('?' * len(names))})" if names else " AND 0"
        values += names
    return sql, values


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
