"""Reads the history database into the report model, for one time window.

Its own SELECTs over a ``StateDB`` connection, read only; the fleet is never scanned, so
"needs attention and why" comes from the latest observations (custode status) and the
latest check, maintain and backup results. Aggregates are computed in SQLite (counts, sums,
``json_extract`` of result details) so a long history is not loaded into memory.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from custode.base.units import format_duration
from custode.records.problems import unusable
from custode.records.state import LatestResult, StateDB
from custode.report.model import (
    ALERTS_NOT_RECORDED,
    AlertCount,
    AlertEvent,
    Alerts,
    BackupBucket,
    BackupRun,
    Backups,
    Checks,
    CommandRuns,
    Drill,
    DrillRun,
    Drills,
    Fleet,
    Freshness,
    Maintenance,
    MaintenanceBucket,
    Problem,
    Report,
    RepositoryBackup,
    ResourceBucket,
    Resources,
    RestoreRun,
    Targets,
    TaskStats,
    Window,
)

_LATEST_TASKS = ("maintain", "check", "check-full", "backup")
SLOWEST = 5  # drills listed by time
_DISTINCT = "COUNT(DISTINCT r.root || char(0) || r.repository)"


def build(
    db: StateDB | None, *, since_seconds: float, now: float, targets: Targets | None = None
) -> Report:
    """The report for the window ``now - since_seconds`` … ``now`` (``db`` None: no history)."""
    targets = targets or Targets()
    try:
        return _Builder(db, since_seconds, now, targets).report()
    except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
        if db is None:
            raise
        raise unusable(db.path, exc) from exc  # busy or damaged, with the fix


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _said(epoch: float) -> str:
    """A time inside a sentence (the reasons): as the renderers show times."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _bucket_seconds(window: float, most: int = 62) -> float:
    """The smallest of hour, day, week giving at most ``most`` buckets."""
    for width in (3600.0, 86400.0, 7 * 86400.0):
        if window / width <= most:
            return width
    return 7 * 86400.0 * math.ceil(window / (7 * 86400.0) / most)


