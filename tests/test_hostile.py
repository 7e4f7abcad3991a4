"""The hostile repository is hostile to plain git, and harmless through custode's runner."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import custode.git
from custode.git import HARDENING, Git, git_dir_of
from fixtures.builders import git_env
from fixtures.cli import CliResult
from fixtures.hostile import HostileRepo, build_hostile_repo

pytestmark = pytest.mark.integration


def _plain_git(repo: Path, *args: str) -> None:
    """git as a user would run it: the repository's config and hooks are live."""
    env = git_env()
    subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, check=False)


def test_plain_git_runs_the_repositorys_programs(tmp_path: Path) -> None:
    repo = build_hostile_repo(tmp_path)  # its own: plain git would dirty the shared one
    assert repo.markers() == []
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


def _every_command(git: Git, repo: Path, scratch: Path) -> None:
    """Every allowlisted subcommand custode uses, the way it uses them, on ``repo``."""
    scratch.mkdir()

    def run(*args: str, **kw: bytes) -> str:
        return git.run(args, repo=repo, **kw).text

    head = run("rev-parse", "HEAD").strip()
    assert run("rev-parse", "--git-dir").strip().endswith((".git", "bare.git"))
    assert run("symbolic-ref", "HEAD").strip() == "refs/heads/main"
    refs = run("for-each-ref", "--format=%(refname)").split()
    assert "refs/tags/v1.0" in refs and "refs/heads/main" in refs
    assert "\x1b" not in run("log", "-n", "100", "--format=%H %d")  # color.ui=always is off
    run("show-ref")
    run("count-objects", "-v")
    run("rev-list", "--all", "--count")
    run("rev-list", "--all", "--objects", "--disk-usage")
    run("log", "-n", "100", "--format=%H")
    run("log", "--all", "--format=%H %G? %an", "--", "file0.txt")
    run("cat-file", "-p", "HEAD^{tree}")
    assert run("cat-file", "-p", "HEAD:file0.txt").startswith("content")  # no smudge
    run("cat-file", "--batch-check", "--batch-all-objects")
    run("cat-file", "--batch", input=f"{head}\n".encode())
    run("ls-tree", "-r", "HEAD")
    run("config", "--list", "--show-origin")
    run("config", "--get", "core.fsmonitor")
    run("hash-object", "--no-filters", "--stdin", input=b"hashed\n")
    run("hash-object", "--no-filters", "-w", "--", str(git_dir_of(repo) / "config"))
    run("fsck", "--full", "--no-progress")
    run("update-ref", "refs/custode/probe", head)
    run("update-ref", "-d", "refs/custode/probe")
    run("bundle", "create", str(scratch / "all.bundle"), "--all")
    run("bundle", "verify", str(scratch / "all.bundle"))
    run("bundle", "list-heads", str(scratch / "all.bundle"))
    run("ls-remote", str(repo))
    run("fetch", str(repo), "+refs/heads/*:refs/remotes/self/*")
    run("fetch", str(scratch / "all.bundle"), "+refs/tags/*:refs/remotes/bundle/*")
    git.run(["clone", "--mirror", str(repo), str(scratch / "mirror.git")], repo=None)
    git.run(["clone", "--mirror", str(scratch / "all.bundle"), str(scratch / "b.git")], repo=None)
    git.run(["init", "--bare", str(scratch / "empty.git")], repo=None)
    pack = git.run(["pack-objects", "--revs", "--all", "--stdout"], repo=repo, input=b"").stdout
    git.run(["unpack-objects", "-q"], repo=scratch / "empty.git", input=pack)
    (scratch / "copy.pack").write_bytes(pack)
    run("index-pack", str(scratch / "copy.pack"))
    run("verify-pack", "-v", str(scratch / "copy.idx"))
    run("show-index", input=(scratch / "copy.idx").read_bytes())
    run("repack", "-adk", "--write-bitmap-index")
    run("commit-graph", "write", "--reachable", "--changed-paths")
    run("commit-graph", "verify")
    run("multi-pack-index", "write", "--bitmap")
    run("multi-pack-index", "verify")
    run("pack-refs", "--all")
    run("reflog", "expire", "--expire=now", "--all")
    run("worktree", "prune")
    run("worktree", "list")
    run("gc", "--prune=now", "--quiet")
    run("prune")
    run("prune-packed")
    run("repack", "-d", "--geometric=2")
    run("repack", "-a", "-d", "--cruft", "--cruft-expiration=now")
    assert run("rev-parse", "HEAD").strip() == head


@pytest.mark.parametrize("which", ["working copy", "bare"])
def test_every_command_through_the_runner_runs_nothing(tmp_path: Path, which: str) -> None:
    repo = build_hostile_repo(tmp_path / "repo")  # a fresh one: these commands change it
    target = repo.path if which == "working copy" else repo.bare
    _every_command(Git(timeout=60), target, tmp_path / "scratch")
    assert repo.markers() == [], f"the runner let the repository run {repo.markers()}"


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("working copy", {"core.fsmonitor", "hook-reference-transaction", "hook-pre-auto-gc"}),
        ("bare", {"core.alternateRefsCommand", "hook-reference-transaction"}),
    ],
)
def test_the_check_has_teeth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, expected: set[str]
) -> None:
    """Without part of the hardening, the same commands do run the repository's programs."""
    weakened = {"core.hooksPath", "core.fsmonitor", "core.alternateRefsCommand", "gc.auto"}
    kept = tuple(item for item in HARDENING if item[0] not in weakened | {"maintenance.auto"})
    monkeypatch.setattr(custode.git, "HARDENING", kept)
    repo = build_hostile_repo(tmp_path / "repo")
    _every_command(Git(timeout=60), repo.path if which == "working copy" else repo.bare,
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
