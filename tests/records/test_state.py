import multiprocessing
import re
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import custode
from custode.errors import ExitCode, StateUnusableError
from custode.records import problems as stateproblems
from custode.records.schema import MIGRATIONS
from custode.records.state import (
    Observation,
    RepositoryResult,
    ResultTotals,
    StateDB,
    StateError,
)


def _obs(i: int, **kw: object) -> Observation:
    fields: dict[str, object] = {
        "repository": f"/srv/git/r{i}.git",
        "root": "/srv/git",
        "verdict": "ok",
        "loose_objects": i,
        "loose_objects_bytes": i * 100,
        "packs": 1 + i % 7,
        "pack_bytes": i * 1000,
        "loose_refs": i % 13,
        "size_bytes": i * 1100,
        "fingerprint": f"fp{i}",
    }
    return Observation(**{**fields, **kw})  # type: ignore[arg-type]


def test_open_creates_private_dir_and_migrates_from_empty(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.db"
    with StateDB.open(path) as db:
        assert db.schema_version == len(MIGRATIONS) == 9
        tables = {
            r[0] for r in db._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {"runs", "repository_results", "observations"} <= tables
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB.open(path) as db:
        run = db.begin_run("status")
        db.finish_run(run, "ok", {"repositories": 3})
    for _ in range(3):
        with StateDB.open(path) as db:
            assert db.schema_version == len(MIGRATIONS)
            [r] = db.runs()
            assert (r.id, r.command, r.status, r.summary) == (
                run,
                "status",
                "ok",
                {"repositories": 3},
            )
            assert r.finished_at is not None
            assert r.finished_at >= r.started_at


def test_wal_mode_is_on(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.commit()
    conn.close()
    newer = len(MIGRATIONS) + 5
    expected = (
        f"state database {path} was written by a newer custode "
        f"(schema {newer} > {len(MIGRATIONS)}); upgrade custode"
    )
    with pytest.raises(StateError) as info:
        StateDB.open(path)
    assert str(info.value) == expected


def test_a_file_that_is_not_a_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(StateUnusableError) as info:
        StateDB.open(path)
    message = str(info.value)
    assert message.startswith(f"state database {path} is damaged: file is not a database")
    assert message.endswith(
        f"fix: move it aside ('mv {path} {path}.damaged'), custode starts a new one"
    )
    assert "\n" not in message
    assert info.value.exit_code == ExitCode.STATE
    assert path.read_bytes() == b"this is not sqlite\n" * 100  # left untouched


def test_finish_unknown_run_is_an_error(tmp_path: Path) -> None:
    with StateDB.open(tmp_path / "state.db") as db, pytest.raises(StateError, match="no run 42"):
        db.finish_run(42, "ok", {})


def test_observations_and_results_round_trip(tmp_path: Path) -> None:
    with StateDB.open(tmp_path / "state.db") as db:
        run = db.begin_run("maintain")
        rows = [_obs(i) for i in range(5)]
        db.record_observations(run, rows)
        db.record_results(
            run,
            [RepositoryResult("/srv/git/a.git", "/srv/git", "repack", "done", "t", 1.5, {"n": 1})],
        )
        assert db.latest_observations() == {(o.root, o.repository): o for o in rows}
        [result] = db._conn.execute(
            "SELECT run_id, task, outcome, duration_s, details FROM repository_results"
        ).fetchall()
        assert result == (run, "repack", "done", 1.5, '{"n":1}')


def test_ten_thousand_observations_in_one_call(tmp_path: Path) -> None:
    with StateDB.open(tmp_path / "state.db") as db:
        run = db.begin_run("status")
        rows = [_obs(i) for i in range(10_000)]
        db.record_observations(run, rows)
        assert db._conn.execute("SELECT count(*) FROM observations").fetchone()[0] == 10_000
        assert db.latest_observations() == {(o.root, o.repository): o for o in rows}


def test_a_failed_batch_records_nothing(tmp_path: Path) -> None:
    def rows() -> object:
        yield _obs(1)
        raise RuntimeError("collector failed")

    with StateDB.open(tmp_path / "state.db") as db:
        run = db.begin_run("status")
        with pytest.raises(RuntimeError):
            db.record_observations(run, rows())  # type: ignore[arg-type]
        assert db.latest_observations() == {}
        second = _obs(2)
        db.record_observations(run, [second])  # the connection is still usable
        assert db.latest_observations() == {(second.root, second.repository): second}


def _writer(path: str, worker: int, runs: int, start: threading.Barrier) -> None:
    start.wait()
    for i in range(runs):
        with StateDB.open(Path(path)) as db:
            run = db.begin_run(f"worker{worker}")
            db.record_observations(run, [_obs(worker * 1000 + i * 10 + j) for j in range(10)])
            db.finish_run(run, "ok", {"i": i})


def test_concurrent_writers_from_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "state.db"  # racing on creation and migration too
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(str(path), w, 20, start)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with StateDB.open(path) as db:
        runs = db.runs(limit=1000)
        assert len(runs) == 80
        assert all(r.status == "ok" for r in runs)
        assert len(db.latest_observations()) == 800
        assert db.schema_version == len(MIGRATIONS)


def test_open_waits_for_another_process_switching_a_new_database_to_wal(
    tmp_path: Path,
) -> None:
    # A racing opener mid-switch holds RESERVED on the still rollback-mode file. SQLite
    # fails our SHARED -> RESERVED upgrade at once, ignoring the busy timeout; open must wait.
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, args=("COMMIT",))
    release.start()
    try:
        with StateDB.open(path) as db:
            assert db.schema_version == len(MIGRATIONS)
            assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        other.close()


def test_unusable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    with pytest.raises(StateError, match=r"cannot use state database .*state\.db: .*; fix: check"):
        StateDB.open(tmp_path / "state" / "state.db")


def test_latest_fingerprints_and_forget_before(tmp_path: Path) -> None:
    long_ago = "2020-01-01T00:00:00+00:00"
    with StateDB.open(tmp_path / "state.db") as db:
        old = db.begin_run("status")
        db.record_observations(
            old, [_obs(1, fingerprint="f1", observed_at=long_ago), _obs(2, observed_at=long_ago)]
        )
        db._conn.execute("UPDATE runs SET started_at = ? WHERE id = ?", (long_ago, old))
        new = db.begin_run("status")
        db.record_observations(new, [_obs(1, fingerprint="f2")])
        latest = {("/srv/git", "/srv/git/r1.git"): ("f2", "ok"),
                  ("/srv/git", "/srv/git/r2.git"): ("fp2", "ok")}  # fmt: skip
        assert db.latest_fingerprints() == latest
        db.forget_before("2021-01-01T00:00:00+00:00")
        kept = set(db._conn.execute("SELECT repository, fingerprint FROM observations"))
        # r1's old observation goes; r2's is its latest, so it and its run stay
        assert kept == {("/srv/git/r1.git", "f2"), ("/srv/git/r2.git", "fp2")}
        assert db.latest_fingerprints() == latest
        assert [r.id for r in db.runs()] == [new, old]
        db.record_observations(new, [_obs(2, fingerprint="g2")])
        db.forget_before("2021-01-01T00:00:00+00:00")
        assert [r.id for r in db.runs()] == [new]  # nothing holds the old run any more


@pytest.fixture
def short_busy_timeout() -> Iterator[None]:
    before = stateproblems.busy_timeout()
    stateproblems.set_busy_timeout(0.3)
    yield
    stateproblems.set_busy_timeout(before)


def test_a_busy_database_is_one_line_with_the_fix_and_waits_once(
    tmp_path: Path, short_busy_timeout: None
) -> None:
    path = tmp_path / "state.db"
    StateDB.open(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process's transaction that does not end
    mark = stateproblems.problem_mark()
    try:
        with StateDB.open(path) as db:  # reading still works: WAL
            assert db.runs() == []
            with pytest.raises(StateUnusableError) as info:
                db.begin_run("check")
        assert str(info.value) == (
            f"state database {path} is busy (another custode or a sqlite tool holds it): "
            f"database is locked after 0.3s; fix: let the holder finish (find it with "
            f"'fuser {path}') or raise state.busy_timeout"
        )
        assert info.value.exit_code == ExitCode.STATE
        assert stateproblems.problems_since(mark) == [str(info.value)]
        assert stateproblems.busy_timeout(path) == 0.3  # until it was written again: not waited on
    finally:
        other.execute("ROLLBACK")
        other.close()
    with StateDB.open(path) as db:
        db.begin_run("check")  # free again
    assert str(path) not in stateproblems._busy


def test_a_damaged_value_is_a_damaged_database_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB.open(path) as db:
        run = db.begin_run("check")
        db._conn.execute("UPDATE runs SET summary = '{' WHERE id = ?", (run,))
        with pytest.raises(StateUnusableError, match=r"^state database .* is damaged: "):
            db.runs()


@pytest.mark.parametrize("target", ["directory", "database", "wal"])
def test_a_state_directory_or_file_others_can_write_is_refused(tmp_path: Path, target: str) -> None:
    path = tmp_path / "state" / "state.db"
    with StateDB.open(path) as db:  # open: the -wal file exists
        db.begin_run("check")
        bad = {"directory": path.parent, "database": path, "wal": Path(f"{path}-wal")}[target]
        bad.chmod(bad.stat().st_mode | 0o002)
        mode = f"{bad.stat().st_mode & 0o7777:04o}"
        with pytest.raises(StateUnusableError) as info:
            StateDB.open(path)
    assert str(info.value).endswith(
        f"is writable by group or others (mode {mode}): anyone who can write it decides "
        f"what custode reads; fix: run 'chmod go-w {bad}'"
    )


def test_a_symlink_in_place_of_the_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.symlink_to("/dev/zero")
    with pytest.raises(StateUnusableError, match="is not a regular file"):
        StateDB.open(path)


def test_the_reads_for_reports_count_and_sum_within_the_window(tmp_path: Path) -> None:
    def result(repo: str, task: str, outcome: str, seconds: float, **details: object) -> Any:
        return RepositoryResult(f"/srv/git/{repo}", "/srv/git", task, outcome, "t", seconds,
                                details)  # fmt: skip

    with StateDB.open(tmp_path / "state.db") as db:
        assert not db.has_records() and db.last_started("maintain") is None
        runs = {}
        for at, rows in {
            "2020-01-01T00:00:00+00:00": [result("a.git", "repack", "ok", 9.0, freed=900)],
            "2026-01-02T00:00:00+00:00": [
                result("a.git", "repack", "ok", 1.0, freed=10),
                result("b.git", "repack", "failed", 2.5, message="boom"),
                result("b.git", "pack_refs", "skipped", 0.5),
            ],
            "2026-01-01T00:00:00+00:00": [result("a.git", "repack", "ok", 4.0, freed=5)],
        }.items():
            runs[at] = db.begin_run("maintain")
            db.record_results(runs[at], rows)
            db.finish_run(runs[at], "ok", {"n": len(rows)})
            db._conn.execute("UPDATE runs SET started_at = ? WHERE id = ?", (at, runs[at]))
        window = ("maintain", "2025-12-31T00:00:00+00:00", "2026-01-03T00:00:00+00:00")
        first, second = runs["2026-01-01T00:00:00+00:00"], runs["2026-01-02T00:00:00+00:00"]

        assert db.has_records() and db.last_started("maintain") == "2026-01-02T00:00:00+00:00"
        assert [r.id for r in db.runs_between(*window[1:])] == [first, second]
        by_run = db.totals_by_run(*window, detail="freed")
        assert list(by_run) == [first, second]  # in the order the runs started
        assert by_run[second] == ResultTotals(3, 1, 1, 1, 4.0, 2.5, 10)
        by_task = db.totals_by_task(*window)
        assert by_task["repack"] == ResultTotals(3, 2, 1, 0, 7.5, 4.0, 0)
        assert by_task["pack_refs"].skipped == 1
        by_repo = db.totals_by_repository(*window, task="repack", detail="freed")
        assert by_repo[("/srv/git", "/srv/git/a.git")] == ResultTotals(2, 2, 0, 0, 5.0, 4.0, 15)
        slowest = db.results_between(*window, task="repack", order="slowest", limit=2)
        assert [(at[:10], r.duration_s) for at, r in slowest] == [("2026-01-01", 4.0),
                                                                   ("2026-01-02", 2.5)]  # fmt: skip
        [(_, failed)] = db.results_between(*window, task="repack", order="newest", limit=9,
                                           failing=True)  # fmt: skip
        assert failed.details == {"message": "boom"} and failed.repository == "/srv/git/b.git"
        assert db.count_slower(*window, task="repack", seconds=2.0) == 2


def test_only_the_records_package_reaches_into_the_database_connection() -> None:
    src = Path(custode.__file__).parent
    records = src / "records"
    reaching = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if records not in p.parents and re.search(r"\._conn\b", p.read_text())
    ]
    assert reaching == []
