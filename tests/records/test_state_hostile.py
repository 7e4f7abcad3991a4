"""custode's own state as hostile input: a history database held by another process or cut
short, a scan cache planted or damaged, a state directory others can write, an audit log
deleted with its head file. Each costs what needs it, with one line naming the file and
the fix, never the night's backup (issue 12, "State and records")."""

import json
import os
import pickle
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from custode.scan.cache import FORMAT
from fixtures.builders import Fleet
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


@pytest.fixture
def root(tmp_path: Path, fleet: Fleet) -> Path:
    root = tmp_path / "root"
    for repo in (fleet.packed, fleet.loose):
        shutil.copytree(repo, root / repo.name, symlinks=True)
    return root


@pytest.fixture
def state_dir(isolated_env: dict[str, str]) -> Path:
    return Path(isolated_env["XDG_STATE_HOME"]) / "custode"


@pytest.fixture
def quick(tmp_path: Path) -> dict[str, str]:
    """A config that waits 1 s, not 30, for a busy history database."""
    config = tmp_path / "config.toml"
    config.write_text('[state]\nbusy_timeout = "1s"\n')
    return {"CUSTODE_CONFIG": str(config)}


def stages(result: CliResult) -> dict[str, dict]:
    return {s["name"]: s for s in result.json()["stages"]}


@pytest.fixture
def held(state_dir: Path, custode: Run, root: Path, quick: dict[str, str]) -> Iterator[None]:
    """The history database exists, and another connection holds its write lock."""
    assert custode("status", root, env=quick).code == 0  # creates it
    other = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_busy_history_costs_maintenance_and_the_record_not_the_backup(
    custode: Run, root: Path, quick: dict[str, str], held: None
) -> None:
    result = custode("run", "--json", "--drill", "1", root, env=quick)
    assert "internal error" not in result.stderr
    assert result.code == 7, result.stderr
    done = stages(result)
    assert list(done) == ["check", "maintain", "backup", "verify", "drill", "forget",
                          "report", "record"]  # fmt: skip
    assert done["check"]["outcome"] == "ok"
    maintain = done["maintain"]
    assert maintain["outcome"] == "failed" and maintain["code"] == 7
    assert maintain["message"].startswith("not run: the check's verdicts are not in the history")
    assert done["backup"]["outcome"] == "ok" and done["backup"]["summary"]["new"] == 2
    assert done["verify"]["outcome"] == "ok" and done["drill"]["outcome"] == "ok"
    record = done["record"]["message"]
    assert record.startswith(
        "check, backup, verify, drill, forget could not use custode's records: "
    )
    assert " is busy (another custode or a sqlite tool holds it): " in record
    assert "; fix: " in record and "state.busy_timeout" in record
    assert "custode: maintain: not run: " in result.stderr
    assert custode("snapshots", "--json").json()["snapshots"]  # the night's backup is there


def test_the_last_line_names_the_stages_that_failed(
    custode: Run, root: Path, quick: dict[str, str], held: None
) -> None:
    result = custode("run", "--drill", "0", root, env=quick)
    assert result.code == 7
    assert "run: exit 7 (maintain, record failed) in " in result.stdout


def test_a_truncated_history_fails_the_report_and_is_not_a_failed_verification(
    custode: Run, root: Path, state_dir: Path
) -> None:
    assert custode("run", "--drill", "0", root).code == 0
    db = state_dir / "state.db"
    for name in ("state.db-wal", "state.db-shm"):
        (state_dir / name).unlink(missing_ok=True)
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    result = custode("run", "--json", "--drill", "0", root)
    assert result.code == 7, result.stderr  # custode's own state, not 6 "verification failed"
    done = stages(result)
    assert done["report"]["outcome"] == "failed" and done["report"]["code"] == 7
    assert done["report"]["message"] == (
        f"state database {db} is damaged: database disk image is malformed; fix: move it "
        f"aside ('mv {db} {db}.damaged'), custode starts a new one"
    )
    assert done["verify"]["outcome"] == "ok" and done["backup"]["outcome"] == "ok"
    assert done["maintain"]["code"] == 7  # the check's verdicts went nowhere
    assert f"custode: report: state database {db} is damaged" in result.stderr
    # the fix the message gives works
    db.rename(db.with_name("state.db.damaged"))
    assert custode("run", "--drill", "0", root).code == 0


