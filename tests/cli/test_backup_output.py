"""What ``backup``, ``forget`` and ``snapshots`` tell a person, on real repositories and a
real local store: why each snapshot is kept (as dates, never Python tuples), what to do
next after a backup (a broken repository: the command that shows why; a new key: where
it is), the hosts a store does hold, the repositories a snapshot holds, the backup's
progress (its scan, bytes and the repository in hand) and plurals."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from custode.backup.crypto import generate_identity, parse_recipient
from custode.backup.manifest import Snapshot
from custode.backup.retention import Policy, Reason, apply
from custode.backup.stores import open_store
from custode.config.model import Config
from custode.git.runner import Git
from custode.jobs import backup as backup_job
from custode.scan.fleet import scan
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult, on_terminal

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
WIDE = {"COLUMNS": "200"}  # a table's rows on one line each


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two bare repositories with history, one a clone of the other (shared history)."""
    root = tmp_path / "root"
    main = root / "org" / "main.git"
    run_git(None, "init", "-q", "--bare", main)
    fast_import(main, history_stream("refs/heads/main", 12))
    run_git(None, "clone", "-q", "--bare", "--no-local", main, root / "fork.git")
    return root


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "custode.toml"
    path.write_text('[backup]\nhost = "alpha"\n')
    return path


def _backup(custode: Run, config: Path, root: Path, store: Path, *more: str) -> CliResult:
    return custode("--config", config, "backup", root, "--store", store, *more)


def _pub(tmp_path: Path) -> str:
    return generate_identity(tmp_path / "keys" / "identity.txt")


def test_forget_dry_run_says_why_each_snapshot_is_kept_as_dates(
    custode: Run, root: Path, config: Path, tmp_path: Path
) -> None:
    store, pub, main = tmp_path / "store", _pub(tmp_path), root / "org" / "main.git"
    for n in range(3):
        fast_import(main, history_stream("refs/heads/main", 1, start=100 + n,
                                         parent="refs/heads/main^0"))  # fmt: skip
        made = _backup(custode, config, root, store, "--recipient", pub)
        assert made.code == 0, made.stderr
    listed = custode("--config", config, "snapshots", "--store", store, "--json").json()
    ids = [s["id"] for s in listed["snapshots"]]  # oldest first
    day = listed["snapshots"][0]["created"][:10]
    dry = custode("--config", config, "forget", "--store", store, "--keep-daily", "3",
                  "--keep-last", "1", "--dry-run", env=WIDE)  # fmt: skip
    assert dry.code == 0, dry.stderr
    rows = {
        cells[0]: cells[2:]
        for line in dry.stdout.splitlines()
        if len(cells := [c.strip() for c in line.split("│")]) == 4
    }
    # the newest: the last one, and its day's; the oldest: kept as the oldest while the
    # daily rule had counts left (restic's rule); the middle one: no rule keeps it
    assert rows[ids[2]] == ["keep", f"last, daily {day}"], dry.stdout
    assert rows[ids[0]] == ["keep", f"daily {day} (oldest)"], dry.stdout
    assert rows[ids[1]] == ["would remove", "no rule keeps it"], dry.stdout
    assert not re.search(r"\(\d{4}, ", dry.stdout)  # never a Python tuple
    assert "kept 2 snapshots, would remove 1" in dry.stdout
    as_json = custode("--config", config, "forget", "--store", store, "--keep-daily", "3",
                      "--dry-run", "--json").json()  # fmt: skip
    assert as_json["reasons"][ids[2]] == [f"daily {day}"]
    one = custode("--config", config, "forget", "--store", store, "--keep-last", "1",
                  "--dry-run")  # fmt: skip
    assert "kept 1 snapshot, would remove 2" in one.stdout  # not "1 snapshots"


def _snap(n: int, when: str) -> Snapshot:
    return Snapshot("h", f"{n:04d}", when, when, (), seq=n, machine="m")


