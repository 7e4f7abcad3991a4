"""Reads the history database into the report model, for one time window.

Read only, through ``StateDB``'s reads for reports; the fleet is never scanned, so
"needs attention and why" comes from the latest observations (custode status) and the
latest check, maintain and backup results. Aggregates come computed from the database
(``StateDB.totals_by_*``: counts, sums, details summed) so a long history is not loaded
into memory.

The fleet is the repositories under the given roots: results and observations under other
roots are left out of every figure (and counted as left out), the restore drills and
restores are those of the stores and hosts the fleet was backed up to. Without roots the
fleet is every root recorded.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Literal, get_args

from custode.base.times import epoch, iso, minute
from custode.base.units import format_duration
from custode.maintenance.needs import TaskKind
from custode.maintenance.window import DEFERRED, waiting
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
    Deferred,
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
    Scope,
    StoreBackups,
    Targets,
    TaskStats,
    Window,
)

_LATEST_TASKS = ("maintain", "check", "check-full", "backup")
SLOWEST = 5  # drills listed by time
_DRILL = "restore_drill"  # the task of a restore drill, recorded by verify runs
_Labels = tuple[tuple[str, str], ...]


def build(
    db: StateDB | None, *, since_seconds: float, now: float, targets: Targets | None = None,
    roots: Iterable[str] = (),
) -> Report:  # fmt: skip
    """The report for the window ``now - since_seconds`` … ``now`` (``db`` None: no history)
    about the repositories under ``roots`` (none: every recorded root)."""
    targets = targets or Targets()
    fleet = tuple(sorted({os.path.abspath(r) for r in roots}))  # as discovery records them
    # a busy or damaged database fails in StateDB's reads, with the fix
    return _Builder(db, since_seconds, now, targets, fleet).report()


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
    def __init__(
        self, db: StateDB | None, since_s: float, now: float, targets: Targets,
        roots: tuple[str, ...],
    ) -> None:  # fmt: skip
        self.db = db
        self.now = now
        self.targets = targets
        self.roots: tuple[str, ...] | None = roots or None  # None: every recorded root
        # the "store#host" the fleet's backups went to, as verify records a drill's root
        self.drill_roots: set[str] | None = None if self.roots is None else set()
        self.pairs: set[tuple[str, str]] = set()  # those (store, host)
        start = now - since_s
        self.since = iso(start, "microseconds")
        self.until = iso(now, "microseconds")
        self.window = Window(iso(start), iso(now), since_s, _bucket_seconds(since_s))

    def _bucket(self, at: str, width: float) -> str:
        return iso(epoch(at) // width * width)

    def _in(self, root: str) -> bool:
        return self.roots is None or root in self.roots

    def report(self) -> Report:
        db = self.db
        self.runs: list[Run] = db.runs_between(self.since, self.until) if db else []
        everywhere = db.latest_observations() if db else {}
        latest: dict[str, dict[tuple[str, str], LatestResult]] = defaultdict(dict)
        outside: set[tuple[str, str]] = {k for k in everywhere if not self._in(k[0])}
        for res in db.latest_results(_LATEST_TASKS) if db else []:
            key = (res.root, res.repository)
            if self._in(res.root):
                latest[res.task][key] = res
            else:
                outside.add(key)
        observed = {k: o for k, o in everywhere.items() if self._in(k[0])}
        anything = db.has_records() if db else False
        backups = self._backups(observed, latest["backup"])
        since = self._maintained_since(observed, latest["maintain"])
        problems = self._problems(observed, latest, backups.repositories, since)
        known = set(observed).union(*(latest[t] for t in _LATEST_TASKS))
        roots = self.roots or tuple(sorted({root for root, _ in known}))
        scope = Scope(
            roots, self.roots is None, len(outside), tuple(sorted({r for r, _ in outside})),
            tuple(sorted({store for store, _ in self.pairs})),
        )  # fmt: skip
        return Report(
            generated_at=iso(self.now),
            database=str(self.db.path) if self.db else "",
            scope=scope,
            window=self.window,
            targets=self.targets,
            empty=not anything and not everywhere,
            runs=self._command_runs(),
            fleet=self._fleet(observed, latest, since, len(problems)),
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
        maintained_since: set[tuple[str, str]],
        problems: int,
    ) -> Fleet:
        known = set(observed).union(*(latest[t] for t in _LATEST_TASKS))
        verdicts = [o.verdict for k, o in observed.items() if k not in maintained_since]
        newest = max((o.observed_at for o in observed.values()), default=None)
        return Fleet(
            repositories=len(known),
            ok=verdicts.count("ok"),
            attention=verdicts.count("attention"),
            maintained_since=len(maintained_since),
            broken=verdicts.count("broken"),
            unobserved=len(known - set(observed)),
            size_bytes=sum(o.size_bytes for o in observed.values()),
            loose_objects=sum(o.loose_objects for o in observed.values()),
            packs=sum(o.packs for o in observed.values()),
            observed_at=iso(epoch(newest)) if newest else None,
            needing_attention=problems,
        )

    def _maintained_since(
        self,
        observed: dict[tuple[str, str], Observation],
        maintained: dict[tuple[str, str], LatestResult],
    ) -> set[tuple[str, str]]:
        """Those status last saw needing maintenance ("attention") and maintained since."""
        # status records a repository only when its verdict or fingerprint changes, so its
        # latest observation is what the latest status run saw: "since" the observation.
        seen = self.db.last_started("status") if self.db else None
        last_status = epoch(seen) if seen else 0.0
        return {
            key
            for key, o in observed.items()
            if o.verdict == "attention"
            and (done := maintained.get(key)) is not None
            and done.outcome == "ok"
            and done.at > last_status
        }

    def _problems(
        self,
        observed: dict[tuple[str, str], Observation],
        latest: dict[str, dict[tuple[str, str], LatestResult]],
        backups: tuple[RepositoryBackup, ...],
        maintained_since: set[tuple[str, str]],
    ) -> tuple[Problem, ...]:
        reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
        for key, o in observed.items():
            if key in maintained_since:
                continue  # attention means "maintain it", and it was
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
        db, roots = self.db, self.roots
        tasks = db.totals_by_task(*window, roots=roots) if db else {}
        tasks.pop("maintain", None)  # the row per repository, not a task
        tasks.pop(DEFERRED, None)  # work waiting for a later night: listed on its own
        freed = "reclaimed_bytes"  # per repository: negative when it grew
        per_run = (
            db.totals_by_run(*window, task="maintain", detail=freed, roots=roots) if db else {}
        )
        per_repo = (
            db.totals_by_repository(*window, task="maintain", detail=freed, roots=roots)
            if db
            else {}
        )
        buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        results = failed = skipped = reclaimed = grown = 0
        runs = [r for r in self.runs if r.command == "maintain"]
        if roots is not None:  # a run that recorded nothing of this fleet is another's
            runs = [r for r in runs if r.id in per_run]
        for run in runs:
            t = per_run.get(run.id)
            count, bad, skip = (t.results, t.failed, t.skipped) if t else (0, 0, 0)
            plus, minus = (t.detail - t.detail_negative, -t.detail_negative) if t else (0, 0)
            b = buckets[self._bucket(run.started_at, self.window.bucket_seconds)]
            for i, v in enumerate((1, count, bad, plus, minus)):
                b[i] += v
            results, failed, skipped = results + count, failed + bad, skipped + skip
            reclaimed, grown = reclaimed + plus, grown + minus
        return Maintenance(
            runs=len(runs),
            repositories=len(per_repo),
            ok=results - failed - skipped,
            failed=failed,
            skipped=skipped,
            reclaimed_bytes=reclaimed,
            grown_bytes=grown,
            grown_repositories=sum(1 for t in per_repo.values() if t.detail_negative < 0),
            tasks=tuple(
                TaskStats(t, n.ok, n.failed, n.skipped, round(n.seconds, 3))
                for t, n in sorted(tasks.items())
            ),
            buckets=tuple(MaintenanceBucket(k, *v) for k, v in sorted(buckets.items())),
            deferred=self._deferred(),
        )

    def _deferred(self) -> tuple[Deferred, ...]:
        """The maintenance deferred by the nightly window and still waiting."""
        if not self.db:
            return ()
        rows = [r for r in self.db.latest_results([DEFERRED]) if self._in(r.root)]
        open_ = waiting(rows, self.db.latest_results(get_args(TaskKind)))
        found = [
            Deferred(r.root, r.repository, tuple(map(str, r.details.get("tasks") or ())),
                     str(r.details.get("why", "")), iso(since), str(r.details.get("due", "")))
            for since, r in open_.values()
        ]  # fmt: skip
        return tuple(sorted(found, key=lambda d: (d.first_deferred, d.root, d.repository)))

    def _checks(self) -> Checks:
        window = ("check", self.since, self.until)
        db, roots = self.db, self.roots
        tasks = db.totals_by_task(*window, roots=roots) if db else {}
        per_run = db.totals_by_run(*window, roots=roots) if db else {}
        runs = [r for r in self.runs if r.command == "check"]
        return Checks(
            runs=len(runs if roots is None else [r for r in runs if r.id in per_run]),
            repositories=len(db.totals_by_repository(*window, roots=roots)) if db else 0,
            ok=sum(t.ok for t in tasks.values()),
            failed=sum(t.results - t.ok for t in tasks.values()),
            full=tasks["check-full"].results if "check-full" in tasks else 0,
        )

    def _backups(
        self,
        observed: dict[tuple[str, str], Observation],
        latest: dict[tuple[str, str], LatestResult],
    ) -> Backups:
        db, roots = self.db, self.roots
        window = ("backup", self.since, self.until)
        per_run = (
            db.totals_by_run(*window, task="backup", detail="bytes_added", roots=roots)
            if db
            else {}
        )
        by_store: dict[str, list[BackupRun]] = defaultdict(list)
        for u in self.runs:
            t = per_run.get(u.id)
            if u.command != "backup" or (t is None and roots is not None):
                continue  # another command's, or no repository of this fleet in it
            s = u.summary
            store = str(s.get("store") or "unknown store")
            self._went_to(store, s.get("host"))
            by_store[store].append(BackupRun(
                iso(epoch(u.started_at)), u.status, s.get("snapshot"), store,
                t.results if t else int(s.get("repositories", 0)),
                t.failed if t else int(s.get("failed", 0)),
                t.detail if t else int(s.get("bytes_added", 0)),
                float(s.get("seconds", 0.0)),
            ))  # fmt: skip
        for res in latest.values():  # the stores of backups older than the window too
            if res.details.get("store"):
                self._went_to(str(res.details["store"]), res.details.get("host"))
        totals = db.totals_by_repository(*window, detail="bytes_added", roots=roots) if db else {}
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
            stores=tuple(self._store(name, runs) for name, runs in sorted(by_store.items())),
            fresh=states.count("fresh"),
            stale=states.count("stale"),
            failed=states.count("failed"),
            never=states.count("never"),
            oldest_age_seconds=round(max(ages), 3) if ages else None,
            repositories=tuple(repos),
        )

    def _went_to(self, store: str, host: Any) -> None:
        """Note that the fleet was backed up to ``store`` as ``host``: its drills are ours."""
        self.pairs.add((store, str(host)))
        if self.drill_roots is not None:
            self.drill_roots.add(f"{store}#{host}")

    def _store(self, name: str, runs: list[BackupRun]) -> StoreBackups:
        buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for run in runs:
            b = buckets[self._bucket(run.at, self.window.bucket_seconds)]
            b[0], b[1], b[2] = b[0] + 1, b[1] + (run.status != "ok"), b[2] + run.bytes_added
        return StoreBackups(
            store=name,
            runs=len(runs),
            failed_runs=sum(r.status != "ok" for r in runs),
            bytes_added=sum(r.bytes_added for r in runs),
            last_run=runs[-1],
            buckets=tuple(BackupBucket(k, *v) for k, v in sorted(buckets.items())),
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
        db, roots = self.db, self.drill_roots
        summaries = {r.id: r for r in self.runs if r.command == "verify"}
        runs = []
        for run, t in (db.totals_by_run(*window, task=_DRILL, roots=roots) if db else {}).items():
            at, s = summaries[run].started_at, summaries[run].summary
            runs.append(DrillRun(iso(epoch(at)), s.get("store"), t.results, t.results - t.ok,
                                 round(t.longest, 3), float(s.get("seconds", 0.0)),
                                 t.longest <= target))  # fmt: skip

        def drills(
            order: Literal["slowest", "newest"], limit: int, *, failing: bool = False
        ) -> tuple[Drill, ...]:
            found = (
                db.results_between(
                    *window, task=_DRILL, order=order, limit=limit, failing=failing, roots=roots
                )
                if db
                else []
            )
            return tuple(
                Drill(r.repository, r.root, iso(epoch(at)), r.outcome == "ok",
                      round(r.duration_s, 3), str(r.details.get("message") or ""))
                for at, r in found
            )  # fmt: skip

        restores = [
            RestoreRun(iso(epoch(u.started_at)), str(u.summary.get("store") or "unknown store"),
                       int(u.summary.get("restored", 0)), int(u.summary.get("failed", 0)),
                       int(u.summary.get("bytes", 0)), float(u.summary.get("seconds", 0.0)))
            for u in self.runs
            if u.command == "restore"
            and (roots is None
                 or (str(u.summary.get("store")), str(u.summary.get("host"))) in self.pairs)
        ]  # fmt: skip
        return Drills(
            target_seconds=target,
            runs=tuple(runs),
            drills=sum(r.repositories for r in runs),
            failed=sum(r.failed for r in runs),
            over_target=(
                db.count_slower(*window, task=_DRILL, seconds=target, roots=roots) if db else 0
            ),
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
