"""``custode report`` end to end: real history from the real commands on real repositories,
the same facts in JSON, Markdown and HTML, an HTML file that needs no network and renders
in headless Chromium; plus the model's windows and targets on a hand-made history."""

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from report_pages import plain, render_in_chromium

from custode.records.state import Observation, RepositoryResult, StateDB, utcnow
from custode.report.history import build
from custode.report.render import fmt_bytes, fmt_ratio, fmt_seconds, render
from fixtures.builders import Fleet
from fixtures.cli import CliResult

Run = Callable[..., CliResult]
RESOURCE = re.compile(r"https?://|<script|<link|<iframe|<img|@import|url\(", re.IGNORECASE)


def state_db(env: dict[str, str]) -> Path:
    return Path(env["XDG_STATE_HOME"]) / "custode" / "state.db"


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
@pytest.mark.slow
def test_report_from_real_history_carries_the_same_facts_in_every_format(
    custode: Run, fleet_copy: Fleet, tmp_path: Path
) -> None:
    root, store = fleet_copy.root, tmp_path / "store"
    status = custode("status", "--json", root)
    assert status.code == 0, status.stderr
    repositories = status.json()["summary"]["repositories"]
    maintain = custode("maintain", "--json", root)
    assert maintain.code == 0, maintain.stderr
    freed = [r["reclaimed_bytes"] for r in maintain.json()["repositories"] if r.get("tasks")]
    reclaimed, grown = sum(max(0, f) for f in freed), sum(max(0, -f) for f in freed)
    assert reclaimed - grown == maintain.json()["summary"]["reclaimed_bytes"] and reclaimed > 0
    backup = custode("backup", "--json", "--store", store, root)
    assert backup.code == 0, backup.stderr
    backed = backup.json()["summary"]
    drill = custode("verify", "--json", "--store", store, "--level", "drill")
    assert drill.code == 0, drill.stderr
    drilled = drill.json()["summary"]
    # Now damage two repositories: a ref to a missing object, a missing HEAD.
    (fleet_copy.packed / "refs" / "heads" / "dangling").write_text("12" * 20 + "\n")
    (fleet_copy.empty / "HEAD").unlink()
    assert custode("check", root).code == 3
    assert custode("status", root).code == 3
    assert custode("metrics", "--no-probes", root).code == 0  # a host sample

    result = custode("report", "--format", "json", root)
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["schema"] == 2 and not data["empty"]
    assert data["scope"]["roots"] == [str(root)] and not data["scope"]["everything"]
    fleet = data["fleet"]
    assert fleet["repositories"] == repositories
    assert (fleet["broken"], fleet["unobserved"]) == (1, 0)
    problems = {p["repository"]: p for p in data["problems"]}
    assert problems["empty.git"]["verdict"] == "broken"
    assert any(
        "custode status: broken" in r and "HEAD" in r for r in problems["empty.git"]["reasons"]
    )  # the verdict's own reason
    assert any(
        "integrity check failed" in r and "refs/heads/dangling" in r
        for r in problems["packed.git"]["reasons"]
    )
    assert fleet["needing_attention"] == len(data["problems"])
    m = data["maintenance"]
    assert (m["runs"], m["failed"], m["reclaimed_bytes"]) == (1, 0, reclaimed)
    assert m["grown_bytes"] == grown  # what repacks wrote, not taken off what others freed
    assert m["repositories"] == maintain.json()["summary"]["maintained"]
    assert {t["task"] for t in m["tasks"]} >= {"write_commit_graph"}
    assert data["checks"]["failed"] == 2 and data["checks"]["repositories"] == repositories
    b = data["backups"]
    (s,) = b["stores"]
    assert (s["store"], s["runs"], s["bytes_added"]) == (backed["store"], 1, backed["bytes_added"])
    assert s["last_run"]["snapshot"] == backed["snapshot"]
    assert b["fresh"] == repositories and b["stale"] == b["never"] == b["failed"] == 0
    d = data["drills"]
    assert (d["drills"], d["failed"], d["over_target"]) == (drilled["drills"], 0, 0)
    assert d["max_seconds"] == drilled["drill_seconds_max"]
    assert d["target_seconds"] == 300 and d["runs"][0]["within_target"]
    assert data["alerts"]["recorded"] is True and data["alerts"]["counts"] == []
    r = data["resources"]
    assert r["samples"] == 1 and r["target_ratio"] == 0.7 and 0 <= r["cpu_max"] <= 1
    assert {c["command"]: c["runs"] for c in data["runs"]} == {
        "status": 2, "maintain": 1, "backup": 1, "verify": 1, "check": 1
    }  # fmt: skip

    facts = [
        f"{repositories} repositories",
        f"{len(data['problems'])} need attention",
        "empty.git",
        "refs/heads/dangling",
        fmt_bytes(reclaimed),
        fmt_bytes(backed["bytes_added"]),
        backed["snapshot"],
        fmt_seconds(d["max_seconds"]),
        f"{d['drills']} repositories",
        "1 backup",
        fmt_ratio(r["cpu_max"]),
        "No alert fired in this window",
    ]
    md = custode("report", "--format", "md", root)
    assert md.code == 0, md.stderr
    for fact in facts:
        assert fact in plain(md.stdout), fact
    html_path = tmp_path / "out" / "report.html"
    written = custode("report", "-o", html_path, root)  # the format from the suffix
    assert written.code == 0 and written.stdout == "", written.stderr
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    for fact in facts:
        assert fact in plain(html), fact
    assert not RESOURCE.search(html), RESOURCE.search(html)
    assert html.count("<svg") == 5  # fleet, reclaimed, backups, drills, resources
    assert not list(html_path.parent.glob(".report.html.*"))  # no temporary file left
    render_in_chromium(html_path, tmp_path)


