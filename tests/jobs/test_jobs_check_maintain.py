"""The check and maintain jobs called as the core (``custode.jobs``), without click: on
real repositories, their typed results say each repository's verdict and findings, each
maintenance task with its reason, what it reclaimed and how long it took, what was left
untouched and why; a dry run changes nothing and records nothing."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from custode import interrupts
from custode.config.model import Config, load_config
from custode.errors import PathNotFoundError, StateUnusableError
from custode.git.runner import Git
from custode.jobs import check as check_job
from custode.jobs import maintain as maintain_job
from custode.maintenance import pool
from fixtures.builders import Fleet, git_count_objects, run_git

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path: Path, fleet: Fleet) -> tuple[Path, Config]:
    """A root with a packed repository and one of thousands of loose objects, and a config
    whose git runs at the test's own priority (the job lowers its caller's)."""
    root = tmp_path / "root"
    for name in ("packed.git", "loose.git"):
        shutil.copytree(fleet.root / name, root / name, symlinks=True)
    path = tmp_path / "custode.toml"
    path.write_text(
        f'[state]\ndirectory = "{tmp_path / "state"}"\n[git]\nnice = 0\nionice = "none"\n'
    )
    return root, load_config(path, required=True)


def checking(root: Path, config: Config, **given: Any) -> check_job.CheckJob:
    assert config.state.directory is not None
    return check_job.CheckJob((root,), config, config.state.directory,
                              Git.from_config(config.git), **given)  # fmt: skip


def maintaining(root: Path, config: Config, **given: Any) -> maintain_job.MaintainJob:
    assert config.state.directory is not None
    return maintain_job.MaintainJob((root,), config, config.state.directory,
                                    Git.from_config(config.git), **given)  # fmt: skip


def rows(config: Config, command: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Each (repository, task, outcome, details) row of the last ``command`` run."""
    assert config.state.directory is not None
    with sqlite3.connect(config.state.directory / "state.db") as db:
        found = db.execute(
            "SELECT repository, task, outcome, details FROM repository_results WHERE run_id = "
            "(SELECT max(id) FROM runs WHERE command = ?) ORDER BY id",
            (command,),
        ).fetchall()
    return [(r, t, o, json.loads(d)) for r, t, o, d in found]


def corrupt(repo: Path) -> str:
    """Remove the tree the tip commit needs; its id."""
    tree = run_git(repo, "rev-parse", "refs/heads/main^{tree}").strip()
    (repo / "objects" / tree[:2] / tree[2:]).unlink()
    return tree