def _fine_bucket_seconds(window: float, most: int = 200) -> float:
    for width in (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0):
        if window / width <= most:
            return width
    return _bucket_seconds(window, most)


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class _Builder:
    def __init__(self, db: StateDB | None, since_s: float, now: float, targets: Targets) -> None:
        self.db = db
        self.now = now
        self.targets = targets
        start = now - since_s
        self.since = datetime.fromtimestamp(start, UTC).isoformat(timespec="microseconds")
        self.until = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
        self.window = Window(_iso(start), _iso(now), since_s, _bucket_seconds(since_s))

    def _q(self, sql: str, *params: object) -> list[Any]:
        if self.db is None:
            return []
        return self.db._conn.execute(sql, params).fetchall()

    def _in_window(self, command: str, select: str, tail: str = "", *params: object) -> list[Any]:
        """Rows of ``repository_results r`` recorded by ``command`` runs ``u`` in the window."""
        return self._q(
            f"SELECT {select} FROM repository_results r JOIN runs u ON r.run_id = u.id "  # noqa: S608
            f"WHERE u.command = ? AND u.started_at >= ? AND u.started_at <= ? {tail}",
            command,
            self.since,
            self.until,
            *params,
        )

    def _bucket(self, iso: str, width: float) -> str:
        return _iso(_epoch(iso) // width * width)

    def report(self) -> Report:
        runs = self._q(
            "SELECT id, command, started_at, status, summary FROM runs "
            "WHERE started_at >= ? AND started_at <= ? ORDER BY started_at",
            self.since,
            self.until,
        )
        self.runs = [(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in runs]
        observed = {
            (r[0], r[1]): r[2:]
            for r in self._q(
                "SELECT root, repository, verdict, size_bytes, loose_objects, packs, observed_at, "
                "reasons FROM observations WHERE id IN "
                "(SELECT MAX(id) FROM observations GROUP BY root, repository)"
            )
        }
        latest: dict[str, dict[tuple[str, str], LatestResult]] = defaultdict(dict)
        for res in self.db.latest_results(_LATEST_TASKS) if self.db else []:
            latest[res.task][(res.root, res.repository)] = res
        anything = self._q(
            "SELECT EXISTS (SELECT 1 FROM runs) OR EXISTS (SELECT 1 FROM host_samples)"
        )
        backups = self._backups(observed, latest["backup"])
        problems = self._problems(observed, latest, backups.repositories)
        return Report(
            generated_at=_iso(self.now),
            database=str(self.db.path) if self.db else "",
            window=self.window,
            targets=self.targets,
            empty=not (anything and anything[0][0]) and not observed,
            runs=self._command_runs(),
            fleet=self._fleet(observed, latest, len(problems)),
            problems=problems,
            maintenance=self._maintenance(),
            checks=self._checks(),
            backups=backups,
            drills=self._drills(),
            alerts=self._alerts(),
            resources=self._resources(),
        )

    def _alerts(self) -> Alerts:
        if self.db is None:
            return ALERTS_NOT_RECORDED
        events = self._q(
            "SELECT at, name, state, severity, labels FROM alert_events "
            "WHERE at >= ? AND at <= ? ORDER BY at", self.since, self.until,
        )  # fmt: skip
        before = self._q("SELECT name, state, labels FROM alert_events WHERE at < ? ORDER BY at",
                         self.since)  # fmt: skip
        firing: dict[tuple[str, str], str] = {}  # (name, labels) -> severity, at the start
        for name, state, labels in before:
            if state == "firing":
                firing[name, labels] = ""
            else:
                firing.pop((name, labels), None)
        counts: dict[tuple[str, str], list[int]] = {}
        out = []
        for at, name, state, severity, labels in events:
            c = counts.setdefault((name, severity), [0, 0])
            c[0 if state == "firing" else 1] += 1
            if state == "firing":
                firing[name, labels] = severity
            else:
                firing.pop((name, labels), None)
            fields = json.loads(labels)
            subject = fields.get("repository") or fields.get("mountpoint") or fields.get(
                "operation", "")  # fmt: skip
            out.append(AlertEvent(at, name, state, severity, str(subject)))
        now_firing: dict[str, int] = defaultdict(int)
        for name, _ in firing:
            now_firing[name] += 1
        table = tuple(AlertCount(name, severity, f, r, now_firing.get(name, 0))
                      for (name, severity), (f, r) in sorted(counts.items()))  # fmt: skip
        note = (
            "" if events else "No alert fired in this window (alerts are recorded by custode serve)"
        )
        return Alerts(True, note, table, tuple(reversed(out))[:200])

    def _command_runs(self) -> tuple[CommandRuns, ...]:
        by: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for _, command, at, status, _ in self.runs:
            by[command].append((at, status))
        return tuple(
            CommandRuns(
                command,
                len(rows),
                sum(s == "ok" for _, s in rows),
                sum(s == "partial" for _, s in rows),
                sum(s not in ("ok", "partial") for _, s in rows),
                _iso(_epoch(rows[-1][0])),
            )
            for command, rows in sorted(by.items())
        )

    def _fleet(
        self,
        observed: dict[tuple[str, str], tuple[Any, ...]],
        latest: dict[str, dict[tuple[str, str], LatestResult]],
        problems: int,
    ) -> Fleet:
        known = set(observed).union(*(latest[t] for t in _LATEST_TASKS))
        verdicts = [o[0] for o in observed.values()]
        newest = max((o[4] for o in observed.values()), default=None)
        return Fleet(
            repositories=len(known),
            ok=verdicts.count("ok"),
            attention=verdicts.count("attention"),
            broken=verdicts.count("broken"),
            unobserved=len(known - set(observed)),
            size_bytes=sum(o[1] for o in observed.values()),
            loose_objects=sum(o[2] for o in observed.values()),
            packs=sum(o[3] for o in observed.values()),
            observed_at=_iso(_epoch(newest)) if newest else None,
            needing_attention=problems,
        )

    def _problems(
        self,
        observed: dict[tuple[str, str], tuple[Any, ...]],
        latest: dict[str, dict[tuple[str, str], LatestResult]],
        backups: tuple[RepositoryBackup, ...],
    ) -> tuple[Problem, ...]:
        reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
        # status records a repository only when its verdict or fingerprint changes, so its
        # latest observation is what the latest status run saw: "since" the observation.
        seen = self._q("SELECT MAX(started_at) FROM runs WHERE command = 'status'")
        last_status = _epoch(seen[0][0]) if seen and seen[0][0] else 0.0
        for key, (verdict, *_, at, why) in observed.items():
            done = latest["maintain"].get(key)
            if verdict == "attention" and done and done.outcome == "ok" and done.at > last_status:
                continue  # maintained after status last looked; attention means "maintain it"
            if verdict in ("attention", "broken"):
                said = f"custode status: {verdict} since {_said(_epoch(at))}"
                reasons[key].append(f"{said}: {why}" if why else said)
        checks = {**latest["check"]}
        for key, res in latest["check-full"].items():
            if key not in checks or res.at > checks[key].at:
                checks[key] = res
        for key, res in checks.items():
            if res.outcome != "ok":
                findings = [str(f) for f in res.details.get("findings", [])]
                more = f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""
                what = "; ".join(findings[:3]) or str(res.details.get("verdict", res.outcome))
                reasons[key].append(f"integrity {res.task} failed {_said(res.at)}: {what}{more}")
        for key, res in latest["maintain"].items():
            if res.outcome == "failed":
                message = res.details.get("message") or "no message"
                reasons[key].append(f"maintenance failed {_said(res.at)}: {message}")
        for b in backups:
            if b.state != "fresh":
                reasons[(b.root, b.repository)].append(b.message)
        found = []
        for key, why in reasons.items():
            obs = observed.get(key)
            verdict, at = (obs[0], _iso(_epoch(obs[4]))) if obs else ("unknown", None)
            found.append(Problem(key[0], key[1], verdict, at, tuple(why)))
        rank = {"broken": 0, "attention": 1, "unknown": 2, "ok": 3}
        return tuple(sorted(found, key=lambda p: (rank[p.verdict], p.root, p.repository)))

    def _maintenance(self) -> Maintenance:
        tasks: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
        for task, outcome, count, seconds in self._in_window(
            "maintain",
            "r.task, r.outcome, COUNT(*), SUM(r.duration_s)",
            "AND r.task != 'maintain' GROUP BY r.task, r.outcome",
        ):
            tasks[task][outcome] += count
            tasks[task]["seconds"] += seconds
        per_run = {
            run: (count, failed, skipped, reclaimed or 0)
            for run, count, failed, skipped, reclaimed in self._in_window(
                "maintain",
                "u.id, COUNT(*), SUM(r.outcome = 'failed'), SUM(r.outcome = 'skipped'), "
                "SUM(json_extract(r.details, '$.reclaimed_bytes'))",
                "AND r.task = 'maintain' GROUP BY u.id",
            )
        }
        distinct = self._in_window("maintain", _DISTINCT, "AND r.task = 'maintain'")
        buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        results = failed = skipped = reclaimed = 0
        runs = [r for r in self.runs if r[1] == "maintain"]
        for run, _, at, _, summary in runs:
            count, bad, skip, freed = per_run.get(run, (0, 0, 0, 0))
            freed = int(summary.get("reclaimed_bytes", freed))
            b = buckets[self._bucket(at, self.window.bucket_seconds)]
            for i, v in enumerate((1, count, bad, freed)):
                b[i] += v
            results, failed, skipped, reclaimed = (
                results + count, failed + bad, skipped + skip, reclaimed + freed
            )  # fmt: skip
        return Maintenance(
            runs=len(runs),
            repositories=distinct[0][0] if distinct else 0,
            ok=results - failed - skipped,
            failed=failed,
            skipped=skipped,
            reclaimed_bytes=reclaimed,
            tasks=tuple(
                TaskStats(
                    t, int(n["ok"]), int(n["failed"]), int(n["skipped"]), round(n["seconds"], 3)
                )
                for t, n in sorted(tasks.items())
            ),
            buckets=tuple(MaintenanceBucket(k, *v) for k, v in sorted(buckets.items())),
        )

    def _checks(self) -> Checks:
        rows = self._in_window("check", "r.task, r.outcome, COUNT(*)", "GROUP BY r.task, r.outcome")
        distinct = self._in_window("check", _DISTINCT)
        return Checks(
            runs=sum(1 for r in self.runs if r[1] == "check"),
            repositories=distinct[0][0] if distinct else 0,
            ok=sum(r[2] for r in rows if r[1] == "ok"),
            failed=sum(r[2] for r in rows if r[1] != "ok"),
            full=sum(r[2] for r in rows if r[0] == "check-full"),
        )

    def _backups(
        self,
        observed: dict[tuple[str, str], tuple[Any, ...]],
        latest: dict[tuple[str, str], LatestResult],
    ) -> Backups:
        runs = []
        buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for _, command, at, status, s in self.runs:
            if command != "backup":
                continue
            run = BackupRun(
                _iso(_epoch(at)), status, s.get("snapshot"), s.get("store"),
                int(s.get("repositories", 0)), int(s.get("new", 0)), int(s.get("unchanged", 0)),
                int(s.get("failed", 0)), int(s.get("full", 0)), int(s.get("bytes_added", 0)),
                float(s.get("seconds", 0.0)),
            )  # fmt: skip
            runs.append(run)
            b = buckets[self._bucket(at, self.window.bucket_seconds)]
            b[0], b[1], b[2] = b[0] + 1, b[1] + (status != "ok"), b[2] + run.bytes_added
        in_window = {
            (r[0], r[1]): (r[2], int(r[3] or 0))
            for r in self._in_window(
                "backup",
                "r.root, r.repository, COUNT(*), SUM(json_extract(r.details, '$.bytes_added'))",
                "GROUP BY r.root, r.repository",
            )
        }
        backed_roots = {root for root, _ in latest}
        repos = []
        for key in sorted(set(latest) | {k for k in observed if k[0] in backed_roots}):
            repos.append(self._freshness(key, latest.get(key), observed.get(key), in_window))
        order = {"failed": 0, "never": 1, "stale": 2, "fresh": 3}
        repos.sort(key=lambda r: (order[r.state], -(r.age_seconds or 0.0), r.root, r.repository))
        states = [r.state for r in repos]
        ages = [r.age_seconds for r in repos if r.age_seconds is not None]
        return Backups(
            stale_after_seconds=self.targets.backup_age_seconds,
            runs=len(runs),
            failed_runs=sum(r.status != "ok" for r in runs),
            bytes_added=sum(r.bytes_added for r in runs),
            last_run=runs[-1] if runs else None,
            buckets=tuple(BackupBucket(k, *v) for k, v in sorted(buckets.items())),
            fresh=states.count("fresh"),
            stale=states.count("stale"),
            failed=states.count("failed"),
            never=states.count("never"),
            oldest_age_seconds=round(max(ages), 3) if ages else None,
            repositories=tuple(repos),
        )

    def _freshness(
        self,
        key: tuple[str, str],
        res: LatestResult | None,
        seen: tuple[Any, ...] | None,
        in_window: dict[tuple[str, str], tuple[int, int]],
    ) -> RepositoryBackup:
        age = None if res is None or res.last_ok is None else round(self.now - res.last_ok, 3)
        state: Freshness
        if res is not None and res.outcome != "ok":
            state = "failed"
            message = f"backup failed {_said(res.at)}: {res.details.get('message') or 'no message'}"
        elif age is None:
            state, message = "never", "never backed up"
        elif age > self.targets.backup_age_seconds:
            state = "stale"
            message = f"last successful backup {format_duration(age)} ago"
        else:
            state, message = "fresh", ""
        count, added = in_window.get(key, (0, 0))
        return RepositoryBackup(
            key[0], key[1], state,
            _iso(res.last_ok) if res is not None and res.last_ok is not None else None,
            age, seen[1] if seen else None, count, added, message,
        )  # fmt: skip

    def _drills(self) -> Drills:
        target = self.targets.drill_seconds
        summaries = {r[0]: r for r in self.runs if r[1] == "verify"}
        runs = []
        for run, count, failed, longest in self._in_window(
            "verify",
            "u.id, COUNT(*), SUM(r.outcome != 'ok'), MAX(r.duration_s)",
            "AND r.task = 'restore_drill' GROUP BY u.id ORDER BY u.started_at",
        ):
            _, _, at, _, s = summaries[run]
            runs.append(DrillRun(_iso(_epoch(at)), s.get("store"), count, failed,
                                 round(longest, 3), float(s.get("seconds", 0.0)),
                                 longest <= target))  # fmt: skip

        def drills(tail: str, *params: object) -> tuple[Drill, ...]:
            return tuple(
                Drill(r[0], r[1], _iso(_epoch(r[2])), r[3] == "ok", round(r[4], 3), r[5] or "")
                for r in self._in_window(
                    "verify",
                    "r.repository, r.root, u.started_at, r.outcome, r.duration_s, "
                    "json_extract(r.details, '$.message')",
                    f"AND r.task = 'restore_drill' {tail}",
                    *params,
                )
            )

        over = self._in_window(
            "verify", "COUNT(*)", "AND r.task = 'restore_drill' AND r.duration_s > ?", target
        )
        restores = [
            RestoreRun(_iso(_epoch(at)), int(s.get("restored", 0)), int(s.get("failed", 0)),
                       int(s.get("bytes", 0)), float(s.get("seconds", 0.0)))
            for _, command, at, _, s in self.runs
            if command == "restore"
        ]  # fmt: skip
        return Drills(
            target_seconds=target,
            runs=tuple(runs),
            drills=sum(r.repositories for r in runs),
            failed=sum(r.failed for r in runs),
            over_target=over[0][0] if over else 0,
            max_seconds=max((r.max_seconds for r in runs), default=None),
            slowest=drills("ORDER BY r.duration_s DESC LIMIT ?", SLOWEST),
            failures=drills("AND r.outcome != 'ok' ORDER BY u.started_at DESC LIMIT 50"),
            restores=tuple(restores),
        )

    def _resources(self) -> Resources:
        target = self.targets.resource_ratio
        width = _fine_bucket_seconds(self.window.seconds)
        samples = self._q(
            "SELECT taken_at, cpu_ratio, memory_ratio, load1 FROM host_samples "
            "WHERE taken_at >= ? AND taken_at <= ? ORDER BY taken_at",
            self.since,
            self.until,
        )
        cpu = [s[1] for s in samples]
        memory = [s[2] for s in samples]
        groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for at, c, m, _ in samples:
            groups[self._bucket(at, width)].append((c, m))

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return Resources(
            target_ratio=target,
            samples=len(samples),
            cpu_mean=r(sum(cpu) / len(cpu)) if cpu else None,
            cpu_p95=r(_p95(cpu)),
            cpu_max=r(max(cpu, default=None)),
            cpu_over_target=sum(c > target for c in cpu),
            memory_mean=r(sum(memory) / len(memory)) if memory else None,
            memory_p95=r(_p95(memory)),
            memory_max=r(max(memory, default=None)),
            memory_over_target=sum(m > target for m in memory),
            load1_max=r(max((s[3] for s in samples), default=None)),
            bucket_seconds=width,
            buckets=tuple(_resource_bucket(k, v) for k, v in sorted(groups.items())),
        )


def _resource_bucket(start: str, values: list[tuple[float, float]]) -> ResourceBucket:
    cpu, memory = [c for c, _ in values], [m for _, m in values]
    return ResourceBucket(
        start,
        len(values),
        round(sum(cpu) / len(cpu), 4),
        round(max(cpu), 4),
        round(sum(memory) / len(memory), 4),
        round(max(memory), 4),
    )