def test_every_rule_names_its_period_as_a_person_reads_it() -> None:
    snaps = [_snap(1, "2025-06-30T08:00:00+00:00"), _snap(2, "2026-11-20T09:00:00+00:00"),
             _snap(3, "2026-12-04T13:05:00+00:00")]  # fmt: skip
    now = datetime(2026, 12, 5, tzinfo=UTC)
    rules = Policy(hourly=1, daily=1, weekly=1, monthly=2, yearly=3)
    decision = apply(rules, snaps, now)
    reasons = {k: [str(r) for r in why] for k, why in decision.reasons.items()}
    assert reasons["0003"] == ["hourly 2026-12-04 13:00", "daily 2026-12-04",
                               "weekly 2026-W49", "monthly 2026-12", "yearly 2026"]  # fmt: skip
    assert reasons["0002"] == ["monthly 2026-11"]
    assert reasons["0001"] == ["yearly 2025"]
    assert decision.reasons["0001"] == [Reason("yearly", "2025")]
    same_day = apply(Policy(daily=2), [_snap(0, "2026-12-04T08:00:00+00:00"), snaps[2]], now)
    assert [str(r) for r in same_day.reasons["0000"]] == ["daily 2026-12-04 (oldest)"]
    within = apply(Policy(within=86400.0), snaps, now)
    assert [str(r) for r in within.reasons["0003"]] == ["within"]


def test_a_broken_repository_ends_the_backup_with_the_command_that_shows_why(
    custode: Run, root: Path, config: Path, tmp_path: Path
) -> None:
    broken = root / "broken.git"
    run_git(None, "init", "-q", "--bare", broken)
    (broken / "refs" / "heads" / "main").write_text("1" * 40 + "\n")  # a missing commit
    pub = _pub(tmp_path)
    result = _backup(custode, config, root, tmp_path / "store", "--recipient", pub)
    assert result.code == 3, result.stderr
    line = (f"next: custode check {shlex.quote(str(root))} shows what is wrong with "
            "broken.git (not backed up); fix it, then run custode backup again")  # fmt: skip
    assert line in result.stderr
    assert "backup failed for 1 of 3 repositories" in result.stderr
    # and that command does show it
    check = custode("--config", config, "check", root)
    assert "broken.git" in check.stdout and "corrupt" in check.stdout
    fine = _backup(custode, config, root / "org", tmp_path / "store", "--recipient", pub)
    assert fine.code == 0 and "next:" not in fine.stderr


