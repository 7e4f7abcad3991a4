"""Reads the history database into the report model, for one time window.

Read only, through ``StateDB``'s reads for reports; the fleet is never scanned, so
"needs attention and why" comes from the latest observations (custode status) and the
latest check, maintain and backup results. Aggregates come computed from the database
(``StateDB.totals_by_*``: counts, sums, details summed) so a long history is not loaded
into memory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal

from custode.base.times import epoch, iso, minute
from custode.base.units import format_duration
from custode.records.state import LatestResult, Observation, Run, StateDB
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
_DRILL = "restore_drill"  # the task of a restore drill, recorded by verify runs
_Labels = tuple[tuple[str, str], ...]


def build(
    db: StateDB | None, *, since_seconds: float, now: float, targets: Targets | None = None
) -> Report:
    """The report for the window ``now - since_seconds`` … ``now`` (``db`` None: no history)."""
    targets = targets or Targets()
    # a busy or damaged database fails in StateDB's reads, with the fix
    return _Builder(db, since_seconds, now, targets).report()


def _labels(fields: dict[str, str]) -> _Labels:
    """An alert instance's labels as a key: the same labels, the same key."""
    return tuple(sorted(fields.items()))


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
        self.since = iso(start, "microseconds")
        self.until = iso(now, "microseconds")
        self.window = Window(iso(start), iso(now), since_s, _bucket_seconds(since_s))

    def _bucket(self, at: str, width: float) -> str:
        return iso(epoch(at) // width * width)

    def report(self) -> Report:
        db = self.db
        self.runs: list[Run] = db.runs_between(self.since, self.until) if db else []
        observed = db.latest_observations() if db else {}
        latest: dict[str, dict[tuple[str, str], LatestResult]] = defaultdict(dict)
        for res in db.latest_results(_LATEST_TASKS) if db else []:
            latest[res.task][(res.root, res.repository)] = res
        anything = db.has_records() if db else False
        backups = self._backups(observed, latest["backup"])
        problems = self._problems(observed, latest, backups.repositories)
        return Report(
            generated_at=iso(self.now),
            database=str(self.db.path) if self.db else "",
            window=self.window,
            targets=self.targets,
            empty=not anything and not observed,
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
        events = self.db.alert_events(self.since, self.until)
        firing: dict[tuple[str, _Labels], str] = {}  # (name, labels) -> severity, at the start
        for name, state, fields in self.db.alert_events_before(self.since):
            if state == "firing":
                firing[name, _labels(fields)] = ""
            else:
                firing.pop((name, _labels(fields)), None)
        counts: dict[tuple[str, str], list[int]] = {}
        out = []
        for at, name, state, severity, fields, _ in events:
            c = counts.setdefault((name, severity), [0, 0])
            c[0 if state == "firing" else 1] += 1
            if state == "firing":
                firing[name, _labels(fields)] = severity
            else:
                firing.pop((name, _labels(fields)), None)
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
        for run in self.runs:
            by[run.command].append((run.started_at, run.status))
        return tuple(
            CommandRuns(
                command,
                len(rows),
                sum(s == "ok" for _, s in rows),
                sum(s == "partial" for _, s in rows),
                sum(s not in ("ok", "partial") for _, s in rows),
                iso(epoch(rows[-1][0])),
            )
            for command, rows in sorted(by.items())
        )

    def _fleet(
        self,
        observed: dict[tuple[str, str], Observation],
        latest: dict[str, dict[tuple[str, str], LatestResult]],
        problems: int,
    ) -> Fleet:
        known = set(observed).union(*(latest[t] for t in _LATEST_TASKS))
        verdicts = [o.verdict for o in observed.values()]
        newest = max((o.observed_at for o in observed.values()), default=None)
        return Fleet(
            repositories=len(known),
            ok=verdicts.count("ok"),
            attention=verdicts.count("attention"),
            broken=verdicts.count("broken"),
            unobserved=len(known - set(observed)),
            size_bytes=sum(o.size_bytes for o in observed.values()),
            loose_objects=sum(o.loose_objects for o in observed.values()),
            packs=sum(o.packs for o in observed.values()),
            observed_at=iso(epoch(newest)) if newest else None,
            needing_attention=problems,
        )

    def _problems(
        self,
        observed: dict[tuple[str, str], Observation],
        latest: dict[str, dict[tuple[str, str], LatestResult]],
        backups: tuple[RepositoryBackup, ...],
    ) -> tuple[Problem, ...]:
        reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
        # status records a repository only when its verdict or fingerprint changes, so its
        # latest observation is what the latest status run saw: "since" the observation.
        seen = self.db.last_started("status") if self.db else None
        last_status = epoch(seen) if seen else 0.0
        for key, o in observed.items():
            done = latest["maintain"].get(key)
            if o.verdict == "attention" and done and done.outcome == "ok" and done.at > last_status:
                continue  # maintained after status last looked; attention means "maintain it"
            if o.verdict in ("attention", "broken"):
                said = f"custode status: {o.verdict} since {minute(epoch(o.observed_at))}"
                reasons[key].append(f"{said}: {o.reasons}" if o.reasons else said)
        checks = {**latest["check"]}
        for key, res in latest["check-full"].items():
            if key not in checks or res.at > checks[key].at:
                checks[key] = res
        for key, res in checks.items():
            if res.outcome != "ok":
                findings = [str(f) for f in res.details.get("findings", [])]
                more = f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""
                what = "; ".join(findings[:3]) or str(res.details.get("verdict", res.outcome))
                reasons[key].append(f"integrity {res.task} failed {minute(res.at)}: {what}{more}")
        for key, res in latest["maintain"].items():
            if res.outcome == "failed":
                message = res.details.get("message") or "no message"
                reasons[key].append(f"maintenance failed {minute(res.at)}: {message}")
        for b in backups:
            if b.state != "fresh":
                reasons[(b.root, b.repository)].append(b.message)
        found = []
        for key, why in reasons.items():
            obs = observed.get(key)
            verdict, at = (obs.verdict, iso(epoch(obs.observed_at))) if obs else ("unknown", None)
            found.append(Problem(key[0], key[1], verdict, at, tuple(why)))
        rank = {"broken": 0, "attention": 1, "unknown": 2, "ok": 3}
        return tuple(sorted(found, key=lambda p: (rank[p.verdict], p.root, p.repository)))

    def _maintenance(self) -> Maintenance:
        window = ("maintain", self.since, self.until)
        db = self.db
        tasks = db.totals_by_task(*window) if db else {}
        tasks.pop("maintain", None)  # the row per repository, not a task
        per_run = {
            run: (t.results, t.failed, t.skipped, t.detail)
            for run, t in (
                db.totals_by_run(*window, task="maintain", detail="reclaimed_bytes") if db else {}
            ).items()
        }
        distinct = len(db.totals_by_repository(*window, task="maintain")) if db else 0
        buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        results = failed = skipped = reclaimed = 0
        runs = [r for r in self.runs if r.command == "maintain"]
        for run in runs:
            count, bad, skip, freed = per_run.get(run.id, (0, 0, 0, 0))
            freed = int(run.summary.get("reclaimed_bytes", freed))
            b = buckets[self._bucket(run.started_at, self.window.bucket_seconds)]
            for i, v in enumerate((1, count, bad, freed)):
                b[i] += v
            results, failed, skipped, reclaimed = (
                results + count, failed + bad, skipped + skip, reclaimed + freed
            )  # fmt: skip
        return Maintenance(
            runs=len(runs),
            repositories=distinct,
            ok=results - failed - skipped,
            failed=failed,
            skipped=skipped,
            reclaimed_bytes=reclaimed,
            tasks=tuple(
                TaskStats(t, n.ok, n.failed, n.skipped, round(n.seconds, 3))
                for t, n in sorted(tasks.items())
            ),
            buckets=tuple(MaintenanceBucket(k, *v) for k, v in sorted(buckets.items())),
        )

    def _checks(self) -> Checks:
        window = ("check", self.since, self.until)
        tasks = self.db.totals_by_task(*window) if self.db else {}
        return Checks(
            runs=sum(1 for r in self.runs if r.command == "check"),
            repositories=len(self.db.totals_by_repository(*window)) if self.db else 0,
            ok=sum(t.ok for t in tasks.values()),
            failed=sum(t.results - t.ok for t in tasks.values()),
            full=tasks["check-full"].results if "check-full" in tasks else 0,
        )

    def _backups(
        self,
        observed: dict[tuple[str, str], Observation],
        latest: dict[tuple[str, str], LatestResult],
    ) -> Backups:
        runs = []
        buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for u in self.runs:
            if u.command != "backup":
                continue
            at, status, s = u.started_at, u.status, u.summary
            run = BackupRun(
                iso(epoch(at)), status, s.get("snapshot"), s.get("store"),
                int(s.get("repositories", 0)), int(s.get("new", 0)), int(s.get("unchanged", 0)),
                int(s.get("failed", 0)), int(s.get("full", 0)), int(s.get("bytes_added", 0)),
                float(s.get("seconds", 0.0)),
            )  # fmt: skip
            runs.append(run)
            b = buckets[self._bucket(at, self.window.bucket_seconds)]
            b[0], b[1], b[2] = b[0] + 1, b[1] + (status != "ok"), b[2] + run.bytes_added
        totals = (
            self.db.totals_by_repository("backup", self.since, self.until, detail="bytes_added")
            if self.db
            else {}
        )
        in_window = {key: (t.results, t.detail) for key, t in totals.items()}
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
        seen: Observation | None,
        in_window: dict[tuple[str, str], tuple[int, int]],
    ) -> RepositoryBackup:
        age = None if res is None or res.last_ok is None else round(self.now - res.last_ok, 3)
        state: Freshness
        if res is not None and res.outcome != "ok":
            state = "failed"
            why = res.details.get("message") or "no message"
            message = f"backup failed {minute(res.at)}: {why}"
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
            iso(res.last_ok) if res is not None and res.last_ok is not None else None,
            age, seen.size_bytes if seen else None, count, added, message,
        )  # fmt: skip

    def _drills(self) -> Drills:
        target = self.targets.drill_seconds
        window = ("verify", self.since, self.until)
        db = self.db
        summaries = {r.id: r for r in self.runs if r.command == "verify"}
        runs = []
        for run, t in (db.totals_by_run(*window, task=_DRILL) if db else {}).items():
            at, s = summaries[run].started_at, summaries[run].summary
            runs.append(DrillRun(iso(epoch(at)), s.get("store"), t.results, t.results - t.ok,
                                 round(t.longest, 3), float(s.get("seconds", 0.0)),
                                 t.longest <= target))  # fmt: skip

        def drills(
            order: Literal["slowest", "newest"], limit: int, *, failing: bool = False
        ) -> tuple[Drill, ...]:
            found = (
                db.results_between(*window, task=_DRILL, order=order, limit=limit, failing=failing)
                if db
                else []
            )
            return tuple(
                Drill(r.repository, r.root, iso(epoch(at)), r.outcome == "ok",
                      round(r.duration_s, 3), str(r.details.get("message") or ""))
                for at, r in found
            )  # fmt: skip

        restores = [
            RestoreRun(iso(epoch(u.started_at)), int(u.summary.get("restored", 0)),
                       int(u.summary.get("failed", 0)), int(u.summary.get("bytes", 0)),
                       float(u.summary.get("seconds", 0.0)))
            for u in self.runs
            if u.command == "restore"
        ]  # fmt: skip
        return Drills(
            target_seconds=target,
            runs=tuple(runs),
            drills=sum(r.repositories for r in runs),
            failed=sum(r.failed for r in runs),
            over_target=db.count_slower(*window, task=_DRILL, seconds=target) if db else 0,
            max_seconds=max((r.max_seconds for r in runs), default=None),
            slowest=drills("slowest", SLOWEST),
            failures=drills("newest", 50, failing=True),
            restores=tuple(restores),
        )

    def _resources(self) -> Resources:
        target = self.targets.resource_ratio
        width = _fine_bucket_seconds(self.window.seconds)
        samples = self.db.host_samples(self.since, self.until) if self.db else []
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
