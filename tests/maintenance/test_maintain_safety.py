"""Nothing is dropped that something still needs (issue 11, §2): a repository in doubt is
not maintained, derived data that lies misleads nothing, only git's own leftovers are
stale files."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from custode.config.maintenance import DAY, MaintenancePolicy
from custode.git.leftovers import stale_age, stale_kind
from custode.git.runner import DISTRUST_DERIVED, Git, GitResult
from custode.maintenance import borrowers
from custode.maintenance.doubt import doubts
from custode.maintenance.executor import execute
from custode.maintenance.planner import Plan, Repack, Task
from custode.records.state import LatestResult
from custode.scan.discovery import Repository
from fixtures.builders import Fleet, age_packs, fast_import, git_env, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


def listing(path: Path) -> dict[str, tuple[int, float]]:
    """Every file below ``path`` with its size and mtime (custode's own lock file aside)."""
    out = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = Path(dirpath, name)
            if name != "custode.lock":
                st = full.lstat()
                out[str(full.relative_to(path))] = (st.st_size, st.st_mtime)
    return out


def age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


def git_ok(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Plain git (its exit status is the answer), in the fixtures' environment."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=git_env(), check=False
    )


# --------------------------------------------------------------------------- in doubt


def test_a_repository_check_found_corrupt_gets_no_task_until_a_check_passes(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    repo = root / "packed.git"
    shutil.copytree(fleet.packed, repo, symlinks=True)
    fast_import(repo, history_stream("refs/heads/extra", 2, start=500, label="x "), pack=False)
    blob = run_git(repo, "rev-parse", "refs/heads/extra:src/file2.txt").strip()
    loose = repo / "objects" / blob[:2] / blob[2:]
    kept = loose.read_bytes()
    loose.unlink()  # the blob the tip needs is gone: check calls it corrupt
    (repo / "config.lock").write_text("[core]\n")
    age(repo / "config.lock", 2 * DAY)  # stale: maintenance would remove it
    assert custode("check", root).code == 3

    before = listing(repo)
    result = custode("maintain", "--json", root)
    assert result.code == 3, result.stderr
    assert result.json()["summary"]["in_doubt"] == ["packed.git"]
    (only,) = result.json()["repositories"]
    assert only["in_doubt"] and only["tasks"] == []
    assert "in doubt" in only["skipped_reason"] and "corrupt" in only["skipped_reason"]
    assert "packed.git: in doubt: custode check found it corrupt" in result.stderr
    assert listing(repo) == before  # not even the stale lock went
    table = custode("maintain", root)
    assert table.code == 3 and "1 in doubt (last check not clean)" in table.stdout

    loose.parent.mkdir(exist_ok=True)
    loose.write_bytes(kept)  # repaired
    assert custode("check", root).code == 0
    again = custode("maintain", "--json", root)
    assert again.code == 0, again.stderr
    assert again.json()["summary"]["maintained"] == 1
    assert not (repo / "config.lock").exists()


def _result(task: str, at: float, outcome: str, root: str = "/r") -> LatestResult:
    details = {"verdict": "ok" if outcome == "ok" else "corrupt", "findings": ["fsck: missing"]}
    return LatestResult(task, root, "a.git", at, outcome, 1.0, details, None)


def test_which_check_clears_a_doubt() -> None:
    quick_bad, full_bad = _result("check", 10, "failed"), _result("check-full", 10, "failed")
    assert "custode check found it corrupt" in doubts([quick_bad])["/r/a.git"]
    assert doubts([quick_bad, _result("check", 20, "ok")]) == {}
    assert doubts([quick_bad, _result("check-full", 20, "ok")]) == {}
    assert "/r/a.git" in doubts([_result("check-full", 5, "ok"), quick_bad])
    # a passing connectivity check does not clear what the full check found
    assert "--full" in doubts([full_bad, _result("check", 20, "ok")])["/r/a.git"]
    assert doubts([full_bad, _result("check-full", 20, "ok")]) == {}
    # the same repository named through another root (custode check /r/a.git)
    assert "/r/a.git" in doubts([_result("check", 10, "failed", root="/r/a.git")])


# --------------------------------------------------------------------------- derived data


def _chunks(data: bytes) -> dict[bytes, int]:
    count = data[6]
    return {
        data[8 + 12 * i : 12 + 12 * i]: struct.unpack(">Q", data[12 + 12 * i : 20 + 12 * i])[0]
        for i in range(count + 1)
    }


def lying_commit_graph(repo: Path) -> str:
    """Rewrite the commit-graph so that main's parent is main~2; return main~1, the commit
    the graph hides (the checksum is made right: only ``verify`` sees the lie)."""
    run_git(repo, "commit-graph", "write", "--reachable")
    graph = repo / "objects" / "info" / "commit-graph"
    data = bytearray(graph.read_bytes())
    oids = sorted(run_git(repo, "rev-list", "--all").split())
    tip, grand = (run_git(repo, "rev-parse", r).strip() for r in ("main", "main~2"))
    at = _chunks(bytes(data))[b"CDAT"] + 36 * oids.index(tip) + 20  # tree id, then parent 1
    data[at : at + 4] = struct.pack(">I", oids.index(grand))
    data[-20:] = hashlib.sha1(bytes(data[:-20])).digest()  # noqa: S324  (git's checksum)
    graph.chmod(0o644)
    graph.write_bytes(bytes(data))
    return run_git(repo, "rev-parse", "main~1").strip()


def test_a_lying_commit_graph_loses_no_commit(custode: Run, tmp_path: Path) -> None:
    work = tmp_path / "root" / "app"
    run_git(None, "init", "-q", work)  # a working copy: no bitmaps, as in the report
    fast_import(work / ".git", history_stream("refs/heads/main", 6))
    fast_import(work / ".git", history_stream("refs/heads/side", 2, start=100, label="s "))
    age_packs(work / ".git", 30 * 86400)  # a full repack is due, and expires at once
    hidden = lying_commit_graph(work / ".git")
    plan = custode("maintain", "--dry-run", "--json", work.parent).json()["repositories"][0]
    assert any("dropped after" in t["reason"] for t in plan["tasks"])  # it would expire
    result = custode("maintain", work.parent)
    assert result.code == 3, result.stdout
    assert "commit-graph verify failed" in result.stderr and "in doubt" in result.stderr
    assert git_ok(work, "cat-file", "-e", hidden).returncode == 0
    assert git_ok(work, "-c", "core.commitGraph=false", "fsck").returncode == 0


class Recorder(Git):
    """The real git, remembering the ``-c`` pairs of each command."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    def run(self, args: Sequence[str], **kwargs: Any) -> GitResult:
        self.calls.append((args[0], tuple(kwargs.get("config", ()))))
        return super().run(args, **kwargs)


@pytest.mark.parametrize("unreachable", ["cruft", "loosen"])
def test_every_git_that_can_drop_objects_distrusts_derived_data(
    fleet: Fleet, tmp_path: Path, unreachable: str
) -> None:
    repo = tmp_path / "many-packs.git"
    shutil.copytree(fleet.many_packs, repo, symlinks=True)
    tasks = (
        Task("incremental_repack", "test", Repack()),
        Task("geometric_repack", "test", Repack(geometric_factor=2, write_midx=True)),
        Task("full_repack", "test", Repack(True, True, None, unreachable, 14 * DAY)),  # type: ignore[arg-type]
    )
    git = Recorder()
    result = execute(Repository(tmp_path, repo, repo, "bare", repo.name),
                     Plan(str(repo), tasks), git, None, now=time.time())  # fmt: skip
    assert result.outcome == "ok", result
    dropping = {"repack", "prune", "rev-list", "cat-file"}
    seen = {name for name, _ in git.calls}
    assert {"repack", "rev-list"} <= seen
    assert unreachable != "loosen" or "prune" in seen
    for name, config in git.calls:
        if name in dropping:  # (a repack's also carry its memory limits)
            assert config[: len(DISTRUST_DERIVED)] == DISTRUST_DERIVED, name
    assert git_ok(repo, "fsck", "--strict").returncode == 0


# --------------------------------------------------------------------------- stale files

GIT_LEFTOVERS = {  # path: its stale age under the default policy
    "config.lock": 3600, "HEAD.lock": 3600, "ORIG_HEAD.lock": 3600, "index.lock": 3600,
    "shallow.lock": 3600, "packed-refs.lock": 3600, "config.worktree.lock": 3600,
    "info/attributes.lock": 3600, "reftable/tables.list.lock": 3600,
    "refs/heads/main.lock": 3600, "refs/tags/deep/v1.lock": 3600,
    "objects/info/alternates.lock": 3600, "objects/info/commit-graph.lock": 3600,
    "objects/info/commit-graphs/commit-graph-chain.lock": 3600,
    "objects/pack/multi-pack-index.lock": 3600,
    "worktrees/wt/HEAD.lock": 3600, "worktrees/wt/index.lock": 3600,
    "worktrees/wt/refs/bisect/bad.lock": 3600,
    "objects/pack/tmp_pack_Xq3b9Z": DAY, "objects/pack/tmp_idx_Lm2c8Y": DAY,
    "objects/ab/tmp_obj_Tr5d7W": DAY, "objects/info/commit-graphs/tmp_graph_a1": DAY,
    "gc.pid": 12 * 3600,
}  # fmt: skip
CONTENT = (  # *.lock and tmp_* files git never writes: someone's data
    "annex/objects/Xk/9v/SHA256E-s3--abc/SHA256E-s3--abc.lock", "Cargo.lock",
    "hooks/Cargo.lock", "info/deploy.lock", "logs/refs/heads/main.lock", "modules.lock",
    "worktrees/wt/extra/x.lock", "tmp_notes", "lfs/tmp_upload", "objects.lock",
)  # fmt: skip


def test_only_gits_own_leftovers_are_stale() -> None:
    policy = MaintenancePolicy()
    for path, seconds in GIT_LEFTOVERS.items():
        assert stale_kind(path) is not None, path
        assert stale_age(policy, path) == seconds, path
    for path in CONTENT:
        assert stale_kind(path) is None, path
        assert stale_age(policy, path) == float("inf"), path


def test_maintain_removes_old_git_leftovers_only(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    repo = tmp_path / "root" / "packed.git"
    shutil.copytree(fleet.packed, repo, symlinks=True)
    young = {"refs/heads/young.lock": 600, "objects/pack/tmp_pack_young": 3 * 3600,
             "gc.pid": 3600}  # fmt: skip
    for rel, seconds in [*GIT_LEFTOVERS.items(), *((c, 30 * DAY) for c in CONTENT)]:
        if rel in young:
            continue
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
        age(path, seconds + 600 if rel in GIT_LEFTOVERS else seconds)
    for rel, seconds in young.items():
        (repo / rel).write_text("x\n")
        age(repo / rel, seconds)
    (repo / "worktrees" / "wt" / "gitdir").write_text(f"{tmp_path}/wt/.git\n")
    (repo / "worktrees" / "wt" / "locked").write_text("kept\n")  # git must not prune it
    result = custode("maintain", "--json", repo.parent)
    assert result.code == 0, result.stderr
    for rel in GIT_LEFTOVERS:
        if rel not in young:
            assert not (repo / rel).exists(), rel
    for rel in (*CONTENT, *young):
        assert (repo / rel).exists(), rel


# --------------------------------------------------------------------------- borrowers


def pool_and_fork(pool: Path, fork: Path) -> str:
    """A pool whose old history only ``fork`` still needs (its main was rewound), with two
    month-old packs: a full repack is due and would expire that history at once. Returns
    a commit only the fork still reaches."""
    pool.parent.mkdir(parents=True, exist_ok=True)
    run_git(None, "init", "-q", "--bare", pool)
    fast_import(pool, history_stream("refs/heads/main", 12, label="pool "))
    run_git(None, "clone", "-q", "--bare", "--shared", pool, fork)
    needed = run_git(pool, "rev-parse", "refs/heads/main").strip()
    run_git(pool, "update-ref", "refs/heads/main", "refs/heads/main~6")
    run_git(pool, "reflog", "expire", "--expire=all", "--all")
    fast_import(pool, history_stream("refs/heads/other", 2, start=200, label="o "))
    age_packs(pool, 30 * 86400)
    return needed


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def assert_fork_intact(result: CliResult, pool: Path, fork: Path, needed: str) -> None:
    assert result.code == 0, result.stderr
    fsck = git_ok(fork, "fsck", "--strict")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert git_ok(fork, "cat-file", "-e", f"{needed}~3").returncode == 0
    (repo,) = [r for r in result.json()["repositories"] if r["path"] == str(pool)]
    full = next(t for t in repo["tasks"] if t["kind"] == "full_repack")
    assert "unreachable objects are kept" in full["reason"]


def test_a_borrower_under_another_configured_root(custode: Run, tmp_path: Path) -> None:
    pool, fork = tmp_path / "a" / "pool.git", tmp_path / "b" / "fork.git"
    needed = pool_and_fork(pool, fork)
    cfg = config(tmp_path, f'roots = ["{tmp_path / "a"}", "{tmp_path / "b"}"]\n')
    result = custode("--config", cfg, "maintain", "--json", tmp_path / "a")
    assert_fork_intact(result, pool, fork, needed)


def test_a_borrower_in_an_excluded_directory(custode: Run, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pool, fork = root / "pool.git", root / "archive" / "fork.git"
    needed = pool_and_fork(pool, fork)
    cfg = config(tmp_path, f'roots = ["{root}"]\n[discovery]\nexclude = ["archive"]\n')
    result = custode("--config", cfg, "maintain", "--json")
    assert [r["relative"] for r in result.json()["repositories"]] == ["pool.git"]
    assert_fork_intact(result, pool, fork, needed)


def test_a_borrower_not_named_on_the_command_line(custode: Run, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pool, fork = root / "pool.git", root / "fork.git"
    needed = pool_and_fork(pool, fork)
    cfg = config(tmp_path, f'roots = ["{root}"]\n')
    result = custode("--config", cfg, "maintain", "--json", pool)
    assert_fork_intact(result, pool, fork, needed)


def test_a_borrower_seen_before_is_remembered(custode: Run, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pool, fork = root / "pool.git", root / "fork.git"
    needed = pool_and_fork(pool, fork)
    # no roots; no cooldown: the third run follows the second within a second, and a full
    # repack must still be due then (a "1s" cooldown made this test depend on the clock)
    cfg = config(tmp_path, "[maintenance]\nfull_repack_cooldown = 0\n")
    first = custode("--config", cfg, "maintain", "--json", root)  # sees the fork
    assert first.code == 0, first.stderr
    for n in range(3):  # packs enough for a repack, which a small pool gets whole
        fast_import(pool, history_stream(f"refs/heads/more{n}", 2, start=300 + 9 * n, label="m "))
    age_packs(pool, 30 * 86400)  # what the first repack kept is old again
    result = custode("--config", cfg, "maintain", "--json", pool)  # the pool alone
    assert_fork_intact(result, pool, fork, needed)
    shutil.rmtree(fork)  # a deleted borrower is forgotten: the pool may expire again
    for n in range(3):
        fast_import(pool, history_stream(f"refs/heads/last{n}", 2, start=400 + 9 * n, label="l "))
    age_packs(pool, 30 * 86400)
    after = custode("--config", cfg, "maintain", "--json", pool)
    tasks = after.json()["repositories"][0]["tasks"]
    full = next((t for t in tasks if t["kind"] == "full_repack"), None)
    assert full is not None, after.stdout
    assert "dropped after" in full["reason"]


def test_where_custode_cannot_be_sure_unreachable_objects_are_kept(
    custode: Run, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    pool_and_fork(root / "pool.git", tmp_path / "elsewhere" / "fork.git")
    shutil.rmtree(tmp_path / "elsewhere")
    missing = tmp_path / "unmounted"  # a configured root that is not there tonight
    cfg = config(tmp_path, f'roots = ["{root}", "{missing}"]\n')
    result = custode("--config", cfg, "maintain", "--dry-run", "--json", root)
    assert result.code == 0, result.stderr
    (repo,) = result.json()["repositories"]
    full = next(t for t in repo["tasks"] if t["kind"] == "full_repack")
    assert "kept: custode cannot be sure it knows every borrower" in full["reason"]
    assert f"root {missing} is missing" in full["reason"]
    assert any("cannot be sure" in n for n in repo["notes"])


# --------------------------------------------------------------------------- outside the roots


def outside_layouts(root: Path, outside: Path, fleet: Fleet) -> dict[str, Path]:
    """Three ways a repository under ``root`` leads outside it; returns what each names."""
    far = outside / "far.git"
    shutil.copytree(fleet.packed, far, symlinks=True)
    (far / "config.lock").write_text("[core]\n")
    age(far / "config.lock", 2 * DAY)  # maintenance would remove it, were far maintained
    age_packs(far, 30 * 86400)
    # 1. a working tree whose .git file names a git directory outside every root
    (root / "app").mkdir(parents=True)
    (root / "app" / ".git").write_text(f"gitdir: {far}\n")
    # 2. a git directory under the root whose commondir is outside
    wt = outside / "wt"
    run_git(far, "worktree", "add", "-q", "--detach", wt)
    shutil.copytree(far / "worktrees" / "wt", root / "linked.git")
    for name in ("objects", "refs"):
        (root / "linked.git" / name).mkdir(exist_ok=True)
    (root / "linked.git" / "commondir").write_text(f"{far}\n")
    # 3. a repository under the root that borrows from a pool outside
    pool = outside / "pool.git"
    run_git(None, "init", "-q", "--bare", pool)
    fast_import(pool, history_stream("refs/heads/main", 8, label="p "))
    age_packs(pool, 30 * 86400)
    run_git(None, "clone", "-q", "--bare", "--shared", pool, root / "borrower.git")
    return {"app": far, "linked.git": far, "borrower.git": pool}


def test_nothing_outside_the_roots_is_maintained_or_backed_up(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    names = outside_layouts(root, outside, fleet)
    shutil.copytree(fleet.packed, root / "inside.git", symlinks=True)
    before = listing(outside)
    status = custode("status", "--json", root)
    assert [r["relative"] for r in status.json()["repositories"]] == ["inside.git"]
    for name, target in names.items():
        assert f"{root / name}" in status.stderr and f"{target}" in status.stderr, name
    assert "outside every root" in status.stderr
    maintain = custode("maintain", "--json", "--force", root)
    assert [r["relative"] for r in maintain.json()["repositories"]] == ["inside.git"]
    backup = custode("backup", "--json", root)
    assert backup.code in (0, 3), backup.stderr
    assert [r["repository"] for r in backup.json()["repositories"]] == ["inside.git"]
    assert "outside every root" in backup.stderr
    assert listing(outside) == before


def test_remembered_borrowers_are_read_again_where_they_live(tmp_path: Path, fleet: Fleet) -> None:
    pool = os.path.realpath(fleet.pool / "objects")
    moved, gone, odd = tmp_path / "moved.git", tmp_path / "gone.git", tmp_path / "odd.git"
    for repo in (moved, odd):
        shutil.copytree(fleet.empty, repo, symlinks=True)
        (repo / "objects" / "info").mkdir(exist_ok=True)
    (moved / "objects" / "info" / "alternates").write_text(f"{pool}\n")
    (odd / "objects" / "info" / "alternates").mkdir()  # exists, cannot be read as a file
    remembered = {(str(r), pool) for r in (moved, gone, odd)}
    found = borrowers.find([tmp_path / "empty-root"], remembered)
    assert found.of[pool] == {str(moved)}
    assert found.gone == {(str(gone), pool)}
    assert (
        "remembered borrower" in found.unsure_of[pool][0] and str(odd) in found.unsure_of[pool][0]
    )
    assert found.everywhere == [
        f"root {tmp_path / 'empty-root'} is missing, a borrower may live there"
    ]