def files(root: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


@contextmanager
def stages(seen: list[str], on_tick: Callable[[str], None] = lambda what: None) -> Iterator[Any]:
    """A ``bar`` that notes each stage's name (and calls ``on_tick`` on its ticks)."""

    @contextmanager
    def bar(what: str) -> Iterator[Callable[[int, int | None], None]]:
        seen.append(what)
        yield lambda done, total: on_tick(what)

    yield bar


def test_check_gives_each_repository_its_verdict_findings_and_time(
    setup: tuple[Path, Config],
) -> None:
    root, config = setup
    tree = corrupt(root / "loose.git")
    said: list[str] = []
    seen: list[str] = []
    with stages(seen) as bar:
        result = check_job.check(checking(root, config), notice=said.append, bar=bar)
    by = {c.state.relative: c for c in result.repositories}
    assert set(by) == {"packed.git", "loose.git"}
    assert by["packed.git"].verdict == "ok" and by["packed.git"].findings == ()
    assert by["loose.git"].verdict == "corrupt"
    assert any(tree in line for line in by["loose.git"].findings)
    assert all(c.seconds > 0 and c.started > 0 for c in result.repositories)
    assert result.counts == {"ok": 1, "corrupt": 1, "error": 0} and result.bad == 1
    assert (result.found, result.stopped, result.cancelled) == (2, 0, 0)
    assert not result.interrupted and not result.full and result.problems == ()
    assert seen == ["reading repositories", "checking repositories"] and said == []
    recorded = {r: (t, o, d["verdict"]) for r, t, o, d in rows(config, "check")}
    assert recorded == {"packed.git": ("check", "ok", "ok"),
                        "loose.git": ("check", "failed", "corrupt")}  # fmt: skip


def test_an_interrupted_check_keeps_what_was_checked_and_counts_the_rest(
    setup: tuple[Path, Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, config = setup
    # the request's SIGKILL of running gits, at once (none runs between two checks)
    # rather than GRACE seconds later, in whatever test runs then
    monkeypatch.setattr(interrupts, "GRACE", 0.0)
    interrupts.reset()
    try:  # a stop requested once the first repository is checked
        with stages(
            [], lambda what: what == "checking repositories" and interrupts.request()
        ) as bar:
            result = check_job.check(checking(root, config, full=True, jobs=1), bar=bar)
    finally:
        interrupts.reset()
    assert result.interrupted and result.full
    assert len(result.repositories) == 1 and result.repositories[0].verdict == "ok"
    assert (result.found, result.stopped, result.cancelled) == (2, 0, 1)
    assert [(t, o) for _, t, o, _ in rows(config, "check")] == [("check-full", "ok")]


def test_no_repository_is_refused_before_any_check(tmp_path: Path, setup: Any) -> None:
    _, config = setup
    (tmp_path / "empty").mkdir()
    with pytest.raises(PathNotFoundError, match="no git repositories found under"):
        check_job.check(checking(tmp_path / "empty", config))


def test_a_dry_run_plans_each_task_with_its_reason_and_changes_nothing(
    setup: tuple[Path, Config],
) -> None:
    root, config = setup
    before = files(root)
    result = maintain_job.maintain(maintaining(root, config, dry_run=True))
    assert result.dry_run and result.ran == () and result.not_started == ()
    by = {m.state.relative: m for m in result.repositories}
    assert set(by) == {"packed.git", "loose.git"}
    loose = by["loose.git"]
    assert loose.tasks and all(t.reason for t in loose.tasks)
    assert any("loose objects" in t.reason for t in loose.tasks)
    assert loose.outcome == "planned" and loose.result is None and loose.reclaimed == 0
    assert [m.state.relative for m in result.planned] == [
        m.state.relative for m in result.repositories if m.tasks
    ]
    assert files(root) == before
    assert rows(config, "maintain") == []  # nothing recorded either


def test_maintenance_says_per_repository_what_ran_why_and_what_it_reclaimed(
    setup: tuple[Path, Config],
) -> None:
    root, config = setup
    loose_before = git_count_objects(root / "loose.git")["count"]
    seen: list[str] = []
    with stages(seen) as bar:
        result = maintain_job.maintain(maintaining(root, config, jobs=2), bar=bar)
    assert seen == ["reading repositories", "maintaining"]
    assert not result.dry_run and not result.interrupted and result.not_started == ()
    by = {m.state.relative: m for m in result.ran}
    loose = by["loose.git"]
    assert loose.outcome == "ok" and loose.seconds > 0, loose.result
    assert loose_before > 0 and git_count_objects(root / "loose.git")["count"] == 0
    assert loose.reclaimed > 0
    assert loose.result is not None
    done = {t.kind: t for t in loose.result.tasks}
    assert done and all(t.outcome == "ok" and t.reason for t in done.values())
    assert {t.kind for t in loose.tasks} == set(done)
    assert result.count("ok") + result.count("skipped") == len(result.ran) == 2
    assert result.reclaimed == sum(m.reclaimed for m in result.ran)
    recorded = rows(config, "maintain")
    own = {r: d for r, t, _, d in recorded if t == "maintain"}
    assert own["loose.git"]["reclaimed_bytes"] == loose.reclaimed
    assert own["loose.git"]["fingerprint"] == loose.result.fingerprint
    ran = {(m.state.relative, t.kind) for m in result.ran if m.result for t in m.result.tasks}
    assert {(r, t) for r, t, _, _ in recorded if t != "maintain"} == ran
    assert {("loose.git", kind) for kind in done} <= ran


def test_a_repository_the_last_check_found_corrupt_is_left_untouched_and_said_why(
    setup: tuple[Path, Config],
) -> None:
    root, config = setup
    corrupt(root / "loose.git")
    check_job.check(checking(root, config))
    said: list[str] = []
    result = maintain_job.maintain(maintaining(root, config), notice=said.append)
    by = {m.state.relative: m for m in result.repositories}
    doubted = by["loose.git"]
    assert doubted.in_doubt and doubted.tasks == () and doubted.skipped_reason
    assert [m.state.relative for m in result.in_doubt] == ["loose.git"]
    assert said == [f"loose.git: {doubted.skipped_reason}"]
    assert git_count_objects(root / "loose.git")["count"] > 0  # not repacked


def test_without_a_readable_history_nothing_is_maintained(setup: tuple[Path, Config]) -> None:
    root, config = setup
    assert config.state.directory is not None
    config.state.directory.mkdir(parents=True)
    (config.state.directory / "state.db").write_bytes(b"not a database" * 100)
    before = files(root)
    with pytest.raises(StateUnusableError, match="not maintaining anything"):
        maintain_job.maintain(maintaining(root, config))
    assert files(root) == before
    warned: list[str] = []
    plan = maintain_job.maintain(maintaining(root, config, dry_run=True), warn=warned.append)
    assert plan.dry_run and any(m.tasks for m in plan.repositories)
    assert any(w.startswith("history unreadable, planning every repository afresh") for w in warned)


def test_checks_run_on_a_pool_largest_first_under_the_governor(
    setup: tuple[Path, Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, config = setup
    asked: list[int] = []
    told: list[bool] = []
    started: list[str] = []
    real = check_job._check_one

    class Governor:
        def __init__(self, share: float) -> None:
            assert share == config.maintenance.cpu_share

        def may_start(self, running: int) -> bool:
            asked.append(running)
            return True

        def finished(self) -> None:
            told.append(True)

    def one(job: Any, state: Any, record: Any) -> Any:
        started.append(state.relative)
        return real(job, state, record)

    monkeypatch.setattr(pool, "Governor", Governor)
    monkeypatch.setattr(check_job, "_check_one", one)
    result = check_job.check(checking(root, config, jobs=2))
    by_size = sorted(result.repositories, key=lambda c: -(c.state.pack_bytes
                                                         + c.state.loose_objects_bytes))  # fmt: skip
    assert started == [c.state.relative for c in by_size]  # the largest first
    assert [c.state.relative for c in result.repositories] == sorted(started)  # scan order
    assert len(asked) == 2 and result.counts["ok"] == 2
    assert len(told) == 2  # each finish is told to the governor