class _Planted:
    """Unpickling this creates a file: proof that a loaded cache ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_runs_no_code_and_the_cache_is_rebuilt(
    custode: Run, root: Path, state_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    state_dir.mkdir(parents=True, mode=0o700)
    planted = pickle.dumps((4, _Planted(marker)))
    for name in ("scan-cache.pickle", "scan-cache.json"):  # the old name, and the new one
        (state_dir / name).write_bytes(planted)
        (state_dir / name).chmod(0o600)
    # the session's fleet may be seconds old: a repository written within the cache's
    # racy margin (2 s) of the scan is rightly not cached, so age it past that margin
    when = time.time() - 60
    for path in [root, *root.rglob("*")]:
        os.utime(path, (when, when), follow_symlinks=False)
    result = custode("status", "--json", root)
    assert result.code == 0, result.stderr
    assert not marker.exists()
    cache = json.loads((state_dir / "scan-cache.json").read_bytes())
    assert cache["format"] == FORMAT and len(cache["entries"]) == 2
    again = custode("status", "--json", root)
    assert again.json()["repositories"] == result.json()["repositories"]


@pytest.mark.parametrize("what", ["directory", "database", "audit log"])
def test_a_state_directory_others_can_write_is_refused_with_the_fix(
    custode: Run, root: Path, state_dir: Path, what: str
) -> None:
    assert custode("run", "--drill", "0", root).code == 0
    path = {"directory": state_dir, "database": state_dir / "state.db",
            "audit log": state_dir / "audit.jsonl"}[what]  # fmt: skip
    path.chmod(path.stat().st_mode | 0o020)
    mode = f"{path.stat().st_mode & 0o7777:04o}"
    label = {"directory": "state directory", "database": "state database file",
             "audit log": "audit log file"}[what]  # fmt: skip
    line = (
        f"{label} {path} is writable by group or others (mode {mode}): anyone who can write "
        f"it decides what custode reads; fix: run 'chmod go-w {path}'"
    )
    verify = custode("audit", "verify")
    report = custode("report")
    if what != "database":
        assert (verify.code, verify.stderr) == (7, f"custode: {line}\n")
    if what != "audit log":
        assert (report.code, report.stderr) == (7, f"custode: {line}\n")
    run = custode("run", "--json", "--drill", "0", root)
    assert run.code == 7
    done = stages(run)
    assert done["backup"]["outcome"] == "ok"  # the backup does not need the history
    assert line in (done["record"]["message"] if what != "audit log" else run.stderr)
    path.chmod(path.stat().st_mode & ~0o020)  # the fix
    assert custode("report").code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_state_file_of_another_user_is_refused_with_the_fix(
    custode: Run, root: Path, state_dir: Path
) -> None:
    assert custode("status", root).code == 0
    db = state_dir / "state.db"
    os.chown(db, 65534, 65534)
    result = custode("report")
    assert result.code == 7
    assert result.stderr.startswith(f"custode: state database file {db} belongs to uid 65534, ")
    assert result.stderr.endswith(f"fix: run 'chown root {db}' or set state.directory to a "
                                  "directory of custode's user\n")  # fmt: skip


def test_an_audit_log_deleted_with_its_head_is_detected(
    custode: Run, root: Path, state_dir: Path
) -> None:
    assert custode("run", "--drill", "0", root).code == 0
    entries = custode("audit", "verify", "--json").json()["entries"]
    assert entries >= 2
    (state_dir / "audit.jsonl").unlink()
    (state_dir / "audit.jsonl.head").unlink()
    result = custode("audit", "verify")
    assert result.code == 6
    assert "chain intact" not in result.stdout
    db = state_dir / "state.db"
    assert result.stderr.startswith(
        f"the log is missing but {db} anchors {entries} entries (the log and its head file "
        "were deleted or moved aside)\n"
    )
    # the next night starts a new log whose first entry keeps the loss on record
    assert custode("backup", root).code == 0
    after = custode("audit", "verify")
    assert after.code == 0, after.stderr
    assert f"this log began where an earlier one of {entries} entries was lost" in after.stdout
    first = json.loads((state_dir / "audit.jsonl").read_text().splitlines()[0])
    assert first["action"] == "audit.new-log" and first["details"]["lost_log"]["seq"] == entries


def test_an_audit_log_whose_anchor_is_gone_is_not_intact(
    custode: Run, root: Path, state_dir: Path
) -> None:
    assert custode("backup", root).code == 0
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (state_dir / name).unlink(missing_ok=True)
    result = custode("audit", "verify")
    assert result.code == 6 and "chain intact" not in result.stdout
    assert result.stderr.startswith(f"the log's anchor in {state_dir / 'state.db'} is gone ")


def test_a_cache_fifo_does_not_hang_the_scan(custode: Run, root: Path, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, mode=0o700)
    os.mkfifo(state_dir / "scan-cache.json", 0o600)
    done: list[CliResult] = []
    worker = threading.Thread(target=lambda: done.append(custode("status", "--json", root)))
    worker.start()
    worker.join(120)
    assert done and done[0].code == 0, "status hung on a FIFO in place of the scan cache"
    assert "scan cache not used: scan cache " in done[0].stderr
    assert "is not a regular file" in done[0].stderr


def test_maintain_without_the_check_verdicts_maintains_nothing(
    custode: Run, root: Path, state_dir: Path
) -> None:
    """Issue 11's rule (no task for a repository in doubt) needs the recorded verdicts:
    a maintain that cannot read them must not repack what a check found corrupt."""
    assert custode("check", root).code == 0  # creates the history
    db = state_dir / "state.db"
    for name in ("state.db-wal", "state.db-shm"):
        (state_dir / name).unlink(missing_ok=True)
    with db.open("r+b") as f:
        f.write(b"this is no sqlite database" * 8)  # its header and first page overwritten
    before = sorted(p.name for p in (root / "loose.git" / "objects").iterdir())
    result = custode("maintain", root)
    assert result.code == 7, result.stderr
    assert "not maintaining anything: the last check's verdicts cannot be read" in result.stderr
    assert f"state database {db} is " in result.stderr and "; fix: " in result.stderr
    assert sorted(p.name for p in (root / "loose.git" / "objects").iterdir()) == before
    dry = custode("maintain", "--dry-run", root)
    assert dry.code == 0 and "planning every repository afresh" in dry.stderr
