import json
import multiprocessing
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from custode.errors import EXIT_CODES_SEE, IntegrityError, StateError, StateUnusableError
from custode.records import problems as stateproblems
from custode.records.audit import GENESIS, NEW_LOG, REDACTED, AuditLog, entry_hash
from custode.records.state import StateDB


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "state" / "audit.jsonl")


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append("maintain.repack", f"/srv/git/r{i}.git", {"loose_objects": i})


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines(keepends=True)


def _write(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(lines))


# -- appending and reading -----------------------------------------------------------


def test_entries_are_canonical_hash_chained_lines(log: AuditLog) -> None:
    first = log.append("maintain.repack", "/srv/git/a.git", {"b": 2, "a": [1, (2, 3)]})
    second = log.append("backup.create", "s3://bucket/host", None)
    lines = _lines(log)
    assert len(lines) == 2
    for line, entry in zip(lines, (first, second), strict=True):
        fields = json.loads(line)
        assert line == json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n"
        assert fields["hash"] == entry_hash(fields) == entry.hash
        assert set(fields) == {
            "seq", "time", "host", "user", "pid", "action", "target", "details", "prev", "hash"
        }  # fmt: skip
    assert (first.seq, first.prev) == (1, GENESIS)
    assert (second.seq, second.prev) == (2, first.hash)
    assert first.details == {"a": [1, [2, 3]], "b": 2}
    assert second.details == {}
    assert first.time.endswith("+00:00")
    assert first.pid == os.getpid()
    assert list(log.entries()) == [first, second]
    assert json.loads(log.head_path.read_text()) == {
        "seq": 2,
        "hash": second.hash,
        "anchored": True,
    }


def test_verify_ok(log: AuditLog) -> None:
    _fill(log, 5)
    report = log.verify()
    assert report.ok, report.problems
    assert report.entries == 5


def test_missing_log_is_an_empty_log(log: AuditLog) -> None:
    report = log.verify()
    assert (report.ok, report.entries) == (True, 0)
    assert list(log.entries()) == []
    assert not log.path.parent.exists()  # reading creates nothing


def test_files_are_private(log: AuditLog) -> None:
    _fill(log, 1)
    for path in (log.path, log.head_path, log.lock_path):
        assert path.stat().st_mode & 0o777 == 0o600
    assert log.path.parent.stat().st_mode & 0o777 == 0o700


def test_secrets_are_redacted_at_any_depth(log: AuditLog) -> None:
    entry = log.append(
        "backup.create",
        "s3://bucket",
        {
            "password": "hunter2",
            "S3_SECRET_ACCESS_KEY": "abc",
            "nested": {"api_token": "t", "keep": 7, "list": [{"identity": "AGE-SECRET-KEY-1"}]},
            "repository": "/srv/git/a.git",
        },
    )
    assert entry.details == {
        "password": REDACTED,
        "S3_SECRET_ACCESS_KEY": REDACTED,
        "nested": {"api_token": REDACTED, "keep": 7, "list": [{"identity": REDACTED}]},
        "repository": "/srv/git/a.git",
    }
    text = log.path.read_text()
    assert "hunter2" not in text
    assert "AGE-SECRET-KEY" not in text
    assert log.verify().ok


