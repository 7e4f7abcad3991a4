"""The report's numbers against the history they came from: a month of it, recorded by the
real recording functions, for a fleet of two roots backed up to two stores, beside another
fleet (another root) sharing one of the stores and a third store drilled by another host.

Each figure is checked against a ledger of what was recorded: scoped to the fleet, backups
per store, one number for "needs attention", reclaimed space never negative (growth apart),
sizes humanised, a drill chart scaled to the drills; and the HTML report of that month
rendered by headless Chromium.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from report_pages import plain, png_rows, render_in_chromium

from custode.jobs import record
from custode.records import state
from custode.records.state import Observation, RepositoryResult, StateDB
from custode.report.history import build
from custode.report.model import Report
from custode.report.render import fmt_bytes, render
from fixtures.cli import CliResult

Run = Callable[..., CliResult]
NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)  # the report's; night 1 is this morning's
DAYS = 30
WINDOW = 31 * 86400.0
HOST = "git1"
FLEET = ("/srv/git", "/srv/mirrors")  # the two roots of the fleet
OTHER = "/srv/other"  # another fleet, recorded in the same history
STORE_1, STORE_2 = "/var/backups/custode", "s3://backups.example/custode"
ELSEWHERE = "s3://elsewhere.example/custode"  # drilled by another host, never our store
GROWTH = -5_050_368  # what the repack "reclaimed"
MIB = 1 << 20


@dataclass
class Ledger:
    """What the history holds, summed here as the report should sum it."""

    reclaimed: int = 0  # the fleet's positive reclaimed_bytes
    grown: int = 0  # minus its negative ones
    grown_repositories: set[str] = field(default_factory=set)
    store_runs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    store_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    drill_max: float = 0.0  # of the fleet's stores


class Clock:
    """The history's time: ``utcnow`` of the state database, moved by the test."""

    def __init__(self) -> None:
        self.at = NOW

    def set(self, night: int, hour: int) -> str:
        """``hour`` o'clock of the ``night``-th night back (1: this morning's)."""
        self.at = NOW.replace(hour=0) - timedelta(days=night - 1) + timedelta(hours=hour)
        return self.now()

    def now(self) -> str:
        return self.at.isoformat(timespec="microseconds")


def _warn(message: str) -> None:
    raise AssertionError(message)


def _row(root: str, repo: str, task: str, at: str, *, outcome: str = "ok", seconds: float = 1.0,
         **details: object) -> RepositoryResult:  # fmt: skip
    return RepositoryResult(repo, root, task, outcome, at, seconds, dict(details))


def _observed(db: StateDB, at: str, rows: list[tuple[str, str, str]]) -> None:
    run = db.begin_run("status")
    db.record_observations(run, [
        Observation(repo, root, verdict, 3, 300, 2, 10 * MIB, 1, 10 * MIB + 300, f"fp-{at}",
                    at, "broken HEAD" if verdict == "broken" else "")
        for root, repo, verdict in rows
    ])  # fmt: skip
    db.finish_run(run, "ok", {"repositories": len(rows), "changed": len(rows)})


def _backup(state_dir: Path, at: str, store: str, repos: list[tuple[str, str, int, str]],
            snapshot: str) -> None:  # fmt: skip
    rows = [_row(root, repo, "backup", at, outcome=outcome, seconds=2.0, store=store, host=HOST,
                 snapshot=snapshot, bytes_added=added, message="store unreachable"
                 if outcome == "failed" else "")
            for root, repo, added, outcome in repos]  # fmt: skip
    failed = sum(r.outcome == "failed" for r in rows)
    summary = {"snapshot": snapshot, "store": store, "host": HOST, "repositories": len(rows),
               "failed": failed, "bytes_added": sum(a for _, _, a, _ in repos),
               "seconds": 9.5}  # fmt: skip
    record.results(state_dir, "backup", rows, "partial" if failed else "ok", summary, _warn)


def _drill(state_dir: Path, at: str, store: str, host: str, seconds: list[float]) -> None:
    rows = [_row(f"{store}#{host}", f"r{i}.git", "restore_drill", at, seconds=s)
            for i, s in enumerate(seconds)]  # fmt: skip
    summary = {"store": store, "host": host, "drills": len(rows), "seconds": sum(seconds) + 1}
    record.results(state_dir, "verify", rows, "ok", summary, _warn)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(state, "utcnow", c.now)
    return c