def test_the_first_backup_says_where_its_new_key_is_last_and_once(
    custode: Run, root: Path, config: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    merged = ("sh", "-c", 'exec "$@" 2>&1', "sh")  # one stream, in the order written
    result = custode("--config", config, "backup", root, "--store", tmp_path / "store",
                     prefix=merged, env={"PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert result.code == 0, result.stdout
    key = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "identity.txt"
    lines = result.stdout.splitlines()
    said = [n for n, line in enumerate(lines) if "created the backup key" in line]
    summary = [n for n, line in enumerate(lines) if line.startswith("snapshot ")]
    assert len(said) == 1 and len(summary) == 1, result.stdout  # said once
    assert said[0] > summary[0], result.stdout  # after the summary, not scrolled away
    assert str(key) in lines[said[0]] and "keep a copy of it somewhere else" in lines[said[0]]


def test_snapshots_of_an_unknown_host_name_the_hosts_in_the_store(
    custode: Run, root: Path, config: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    assert _backup(custode, config, root, store, "--recipient", _pub(tmp_path)).code == 0
    found = custode("--config", config, "snapshots", "--store", store, "--host", "nosuch")
    assert found.code == 0, found.stderr
    assert found.stdout.strip() == (
        f"no snapshots of host nosuch in file://{store}; it holds snapshots of host alpha "
        "(pass --host NAME)"
    )
    as_json = custode("--config", config, "snapshots", "--store", store, "--host", "nosuch",
                      "--json").json()  # fmt: skip
    assert as_json["hosts"] == ["alpha"] and as_json["snapshots"] == []
    mine = custode("--config", config, "snapshots", "--store", store)
    assert f"1 snapshot of host alpha in file://{store}" in mine.stdout  # not "1 snapshots"
    empty = tmp_path / "empty"
    (empty / "hosts").mkdir(parents=True)
    none = custode("--config", config, "snapshots", "--store", empty)
    assert "(it holds no snapshots of any host)" in none.stdout


def test_snapshots_lists_the_repositories_a_snapshot_holds(
    custode: Run, root: Path, config: Path, tmp_path: Path
) -> None:
    store, pub = tmp_path / "store", _pub(tmp_path)
    assert _backup(custode, config, root, store, "--recipient", pub).code == 0
    (root / "org" / "main.git").rename(root / "moved.git")
    assert _backup(custode, config, root, store, "--recipient", pub).code == 0
    first, latest = (s["id"] for s in custode("--config", config, "snapshots", "--store", store,
                                              "--json").json()["snapshots"])  # fmt: skip
    listed = custode("--config", config, "snapshots", "--store", store, "--repositories",
                     env=WIDE)  # fmt: skip
    assert listed.code == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()[2:-1]]
    assert names == ["fork.git", "moved.git"]
    assert listed.stdout.splitlines()[-1].startswith(f"snapshot {latest} of host alpha (")
    assert listed.stdout.rstrip().endswith("): 2 repositories")
    older = custode("--config", config, "snapshots", "--store", store, first[:20], "--json")
    assert older.code == 0, older.stderr
    held = older.json()
    assert held["id"] == first and [r["repository"] for r in held["repositories"]] == [
        "fork.git",
        "org/main.git",
    ]
    assert all(r["root"] == str(root) and r["backup_id"] for r in held["repositories"])
    missing = custode("--config", config, "snapshots", "--store", store, "nosuch")
    assert missing.code == 2 and "list them with custode snapshots" in missing.stderr


def test_the_backup_reports_its_scan_bytes_and_repository_in_hand(
    root: Path, tmp_path: Path
) -> None:
    job = backup_job.BackupJob(store=open_store(str(tmp_path / "store")), host="alpha",
                               recipients=[parse_recipient(_pub(tmp_path))],
                               state_dir=tmp_path / "state", git=Git(),
                               scratch=tmp_path / "scratch", jobs=1)  # fmt: skip
    seen: list[backup_job.Progress] = []
    counts: list[tuple[int, int]] = []
    states = scan([root], Config().discovery).states
    result = backup_job.backup(job, states, status=seen.append,
                               progress=lambda d, t: counts.append((d, t)))  # fmt: skip
    assert not result.failed
    assert counts[0] == (0, 2)  # the total before any repository is done (never "0/?")
    assert seen[0] == backup_job.Progress("backing up", 0, 2)
    # the backup's own scan: new repositories read for the history they share
    comparing = [p for p in seen if p.phase == "comparing"]
    assert [(p.done, p.total, p.current) for p in comparing] == [
        (0, 2, ("fork.git",)),
        (1, 2, ("org/main.git",)),
    ]
    working = [p for p in seen if p.phase == "backing up" and p.current]
    assert {p.current for p in working} == {("fork.git",), ("org/main.git",)}
    assert seen[-1].done == 2 and seen[-1].bytes_added == result.bytes_added > 0
    assert seen[-1].current == ()


@pytest.mark.skipif(not shutil.which("script"), reason="script (util-linux) is not installed")
def test_the_backup_bar_on_a_terminal_shows_the_phase_and_bytes(
    root: Path, config: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    for n in range(4):  # enough to be drawn at least once
        run_git(None, "clone", "-q", "--bare", "--no-local", root / "org" / "main.git",
                root / f"copy{n}.git")  # fmt: skip
    args = ["--config", config, "backup", root, "--store", tmp_path / "store", "--jobs", "1"]
    proc = on_terminal(args, isolated_env, columns=200)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"backing up, [\d.]+ [KMG]?i?B added", proc.stdout), proc.stdout
    assert "/6" in proc.stdout and "0/?" not in proc.stdout
