"""The hostile repository is hostile to plain git, and harmless through custode's runner."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import custode.git.runner
from custode.git.runner import HARDENING, Git
from fixtures.builders import git_env
from fixtures.cli import CliResult
from fixtures.hostile import HostileRepo, build_hostile_repo, run_every_command

pytestmark = pytest.mark.integration


def _plain_git(repo: Path, *args: str) -> None:
    """git as a user would run it: the repository's config and hooks are live."""
    env = git_env()
    subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, check=False)


def test_plain_git_runs_the_repositorys_programs(tmp_path: Path) -> None:
    repo = build_hostile_repo(tmp_path)  # its own: plain git would dirty the shared one
    assert repo.markers() == []
    # git status reads a file's content (through the filter) only when its stat data
    # differs from the index's, or is racy: written in the index's second. A busy host
    # can put the last write and the index in different seconds, so differ for certain.
    tracked = repo.path / "file0.txt"
    then = tracked.stat().st_mtime_ns - 10 * 10**9
    os.utime(tracked, ns=(then, then))
    _plain_git(repo.path, "status")
    assert {"core.fsmonitor", "filter.evil.process"} <= set(repo.markers())
    # The process filter speaks no protocol, so git stops there: drop it to go further.
    for config in (repo.git_dir / "config", repo.bare / "config"):
        _plain_git(repo.path, "config", "--file", str(config), "--unset", "filter.evil.process")
    _plain_git(repo.path, "status")
    (repo.path / "file0.txt").write_text("changed\n")
    _plain_git(repo.path, "commit", "-a", "-m", "plain commit")
    _plain_git(repo.bare, "log", "-p", "-1")
    _plain_git(repo.bare, "st")
    fired = set(repo.markers())
    expected = {
        "core.fsmonitor",
        "filter.evil.clean",
        "hook-pre-commit",
        "hook-commit-msg",
        "hook-post-commit",
        "hook-reference-transaction",
        "hook-pre-auto-gc",
        "diff.evil.textconv",
        "alias.st",
    }
    assert expected <= fired, f"not hostile enough: {sorted(expected - fired)} did not fire"


def test_the_shared_fixture_is_clean(hostile_repo: HostileRepo) -> None:
    assert hostile_repo.markers() == []
    assert (hostile_repo.git_dir / "refs/heads/stale.lock").exists()
    assert list((hostile_repo.git_dir / "objects/pack").glob("*.pack"))
    config = (hostile_repo.bare / "config").read_text()
    assert "fsmonitor" in config and "packObjectsHook" in config


def test_read_only_commands_on_the_shared_fixture(hostile_repo: HostileRepo) -> None:
    git = Git(timeout=60)
    for repo in (hostile_repo.path, hostile_repo.bare):
        assert git.run(["rev-list", "--all", "--count"], repo=repo).text.strip() == "6"
        git.run(["log", "-n", "100", "--format=%H %G?"], repo=repo)
        git.run(["for-each-ref", "--format=%(refname) %(objectname)"], repo=repo)
        git.run(["fsck", "--full", "--no-progress"], repo=repo)
    assert hostile_repo.markers() == []


@pytest.mark.parametrize("which", ["working copy", "bare"])
def test_every_command_through_the_runner_runs_nothing(tmp_path: Path, which: str) -> None:
    repo = build_hostile_repo(tmp_path / "repo")  # a fresh one: these commands change it
    target = repo.path if which == "working copy" else repo.bare
    run_every_command(Git(timeout=60), target, tmp_path / "scratch")
    assert repo.markers() == [], f"the runner let the repository run {repo.markers()}"


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        # (alternate-refs and pre-auto-gc programs ran only under transfers, now refused)
        ("working copy", {"core.fsmonitor", "hook-reference-transaction"}),
        ("bare", {"hook-reference-transaction"}),
    ],
)
def test_the_check_has_teeth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, expected: set[str]
) -> None:
    """Without part of the hardening, the same commands do run the repository's programs."""
    weakened = {"core.hooksPath", "core.fsmonitor", "core.alternateRefsCommand", "gc.auto"}
    kept = tuple(item for item in HARDENING if item[0] not in weakened | {"maintenance.auto"})
    monkeypatch.setattr(custode.git.runner, "HARDENING", kept)
    repo = build_hostile_repo(tmp_path / "repo")
    run_every_command(Git(timeout=60), repo.path if which == "working copy" else repo.bare,
                   tmp_path / "scratch")  # fmt: skip
    assert expected <= set(repo.markers())


def test_every_custode_command_runs_nothing(
    hostile_repo: HostileRepo, custode: Callable[..., CliResult], tmp_path: Path
) -> None:
    """The commands a user runs, on a root holding the hostile working copy and bare clone."""
    root = hostile_repo.path.parent
    found = {r["path"] for r in custode("status", "--json", root).json()["repositories"]}
    assert {str(hostile_repo.path), str(hostile_repo.bare)} <= found
    for command in (
        ["status", "--json", root],
        ["status", root],
        ["doctor"],
        ["--config", tmp_path / "c.toml", "init"],
        ["audit", "verify"],
    ):
        result = custode(*command)
        assert result.code in (0, 3), (command, result.stderr)
    assert hostile_repo.markers() == []