@pytest.fixture
def month(tmp_path: Path, clock: Clock) -> Iterator[tuple[StateDB, Ledger]]:
    """30 days of status, maintain, check, backup and verify runs, and their ledger."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    git, mirrors = FLEET
    ours = [(git, "a.git"), (git, "b.git"), (git, "c.git"), (mirrors, "m1.git"),
            (mirrors, "m2.git")]  # fmt: skip
    theirs = [(OTHER, "x.git"), (OTHER, "y.git"), (OTHER, "z.git")]
    ledger = Ledger()
    with StateDB.open(record.database(state_dir)) as db:
        at = clock.set(DAYS, 0)  # m2.git and z.git are never observed: known by results
        _observed(db, at, [(git, "a.git", "ok"), (git, "b.git", "ok"), (git, "c.git", "ok"),
                           (mirrors, "m1.git", "ok"), (OTHER, "x.git", "attention"),
                           (OTHER, "y.git", "broken")])  # fmt: skip
        for day in range(DAYS, 0, -1):
            if day == 2:  # b.git needs maintenance (maintained the next night), c.git broke
                _observed(db, clock.set(day, 0), [(git, "b.git", "attention"),
                                                  (git, "c.git", "broken")])  # fmt: skip
            at = clock.set(day, 1)
            # every 10th night m1.git grows more than the others free: a negative net
            rows, freed = [], {("a.git", git): MIB, ("b.git", git): 512 << 10,
                               ("m1.git", mirrors): GROWTH if day % 10 == 0 else 4096,
                               ("x.git", OTHER): 8192}  # fmt: skip
            for (repo, root), n in freed.items():
                rows += [_row(root, repo, "write_commit_graph", at, reason="new commits"),
                         _row(root, repo, "maintain", at, seconds=2.0, reclaimed_bytes=n, message="")]  # fmt: skip
                if root in FLEET:
                    ledger.reclaimed += max(0, n)
                    ledger.grown += max(0, -n)
                    ledger.grown_repositories |= {repo} if n < 0 else set()
            record.results(state_dir, "maintain", rows, "ok",
                           {"reclaimed_bytes": sum(freed.values())}, _warn)  # fmt: skip
            at = clock.set(day, 2)
            checks = [_row(root, repo, "check", at, outcome="failed" if repo == "c.git" and day == 1
                           else "ok", findings=["missing HEAD"]) for root, repo in ours]  # fmt: skip
            record.results(state_dir, "check", checks, "ok", {}, _warn)
            at = clock.set(day, 3)  # every night to store 1; m2.git fails on the last
            added = [(root, repo, 1000 * (i + 1) + day, "failed" if day == 1 and
                      repo == "m2.git" else "ok") for i, (root, repo) in enumerate(ours)]  # fmt: skip
            _backup(state_dir, at, STORE_1, added, f"s1-{day}")
            ledger.store_runs[STORE_1] += 1
            ledger.store_bytes[STORE_1] += sum(a for *_, a, _ in added)
            at = clock.set(day, 4)  # the other fleet into store 2, every night, much more
            _backup(state_dir, at, STORE_2, [(r, n, 70 * MIB, "ok") for r, n in theirs],
                    f"s2o-{day}")  # fmt: skip
            if day % 7 == 0:  # ours into store 2, weekly; then drills of both stores
                at = clock.set(day, 5)
                added = [(root, repo, 50_000, "ok") for root, repo in ours]
                _backup(state_dir, at, STORE_2, added, f"s2-{day}")
                ledger.store_runs[STORE_2] += 1
                ledger.store_bytes[STORE_2] += sum(a for *_, a, _ in added)
                at = clock.set(day, 6)
                drills = [3.0 + day / 10, 4.5, 5.25 + day / 20]
                for store in (STORE_1, STORE_2):
                    _drill(state_dir, at, store, HOST, drills)
                ledger.drill_max = max(ledger.drill_max, *drills)
                _drill(state_dir, at, ELSEWHERE, "other-host", [400.0])  # not ours
            db.record_host_sample(0.2 + day / 100, 0.4, 1.0)
        clock.set(0, 0)
        yield db, ledger


def report(db: StateDB, *, roots: tuple[str, ...] | None = FLEET) -> Report:
    if roots is None:
        return build(db, since_seconds=WINDOW, now=NOW.timestamp())
    return build(db, since_seconds=WINDOW, now=NOW.timestamp(), roots=roots)


def test_every_figure_is_the_fleets_and_backups_are_per_store(
    month: tuple[StateDB, Ledger],
) -> None:
    db, ledger = month
    r = report(db)
    assert r.scope.roots == FLEET and not r.scope.everything
    assert (r.scope.left_out, r.scope.left_out_roots) == (3, (OTHER,))
    assert r.scope.stores == (STORE_1, STORE_2)
    f = r.fleet
    assert (f.repositories, f.ok, f.attention, f.maintained_since, f.broken, f.unobserved) == (
        5, 2, 0, 1, 1, 1
    )  # fmt: skip
    assert f.size_bytes == 4 * (10 * MIB + 300)  # the four observed, not x.git and y.git
    problems = {p.repository: p for p in r.problems}
    assert set(problems) == {"c.git", "m2.git"}
    assert any("store unreachable" in why for why in problems["m2.git"].reasons)
    m = r.maintenance
    assert (m.runs, m.repositories, m.failed) == (DAYS, 3, 0)
    assert (m.reclaimed_bytes, m.grown_bytes) == (ledger.reclaimed, ledger.grown)
    assert m.grown_repositories == len(ledger.grown_repositories) == 1
    assert sum(b.reclaimed_bytes for b in m.buckets) == m.reclaimed_bytes
    assert sum(b.grown_bytes for b in m.buckets) == m.grown_bytes
    assert [t.task for t in m.tasks] == ["write_commit_graph"] and m.tasks[0].ok == 3 * DAYS
    assert (r.checks.runs, r.checks.repositories, r.checks.failed) == (DAYS, 5, 1)
    stores = {s.store: s for s in r.backups.stores}
    assert set(stores) == {STORE_1, STORE_2}  # the other fleet's nightly runs are not ours
    for name, s in stores.items():
        assert (s.runs, s.bytes_added) == (ledger.store_runs[name], ledger.store_bytes[name])
        assert sum(b.bytes_added for b in s.buckets) == s.bytes_added
        assert s.last_run.repositories == 5
    assert stores[STORE_1].failed_runs == 1 and stores[STORE_1].last_run.failed == 1
    assert r.backups.failed == 1 and r.backups.fresh == 4 and r.backups.never == 0
    d = r.drills
    assert {run.store for run in d.runs} == {STORE_1, STORE_2}  # not the other host's store
    assert d.max_seconds == ledger.drill_max and d.over_target == 0
    assert all(run.within_target for run in d.runs)

    everything = report(db, roots=None)  # no roots: all recorded, as before
    assert everything.scope.everything and everything.scope.left_out == 0
    assert everything.scope.roots == (*FLEET, OTHER)
    assert everything.fleet.repositories == 8 and everything.drills.over_target == 4
    assert everything.maintenance.reclaimed_bytes == ledger.reclaimed + DAYS * 8192
    other = {s.store: s for s in everything.backups.stores}[STORE_2]
    assert other.runs == DAYS + ledger.store_runs[STORE_2]  # runs, still per store

    for fmt in ("html", "md"):
        text = plain(render(r, fmt))
        assert f"Fleet: the repositories under {FLEET[0]}, {FLEET[1]}" in text
        assert f"3 repositories recorded under other roots ({OTHER}) left out" in text
        for name, s in stores.items():
            assert f"{s.runs} backups added {fmt_bytes(s.bytes_added)}" in text or (
                f"{fmt_bytes(s.bytes_added)} added to {name} by {s.runs} backups" in text
            )
    assert "all recorded roots" in plain(render(everything, "md"))


def _numbers(pattern: str, text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(pattern, text)]


def test_needing_attention_is_one_number_everywhere(month: tuple[StateDB, Ledger]) -> None:
    db, _ = month
    for r in (report(db, roots=None), report(db)):
        count = len(r.problems)
        assert r.fleet.needing_attention == count
        f = r.fleet
        assert f.ok + f.attention + f.maintained_since + f.broken + f.unobserved == f.repositories
        html, md = plain(render(r, "html")), plain(render(r, "md"))
        said = [
            *_numbers(r"repositories in this fleet ([\d,]+) need attention", html),  # the card
            *_numbers(r"need attention, for any reason \(listed below\) ([\d,]+)", html),
            *_numbers(r"Repositories needing attention \(([\d,]+)\)", html),
            *_numbers(r"repositories, ([\d,]+) need attention", md),
            *_numbers(r"Repositories needing attention \(([\d,]+)\)", md),
        ]
        assert said == [count] * 5, said
        # "attention" alone is the status verdict, and says so
        assert f"attention (maintenance due) {f.attention}" in html


NEGATIVE = re.compile(r"(?<![\w-])-\d")  # a negative number (a date's 2026-12 is not)
RAW = re.compile(r"\b\d{4,}\s?B\b|\b\d{3,}(?:\.\d+)?\s?s\b")  # bytes or seconds unscaled


def test_reclaimed_space_is_never_negative_and_sizes_are_humanised(
    month: tuple[StateDB, Ledger],
) -> None:
    db, ledger = month
    for r in (report(db), report(db, roots=None)):
        assert r.maintenance.reclaimed_bytes >= 0 and r.maintenance.grown_bytes == ledger.grown
        assert all(b.reclaimed_bytes >= 0 and b.grown_bytes >= 0 for b in r.maintenance.buckets)
        for fmt in ("md", "html"):
            text = plain(re.sub(r"<svg.*?</svg>", "", render(r, fmt), flags=re.DOTALL))
            assert not NEGATIVE.search(text), NEGATIVE.search(text)
            assert not RAW.search(text), RAW.search(text)
            assert str(-GROWTH) not in text
            assert f"1 repository grew by {fmt_bytes(ledger.grown)} instead" in text
            assert "nothing was lost" in text


def _chart(html: str, title: str) -> str:
    found = re.search(rf'<svg[^>]*aria-label="{re.escape(title)}".*?</svg>', html, re.DOTALL)
    assert found, title
    return found.group(0)


def _bar_heights(svg: str) -> list[float]:
    return [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)" fill="#8250df"', svg)]


def test_the_drill_chart_scales_to_the_drills_and_marks_the_target(
    tmp_path: Path, clock: Clock
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    for day, seconds in ((6, [4.0, 5.0]), (3, [5.5]), (1, [2.0, 3.0])):
        _drill(state_dir, clock.set(day, 6), STORE_1, HOST, seconds)
    with StateDB.open(record.database(state_dir)) as db:
        r = build(db, since_seconds=7 * 86400, now=NOW.timestamp())
    svg = _chart(render(r, "html"), "Slowest repository restore per drill")
    heights = _bar_heights(svg)
    assert len(heights) == 3
    assert max(heights) > 100  # of a 162-pixel plot: not a flat line at zero
    assert "target 5m, far above this scale" in svg  # marked, as a note
    assert "stroke-dasharray" not in svg

    for day, seconds in ((2, [200.0]),):  # a drill near the target: the line is drawn
        _drill(state_dir, clock.set(day, 6), STORE_1, HOST, seconds)
    with StateDB.open(record.database(state_dir)) as db:
        r = build(db, since_seconds=7 * 86400, now=NOW.timestamp())
    svg = _chart(render(r, "html"), "Slowest repository restore per drill")
    assert "stroke-dasharray" in svg and "far above" not in svg
    assert ">target 5m<" in svg


def test_report_takes_the_fleet_from_roots_or_the_config(custode: Run, tmp_path: Path) -> None:
    config = tmp_path / "custode.toml"
    config.write_text(f'roots = ["{FLEET[0]}"]\n')
    given = custode("report", "--format", "json", *FLEET)
    assert given.code == 0, given.stderr
    assert given.json()["scope"]["roots"] == list(FLEET)
    configured = custode("--config", config, "report", "--format", "json")
    assert configured.code == 0, configured.stderr
    assert configured.json()["scope"] == {"roots": [FLEET[0]], "everything": False,
                                          "left_out": 0, "left_out_roots": [], "stores": []}  # fmt: skip
    anything = custode("report", "--format", "md")
    assert anything.code == 0 and "Fleet: all recorded roots" in anything.stdout


@pytest.mark.integration
def test_html_report_of_a_month_and_two_stores_renders_in_chromium(
    month: tuple[StateDB, Ledger], tmp_path: Path
) -> None:
    db, ledger = month
    page = tmp_path / "report.html"
    page.write_text(render(report(db), "html"))
    dom = render_in_chromium(page, tmp_path, charts=6)  # fleet, reclaimed, 2 stores, drills, host
    text = plain(dom)
    assert "Fleet: the repositories under /srv/git, /srv/mirrors" in text
    for name in (STORE_1, STORE_2):
        runs, added = ledger.store_runs[name], fmt_bytes(ledger.store_bytes[name])
        assert f"{added} added to {name} by {runs} backups" in text  # the card
        assert f"{name} {runs}" in text  # the per-store table's row
    assert "far above this scale" in text
    assert not NEGATIVE.search(re.sub(r"<svg.*?</svg>", "", dom, flags=re.DOTALL))
    width, height, rows = png_rows((tmp_path / "report.png").read_bytes())
    assert (width, height) == (1280, 2000) and len(set(rows)) > 100