def test_empty_history_is_a_report_that_says_so(custode: Run, isolated_env: dict[str, str]) -> None:
    for fmt in ("md", "html", "json"):
        result = custode("report", "--format", fmt)
        assert result.code == 0, result.stderr
        if fmt == "json":
            assert result.json()["empty"] is True
            assert result.json()["fleet"]["repositories"] == 0
        else:
            assert "No history recorded yet" in result.stdout
    assert not state_db(isolated_env).exists()  # reading does not create the database


def test_unreadable_history_is_one_line_and_a_non_zero_exit(
    custode: Run, isolated_env: dict[str, str]
) -> None:
    path = state_db(isolated_env)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    result = custode("report")
    assert result.code == 7  # custode's own state, not a failed verification
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and f"state database {path} is damaged" in result.stderr


def test_bad_duration_is_a_usage_error(custode: Run) -> None:
    result = custode("report", "--since", "a week")
    assert result.code == 2 and "not a duration" in result.stderr


# --------------------------------------------------------------------------- the model


def record(db: StateDB, command: str, rows: list[RepositoryResult], **summary: object) -> None:
    run = db.begin_run(command)
    db.record_results(run, rows)
    db.finish_run(run, "ok" if not summary.get("failed") else "partial", dict(summary))


def result(repo: str, task: str, outcome: str = "ok", seconds: float = 1.0, **details: object):
    root = "store#host" if task == "restore_drill" else "/srv/git"
    return RepositoryResult(repo, root, task, outcome, utcnow(), seconds, dict(details))


def observation(repo: str, verdict: str) -> Observation:
    return Observation(repo, "/srv/git", verdict, 0, 0, 1, 1000, 0, 2000, "fp")


@pytest.fixture
def history(tmp_path: Path) -> StateDB:
    """A small hand-made history: everything recorded just now."""
    db = StateDB.open(tmp_path / "state.db")
    run = db.begin_run("status")
    names = ["a.git", "<script>alert(1)</script>.git", "pipe|name.git"]
    db.record_observations(run, [observation(n, v) for n, v in zip(names, ["ok", "broken", "ok"], strict=True)])  # fmt: skip
    db.finish_run(run, "partial", {})
    record(db, "maintain", [result("a.git", "maintain", reclaimed_bytes=4096, message="")],
           reclaimed_bytes=4096)  # fmt: skip
    record(db, "maintain", [result("a.git", "maintain", "failed", message="git gc: out of memory")],
           failed=1)  # fmt: skip
    record(db, "backup", [result(n, "backup", bytes_added=100) for n in names[:2]],
           bytes_added=200, repositories=2, new=2, snapshot="s1")  # fmt: skip
    record(db, "verify", [result("a.git", "restore_drill", seconds=400.0),
                          result("b.git", "restore_drill", "failed", 2.0, message="fsck failed")],
           seconds=402.5)  # fmt: skip
    db.record_host_sample(0.9, 0.5, 2.0)
    db.record_host_sample(0.3, 0.2, 1.0)
    return db


def test_model_targets_reasons_and_escaping(history: StateDB) -> None:
    now = time.time()
    report = build(history, since_seconds=86400, now=now)
    problems = {p.repository: p for p in report.problems}
    (why,) = problems["a.git"].reasons
    assert why.startswith("maintenance failed ") and why.endswith(" UTC: git gc: out of memory")
    assert problems["pipe|name.git"].reasons == ("never backed up",)
    assert problems["<script>alert(1)</script>.git"].verdict == "broken"
    assert report.maintenance.reclaimed_bytes == 4096 and report.maintenance.failed == 1
    assert report.drills.over_target == 1 and report.drills.failed == 1
    assert report.drills.max_seconds == 400.0 and not report.drills.runs[0].within_target
    assert report.drills.runs[0].total_seconds == 402.5
    assert [d.message for d in report.drills.failures] == ["fsck failed"]
    assert (report.resources.cpu_max, report.resources.cpu_over_target) == (0.9, 1)
    assert (report.resources.memory_over_target, report.resources.samples) == (0, 2)
    assert (report.backups.fresh, report.backups.never) == (2, 1)
    assert [(s.store, s.bytes_added) for s in report.backups.stores] == [("unknown store", 200)]
    html, md = render(report, "html"), render(report, "md")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;.git" in html
    assert "`pipe\\|name.git`" in md and "`<script>alert(1)</script>.git`" in md
    for text in (html, md):
        assert "6m40s" in text and "90.0%" in text and "git gc: out of memory" in text


def test_the_window_and_the_freshness_move_with_now(history: StateDB) -> None:
    later = time.time() + 3 * 86400
    report = build(history, since_seconds=86400, now=later)
    assert report.runs == () and report.maintenance.runs == 0 and report.drills.runs == ()
    assert report.resources.samples == 0 and report.backups.stores == ()
    assert report.fleet.repositories == 3  # the current state is not windowed
    assert report.backups.stale == 2 and report.backups.fresh == 0
    stale = [r for r in report.backups.repositories if r.state == "stale"]
    assert all(r.message.startswith("last successful backup 3d") for r in stale)
    week = build(history, since_seconds=7 * 86400, now=later)
    assert week.maintenance.runs == 2 and week.window.bucket_seconds == 86400
    assert len(week.maintenance.buckets) == 1 and week.maintenance.buckets[0].runs == 2
    for fmt in ("html", "md", "json"):
        assert render(report, fmt) and render(week, fmt)