def test_details_must_be_json(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        log.append("x", "y", {"ratio": float("nan")})
    assert not log.path.exists() or log.path.read_text() == ""


def test_appends_from_threads_chain(log: AuditLog) -> None:
    def work(t: int) -> None:
        for i in range(25):
            log.append("thread", f"t{t}", {"i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = log.verify()
    assert report.ok, report.problems
    assert [e.seq for e in log.entries()] == list(range(1, 101))


def _appender(path: str, worker: int, count: int, start: threading.Barrier) -> None:
    log = AuditLog(Path(path))
    start.wait()
    for i in range(count):
        log.append("test.concurrent", f"worker{worker}", {"i": i})


def test_appends_from_processes_chain(log: AuditLog) -> None:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_appender, args=(str(log.path), w, 50, start)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    report = log.verify()
    assert report.ok, report.problems
    assert report.entries == 200
    entries = list(log.entries())
    assert [e.seq for e in entries] == list(range(1, 201))
    for w in range(4):  # each worker's entries in its own order, none lost
        mine = [e.details["i"] for e in entries if e.target == f"worker{w}"]
        assert mine == list(range(50))


# -- tampering -----------------------------------------------------------------------


def test_edited_field_is_detected(log: AuditLog) -> None:
    _fill(log, 5)
    lines = _lines(log)
    lines[2] = lines[2].replace("/srv/git/r2.git", "/srv/git/other.git")
    _write(log, lines)
    assert log.verify().problems == ["line 3: entry edited (hash mismatch)"]


def test_added_field_is_an_edit(log: AuditLog) -> None:
    _fill(log, 3)
    lines = _lines(log)
    fields = json.loads(lines[1])
    fields["note"] = "harmless?"
    lines[1] = json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n"
    _write(log, lines)
    assert log.verify().problems == ["line 2: entry edited (hash mismatch)"]


def test_edit_with_recomputed_hash_breaks_the_chain(log: AuditLog) -> None:
    _fill(log, 5)
    lines = _lines(log)
    fields = json.loads(lines[2])
    fields["target"] = "/srv/git/other.git"
    fields["hash"] = entry_hash(fields)
    lines[2] = json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n"
    _write(log, lines)
    assert log.verify().problems == [
        "line 4: chain broken: prev does not match line 3 (entry removed or reordered)"
    ]


def test_deleted_middle_line_is_detected(log: AuditLog) -> None:
    _fill(log, 5)
    lines = _lines(log)
    del lines[2]
    _write(log, lines)
    assert log.verify().problems == [
        "line 3: seq 4 follows 2 (entry removed)",
        "line 3: chain broken: prev does not match line 2 (entry removed or reordered)",
    ]


def test_deleted_first_line_is_detected(log: AuditLog) -> None:
    _fill(log, 3)
    _write(log, _lines(log)[1:])
    assert log.verify().problems == [
        "line 1: seq 2 follows 0 (entry removed)",
        "line 1: chain broken: prev does not match the start of the log "
        "(entry removed or reordered)",
    ]


def test_swapped_lines_are_detected(log: AuditLog) -> None:
    _fill(log, 5)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    problems = log.verify().problems
    assert "line 2: seq 3 follows 1 (entry removed)" in problems
    assert "line 3: seq 2 follows 3 (entry duplicated or reordered)" in problems
    assert any(p.startswith("line 2: chain broken") for p in problems)
    assert any(p.startswith("line 3: chain broken") for p in problems)


@pytest.mark.parametrize("removed", [1, 3])
def test_deleted_last_lines_are_detected_by_the_head(log: AuditLog, removed: int) -> None:
    _fill(log, 6)
    _write(log, _lines(log)[:-removed])
    assert log.verify().problems == [
        f"log ends at seq {6 - removed} but the head file records seq 6 "
        "(entries removed from the end)"
    ]


def test_deleted_log_with_head_is_detected(log: AuditLog) -> None:
    _fill(log, 2)
    log.path.unlink()
    assert log.verify().problems == ["the log is missing or empty but the head file records seq 2"]


def test_truncated_mid_line_is_detected(log: AuditLog) -> None:
    _fill(log, 4)
    data = log.path.read_bytes()
    log.path.write_bytes(data[: len(data) - 40])
    assert log.verify().problems == [
        "line 4: incomplete last line (truncated write)",
        "log ends at seq 3 but the head file records seq 4 (entries removed from the end)",
    ]


def test_garbage_line_is_detected(log: AuditLog) -> None:
    _fill(log, 4)
    lines = _lines(log)
    lines.insert(2, "\x00\x00garbage\n")
    _write(log, lines)
    report = log.verify()
    assert report.problems == ["line 3: not valid JSON"]
    assert report.entries == 5


def test_json_that_is_not_an_entry_is_detected(log: AuditLog) -> None:
    _fill(log, 2)
    _write(log, [*_lines(log), '{"seq": 3}\n', "[1, 2]\n"])
    problems = log.verify().problems
    assert problems[0].startswith("line 3: not an audit entry (missing time, host")
    assert problems[1] == "line 4: not an audit entry (not a JSON object)"


def test_non_finite_number_is_an_edit(log: AuditLog) -> None:
    _fill(log, 2)
    lines = _lines(log)
    lines[1] = lines[1].replace('"loose_objects":1', '"loose_objects":NaN')
    _write(log, lines)
    assert log.verify().problems == ["line 2: entry edited (hash mismatch)"]


def test_unusable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    log = AuditLog(tmp_path / "state" / "audit.jsonl")
    with pytest.raises(StateError, match=r"cannot append to audit log .*audit\.jsonl: .*; check"):
        log.append("x", "y")


def test_edited_head_file_is_detected(log: AuditLog) -> None:
    _fill(log, 4)
    head = json.loads(log.head_path.read_text())
    log.head_path.write_text(json.dumps({**head, "hash": "f" * 64}))
    assert log.verify().problems == [
        "the head file records another hash for seq 4, the last entry "
        "(last entry replaced, or head file edited)"
    ]
    log.head_path.write_text(json.dumps({"seq": 2, "hash": head["hash"]}))
    assert log.verify().problems == [
        "log ends at seq 4 but the head file records seq 2 (head file edited)"
    ]
    log.head_path.write_text("nonsense")
    assert log.verify().problems == ["the head file audit.jsonl.head is damaged (JSONDecodeError)"]
    log.head_path.unlink()
    assert log.verify().problems == ["the head file is missing (log ends at seq 4)"]


def test_head_one_behind_after_a_crash_is_accepted_and_repaired(log: AuditLog) -> None:
    _fill(log, 3)
    entries = list(log.entries())
    # as if the process died after writing entry 3 but before replacing the head
    log.head_path.write_text(json.dumps({"seq": 2, "hash": entries[1].hash}))
    assert log.verify().ok
    log.append("after", "crash")
    assert json.loads(log.head_path.read_text())["seq"] == 4
    assert log.verify().ok
    # and a first entry whose head was never written
    other = AuditLog(log.path.with_name("other.jsonl"))
    other.append("first", "x")
    other.head_path.unlink()
    assert other.verify().ok


# -- append refuses to extend a log it cannot trust ----------------------------------


def test_append_refuses_after_truncation(log: AuditLog) -> None:
    _fill(log, 4)
    _write(log, _lines(log)[:-2])
    with pytest.raises(IntegrityError, match=r"will not be appended to: log ends at seq 2"):
        log.append("x", "y")
    assert len(_lines(log)) == 2  # nothing written, the evidence kept
    assert json.loads(log.head_path.read_text())["seq"] == 4


def test_append_refuses_after_a_damaged_last_line(log: AuditLog) -> None:
    _fill(log, 2)
    with log.path.open("a") as f:
        f.write('{"seq": 3, "tim')
    with pytest.raises(IntegrityError, match=r"its last line is damaged") as info:
        log.append("x", "y")
    assert "moving audit.jsonl and audit.jsonl.head aside" in str(info.value)


def test_entries_reports_a_bad_line(log: AuditLog) -> None:
    _fill(log, 2)
    _write(log, [_lines(log)[0], "oops\n"])
    with pytest.raises(IntegrityError, match=r"line 2: .*; run custode audit verify"):
        list(log.entries())


def test_a_long_last_line_is_read_back(log: AuditLog) -> None:
    log.append("big", "x", {"blob": "x" * 20_000})
    entry = log.append("after", "big")
    assert entry.seq == 2
    assert log.verify().ok


# -- command line --------------------------------------------------------------------


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CUSTODE_"))}
    (tmp_path / "config").mkdir(exist_ok=True)
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    return subprocess.run(
        [sys.executable, "-m", "custode", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _cli_log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "state" / "custode" / "audit.jsonl")


def test_cli_verify_ok(tmp_path: Path) -> None:
    path = _cli_log(tmp_path).path
    proc = _run(tmp_path, "audit", "verify")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f"audit log {path}: 0 entries, chain intact\n",
        "",
    )
    _fill(_cli_log(tmp_path), 3)
    proc = _run(tmp_path, "audit", "verify")
    assert (proc.returncode, proc.stdout) == (0, f"audit log {path}: 3 entries, chain intact\n")
    proc = _run(tmp_path, "audit", "verify", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {
        "path": str(path),
        "entries": 3,
        "ok": True,
        "problems": [],
        "notes": [],
    }


def test_cli_verify_tampered_exits_6(tmp_path: Path) -> None:
    log = _cli_log(tmp_path)
    _fill(log, 4)
    lines = _lines(log)
    lines[1] = lines[1].replace("/srv/git/r1.git", "/srv/git/x.git")
    _write(log, lines[:-1])
    proc = _run(tmp_path, "audit", "verify")
    assert proc.returncode == 6
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "line 2: entry edited (hash mismatch)",
        "log ends at seq 3 but the head file records seq 4 (entries removed from the end)",
        f"custode: audit log {log.path} failed verification: 2 problems; the log was edited, "
        "damaged or lost; keep a copy for investigation, then start a new log by moving "
        "audit.jsonl and audit.jsonl.head aside",
    ]
    proc = _run(tmp_path, "audit", "verify", "--json")
    assert proc.returncode == 6
    report = json.loads(proc.stdout)
    assert (report["ok"], report["entries"], len(report["problems"])) == (False, 3, 2)


def test_cli_show(tmp_path: Path) -> None:
    proc = _run(tmp_path, "audit", "show")
    assert proc.returncode == 0
    assert proc.stdout == f"audit log {_cli_log(tmp_path).path} is empty\n"
    _fill(_cli_log(tmp_path), 5)
    proc = _run(tmp_path, "audit", "show", "--last", "2")
    assert proc.returncode == 0, proc.stderr
    assert "maintain.repack" in proc.stdout
    assert "/srv/git/r4.git" in proc.stdout
    assert "/srv/git/r3.git" in proc.stdout
    assert "/srv/git/r2.git" not in proc.stdout
    proc = _run(tmp_path, "audit", "show", "--json", "--last", "3")
    assert [e["seq"] for e in json.loads(proc.stdout)] == [3, 4, 5]


def test_cli_show_bad_line_exits_6(tmp_path: Path) -> None:
    log = _cli_log(tmp_path)
    _fill(log, 1)
    _write(log, [*_lines(log), "garbage\n"])
    proc = _run(tmp_path, "audit", "show")
    assert proc.returncode == 6
    assert proc.stderr.startswith(f"custode: audit log {log.path} line 2: ")


@pytest.mark.parametrize("args", [("audit",), ("audit", "verify"), ("audit", "show")])
def test_cli_help_points_to_the_exit_statuses(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = _run(tmp_path, *args, "--help")
    assert proc.returncode == 0
    assert EXIT_CODES_SEE in proc.stdout


# -- the anchor in the state database --------------------------------------------------


def _anchor(log: AuditLog) -> tuple[int, str] | None:
    with StateDB.open(log.anchor_path) as db:
        anchor = db.audit_anchor(log.path.name)
    return (anchor.seq, anchor.hash) if anchor else None


def _head(log: AuditLog, seq: int, digest: str) -> None:
    log.head_path.write_text(json.dumps({"seq": seq, "hash": digest, "anchored": True}))


def test_every_append_anchors_the_head_in_the_state_database(log: AuditLog) -> None:
    _fill(log, 3)
    last = list(log.entries())[-1]
    assert log.anchor_path == log.path.parent / "state.db"
    assert _anchor(log) == (3, last.hash)


def test_a_log_deleted_with_its_head_is_detected_by_the_anchor(log: AuditLog) -> None:
    _fill(log, 3)
    log.path.unlink()
    log.head_path.unlink()
    report = log.verify()
    assert not report.ok and report.entries == 0
    assert report.problems == [
        f"the log is missing but {log.anchor_path} anchors 3 entries (the log and its head "
        "file were deleted or moved aside)"
    ]


def test_a_log_cut_short_with_a_matching_head_is_detected_by_the_anchor(log: AuditLog) -> None:
    _fill(log, 4)
    kept = _lines(log)[:2]
    _write(log, kept)
    _head(log, 2, json.loads(kept[-1])["hash"])  # the head file rewritten to agree
    assert log.verify().problems == [
        f"log ends at seq 2 but {log.anchor_path} anchors seq 4 (entries removed from the end)"
    ]
    with pytest.raises(IntegrityError, match=r"will not be appended to: log ends at seq 2 but "):
        log.append("x", "y")
    assert len(_lines(log)) == 2


def test_a_replaced_log_is_detected_by_the_anchor(log: AuditLog, tmp_path: Path) -> None:
    _fill(log, 3)
    other = AuditLog(tmp_path / "other" / "audit.jsonl")
    _fill(other, 3)  # a consistent log of the same length, from elsewhere
    log.path.write_bytes(other.path.read_bytes())
    log.head_path.write_bytes(other.head_path.read_bytes())
    assert log.verify().problems == [
        f"the last entry, seq 3, is not the one anchored in {log.anchor_path} (replaced)"
    ]


def test_a_deleted_state_database_is_an_anchor_gone_not_an_intact_log(log: AuditLog) -> None:
    _fill(log, 2)
    log.anchor_path.unlink()
    report = log.verify()
    assert report.problems == [
        f"the log's anchor in {log.anchor_path} is gone (the state database was deleted or "
        "replaced): a log cut short can no longer be told; the next append anchors it again"
    ]
    log.append("x", "y")
    assert log.verify().ok and _anchor(log) == (3, list(log.entries())[-1].hash)


def test_a_log_from_before_anchoring_is_not_blamed(log: AuditLog) -> None:
    _fill(log, 2)
    log.anchor_path.unlink()
    last = list(log.entries())[-1]
    log.head_path.write_text(json.dumps({"seq": 2, "hash": last.hash}))  # an old head file
    assert log.verify().ok
    log.append("x", "y")
    assert _anchor(log) is not None and _anchor(log)[0] == 3  # type: ignore[index]


def test_a_new_log_after_a_lost_one_keeps_the_loss_on_record(log: AuditLog) -> None:
    _fill(log, 5)
    lost_hash = list(log.entries())[-1].hash
    log.path.unlink()
    log.head_path.unlink()
    entry = log.append("backup", "file:///srv/backups")
    first, second = list(log.entries())
    assert (first.seq, first.action, second) == (1, NEW_LOG, entry)
    assert first.details["lost_log"]["seq"] == 5 and first.details["lost_log"]["hash"] == lost_hash
    report = log.verify()
    assert report.ok and report.notes == [
        "this log began where an earlier one of 5 entries was lost or moved aside "
        "(entry 1, audit.new-log, records its anchor)"
    ]


def test_a_busy_state_database_costs_the_anchor_not_the_entry(
    log: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    _fill(log, 1)
    other = sqlite3.connect(log.anchor_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    before = stateproblems.busy_timeout()
    stateproblems.set_busy_timeout(0.2)
    mark = stateproblems.problem_mark()
    try:
        busy = AuditLog(log.path)
        _fill(busy, 3)  # one wait, then no more anchoring by this instance
    finally:
        stateproblems.set_busy_timeout(before)
        other.execute("ROLLBACK")
        other.close()
    assert [e.seq for e in log.entries()] == [1, 2, 3, 4]
    assert caplog.text.count("its head is not anchored: state database ") == 1
    assert len(stateproblems.problems_since(mark)) == 1
    assert _anchor(log) == (1, next(iter(log.entries())).hash)  # behind is fine
    assert log.verify().ok


@pytest.mark.parametrize("target", ["directory", "log", "head"])
def test_an_audit_log_others_can_write_is_refused_with_the_fix(log: AuditLog, target: str) -> None:
    _fill(log, 2)
    bad = {"directory": log.path.parent, "log": log.path, "head": log.head_path}[target]
    bad.chmod(bad.stat().st_mode | 0o022)
    mode = f"{bad.stat().st_mode & 0o7777:04o}"
    fix = f"is writable by group or others (mode {mode}): anyone who can write it decides "
    with pytest.raises(StateUnusableError, match=re.escape(fix)):
        log.verify()
    with pytest.raises(StateUnusableError, match=re.escape(f"fix: run 'chmod go-w {bad}'")):
        log.append("x", "y")
    assert len(_lines(log)) == 2
