"""The maintenance executor on copies of the real fixture repositories."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from custode.config.maintenance import DAY, MaintenancePolicy
from custode.errors import GitError, LockedError
from custode.git.lock import LOCK_NAME, repository_lock
from custode.git.runner import FEATURES, Git, GitResult
from custode.maintenance.executor import (
    ExecutionResult,
    PackLimits,
    RefSnapshot,
    compare,
    execute,
    remove_midx,
    remove_stale_files,
    repack_commands,
)
from custode.maintenance.planner import Plan, Repack, RepoHistory, StaleFiles, plan
from custode.records.audit import AuditLog
from custode.scan.discovery import Repository, discover
from custode.scan.objectstore import TempFile
from custode.scan.repostate import RepoState, inspect, link_borrowers
from fixtures.builders import Fleet, fast_import, git_count_objects, history_stream, run_git

pytestmark = pytest.mark.integration

GIT = Git()
POLICY = MaintenancePolicy()
NEGLECTED = ["loose", "many_packs", "many_refs", "stale_files"]


def bare(path: Path) -> Repository:
    return Repository(path.parent, path, path, "bare", path.name)


def copy(src: Path, tmp_path: Path) -> Repository:
    dest = tmp_path / src.name
    shutil.copytree(src, dest, symlinks=True)  # copy2 keeps mtimes: stale files stay stale
    return bare(dest)


def plan_for(state: RepoState, last_full: float | None = None, *, due: bool = True) -> Plan:
    """The plan; with ``due`` as for a long-neglected repository (custode first saw it six
    days ago, so a full repack is due), else as for one fully repacked an hour ago."""
    now = time.time()
    seen = now - 6 * DAY if due else None
    last_full = last_full if due or last_full is not None else now - 3600
    history = RepoHistory(last_full_repack=last_full, first_seen=seen)
    return plan(state, POLICY, GIT.version(), time.time(), history)


def refs(path: Path) -> str:
    return run_git(path, "for-each-ref", "--format=%(objectname) %(refname) %(symref)")


def files(path: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = Path(dirpath, name)
            st = full.lstat()
            out[str(full.relative_to(path))] = (st.st_size, st.st_mtime)
    out.pop(LOCK_NAME, None)
    return out


def assert_optimised(repo: Repository, result: ExecutionResult, before: str) -> None:
    path = repo.git_dir
    assert result.outcome == "ok", result
    assert all(t.outcome == "ok" for t in result.tasks), result.tasks
    counts = git_count_objects(path)
    # a few loose objects (under the policy's limit) get no repack of their own: with git
    # 2.39 no bitmap is missing either (test_repack_race.py), so many_refs keeps its 30
    repacked = any(t.kind.endswith("_repack") for t in result.tasks)
    assert (counts["count"] == 0 or not repacked) and counts["packs"] <= 3, counts
    info = path / "objects" / "info"
    assert (info / "commit-graph").exists() or (info / "commit-graphs").is_dir()
    state = inspect(repo)
    assert state.loose_refs - state.symbolic_refs <= POLICY.loose_refs_min
    assert refs(path) == before
    run_git(path, "fsck", "--strict")  # raises on any problem
    again = plan_for(state, last_full=time.time())
    assert again.tasks == (), again


@pytest.mark.parametrize("due", [True, False], ids=["full-due", "cooldown"])
@pytest.mark.parametrize("name", NEGLECTED)
def test_each_neglected_fixture_ends_optimised(
    fleet: Fleet, tmp_path: Path, name: str, due: bool
) -> None:
    repo = copy(getattr(fleet, name), tmp_path)
    audit = AuditLog(tmp_path / "state" / "audit.jsonl")
    before = refs(repo.git_dir)
    p = plan_for(inspect(repo), due=due)
    assert p.tasks
    if name == "many_packs":  # small: repacked whole whenever the last full repack ran
        assert "full_repack" in [t.kind for t in p.tasks], p
    result = execute(repo, p, GIT, audit, now=time.time())
    assert_optimised(repo, result, before)
    assert result.bytes_before > 0 and result.bytes_after > 0
    entries = list(audit.entries())
    assert [e.action for e in entries] == [f"maintain.{t.kind}" for t in p.tasks]
    assert all(e.target == str(repo.path) and e.details["outcome"] == "ok" for e in entries)
    assert {"reason", "outcome", "duration"} <= set(entries[0].details)
    assert audit.verify().ok
    if name == "many_refs":
        assert inspect(repo).loose_refs == 0


def test_stale_files_go_but_a_fresh_lock_stays(fleet: Fleet, tmp_path: Path) -> None:
    repo = copy(fleet.stale_files, tmp_path)
    p = plan_for(inspect(repo))
    result = execute(repo, p, GIT, None, now=time.time())
    assert result.tasks[0].kind == "remove_stale_files" and result.tasks[0].outcome == "ok"
    assert (repo.git_dir / "refs/heads/fresh.lock").exists()
    for rel in ("refs/heads/main.lock", "packed-refs.lock", "config.lock",
                "objects/pack/tmp_pack_Xq3b9Z", "objects/pack/tmp_idx_Lm2c8Y",
                "objects/ab/tmp_obj_Tr5d7W"):  # fmt: skip
        assert not (repo.git_dir / rel).exists(), rel


def test_dependents_of_a_pool_still_pass_fsck(fleet_copy: Fleet) -> None:
    pool = fleet_copy.pool
    # Commits only the forks still need: unreachable in the pool, reachable in each fork.
    run_git(pool, "update-ref", "refs/heads/main", "refs/heads/main~10")
    found = link_borrowers([inspect(r) for r in discover([fleet_copy.root]).repositories])
    state = next(s for s in found if s.relative == "pool.git")
    assert state.borrowed_by
    p = plan_for(replace(state, packs=12, loose_objects=5000))  # as a busy pool
    assert "full_repack" in [t.kind for t in p.tasks]
    assert not any(t.drops_unreachable for t in p.tasks)
    before = refs(pool)
    result = execute(bare(pool), p, GIT, None, now=time.time())
    assert result.outcome == "ok", result
    assert refs(pool) == before
    for fork in fleet_copy.dependents:
        run_git(fork, "fsck", "--strict")


def test_a_corrupt_repository_is_left_untouched(fleet: Fleet, tmp_path: Path) -> None:
    repo = copy(fleet.loose, tmp_path)
    tree = run_git(repo.git_dir, "rev-parse", "refs/heads/main^{tree}").strip()
    (repo.git_dir / "objects" / tree[:2] / tree[2:]).unlink()
    p = plan_for(inspect(repo))
    assert any(t.drops_unreachable for t in p.tasks)
    snapshot = files(repo.git_dir)
    audit = AuditLog(tmp_path / "audit.jsonl")
    result = execute(repo, p, GIT, audit, now=time.time())
    assert result.outcome == "failed" and "connectivity" in result.message
    assert all(t.outcome == "skipped" for t in result.tasks)
    assert files(repo.git_dir) == snapshot
    assert list(audit.entries()) == []


def test_a_locked_repository_raises(fleet: Fleet, tmp_path: Path) -> None:
    repo = copy(fleet.many_packs, tmp_path)
    p = plan_for(inspect(repo))
    with repository_lock(repo.git_dir, "test"), pytest.raises(LockedError):
        execute(repo, p, GIT, None, now=time.time())


class FailingRepack(Git):
    def run(self, args: Sequence[str], **kwargs: Any) -> GitResult:
        if args[0] == "repack":
            raise GitError("git repack failed in x (exit 128): fatal: out of memory")
        return super().run(args, **kwargs)


def test_a_failing_task_stops_the_object_tasks(fleet: Fleet, tmp_path: Path) -> None:
    repo = copy(fleet.many_packs, tmp_path)
    p = plan_for(inspect(repo))
    kinds = [t.kind for t in p.tasks]
    assert kinds[0] == "full_repack" and "write_commit_graph" in kinds
    before = refs(repo.git_dir)
    audit = AuditLog(tmp_path / "audit.jsonl")
    result = execute(repo, p, FailingRepack(), audit, now=time.time())
    assert result.outcome == "failed" and "out of memory" in result.message
    assert [t.outcome for t in result.tasks] == ["failed"] + ["skipped"] * (len(kinds) - 1)
    assert refs(repo.git_dir) == before
    assert [e.details["outcome"] for e in audit.entries()] == ["failed"]
    assert audit.verify().ok


# --------------------------------------------------------------------------- midx


def _pack_files(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "objects" / "pack").iterdir())


def _clone(source: Path, dest: Path) -> None:
    run_git(None, "clone", "-q", "--mirror", "--no-local", f"file://{source}", dest)
    run_git(dest, "fsck", "--strict", "--no-progress")


class WatchRepack(Git):
    """Records, as each git command starts, whether the multi-pack-index is there."""

    def __init__(self, midx: Path) -> None:
        super().__init__()
        self.midx, self.seen = midx, []

    def run(self, args: Sequence[str], **kwargs: Any) -> GitResult:
        self.seen.append((args[0], self.midx.exists()))
        return super().run(args, **kwargs)


def test_a_full_repack_leaves_one_pack_with_its_bitmap_and_no_midx(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A multi-pack-index is for several packs: over the one a full repack leaves it cost
    (on a 500 MB repository) 18 s and 108 MB more than none."""
    repo = copy(fleet.many_packs, tmp_path)
    pack = repo.git_dir / "objects" / "pack"
    run_git(repo.git_dir, "multi-pack-index", "write", "--bitmap")  # an old one, as 2.39 reads
    clones = tmp_path / "clones"
    _clone(repo.git_dir, clones / "before.git")  # served from that bitmap
    p = plan_for(inspect(repo))
    full = next(t for t in p.tasks if t.kind == "full_repack")
    assert isinstance(full.args, Repack) and not full.args.write_midx and full.args.write_bitmaps
    git = WatchRepack(pack / "multi-pack-index")
    result = execute(repo, p, git, None, now=time.time())
    assert result.outcome == "ok", result
    # removed before the repack deleted the packs it names
    assert ("repack", False) in git.seen and ("repack", True) not in git.seen, git.seen
    names = _pack_files(repo.git_dir)
    assert not [n for n in names if n.startswith("multi-pack-index")], names
    live = [n[:-5] for n in names if n.endswith(".pack") and f"{n[:-5]}.mtimes" not in names]
    assert len(live) == 1 and f"{live[0]}.bitmap" in names, names
    _clone(repo.git_dir, clones / "after.git")
    assert refs(clones / "after.git") == refs(repo.git_dir)


def _push_on_one_pack(repo: Path) -> Path:
    """One pack with its bitmap (what a full repack leaves), then three pushes' packs."""
    run_git(repo, "repack", "-adq", "--write-bitmap-index")
    (bitmap,) = (repo / "objects" / "pack").glob("pack-*.bitmap")
    for n in range(3):
        stream = history_stream(f"refs/heads/push{n}", 2, start=500 + 10 * n, label=f"p{n} ")
        fast_import(repo, stream)
    return bitmap


def test_a_geometric_repack_still_writes_the_multi_pack_index(fleet: Fleet, tmp_path: Path) -> None:
    repo = copy(fleet.many_packs, tmp_path)
    _push_on_one_pack(repo.git_dir)
    # as if large (its packs are kept), and serving no clones (no bitmaps wanted)
    large = MaintenancePolicy(small_repository=0, write_bitmaps=False)
    p = plan(inspect(repo), large, GIT.version(), time.time(), RepoHistory())
    assert p.tasks[0].kind == "geometric_repack", p
    result = execute(repo, p, GIT, None, now=time.time())
    assert result.outcome == "ok", result
    assert "multi-pack-index" in _pack_files(repo.git_dir)
    run_git(repo.git_dir, "multi-pack-index", "verify")


def test_with_git_2_39_a_geometric_repack_keeps_the_packs_bitmap(
    fleet: Fleet, tmp_path: Path
) -> None:
    """git 2.39's ``repack --geometric --write-midx`` deletes the pack bitmaps (and writes
    no safe multi-pack one): a bare repository served from its pack's bitmap gets none."""
    repo = copy(fleet.many_packs, tmp_path)
    bitmap = _push_on_one_pack(repo.git_dir)
    large = MaintenancePolicy(small_repository=0)
    p = plan(inspect(repo), large, GIT.version(), time.time(), RepoHistory())
    geometric = next(t for t in p.tasks if t.kind == "geometric_repack")
    if GIT.version() >= FEATURES["midx-bitmap-concurrent-repack"]:
        pytest.skip("this git writes a multi-pack bitmap")
    assert isinstance(geometric.args, Repack) and not geometric.args.write_midx
    result = execute(repo, p, GIT, None, now=time.time())
    assert result.outcome == "ok", result
    assert bitmap.exists() and "multi-pack-index" not in _pack_files(repo.git_dir)
    counts = [run_git(repo.git_dir, "rev-list", "--count", "--all", *flag).strip()
              for flag in ((), ("--use-bitmap-index",))]  # fmt: skip
    assert counts[0] == counts[1], counts


def test_midx_removal_follows_no_symlink(tmp_path: Path) -> None:
    objects = tmp_path / "r.git" / "objects"
    (objects / "pack").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "multi-pack-index").write_text("not ours")
    (objects / "pack" / "multi-pack-index").symlink_to(outside / "multi-pack-index")
    (objects / "pack" / "multi-pack-index-abc.bitmap").write_text("b")
    (objects / "pack" / "multi-pack-index-abc.rev").write_text("r")
    (objects / "pack" / "pack-abc.bitmap").write_text("a pack's own: kept")
    assert remove_midx(objects) == 3
    assert _pack_files(objects.parent) == ["pack-abc.bitmap"]
    assert (outside / "multi-pack-index").read_text() == "not ours"
    # a pack directory that is a symlink: never removed through
    (objects / "pack" / "pack-abc.bitmap").unlink()
    (objects / "pack").rmdir()
    (objects / "pack").symlink_to(outside)
    with pytest.raises(OSError, match="without following a symlink"):
        remove_midx(objects)
    assert (outside / "multi-pack-index").exists()
    (outside / "multi-pack-index").unlink()
    assert remove_midx(objects) == 0


def test_repack_commands() -> None:
    limits = PackLimits().sized(0)
    day = 86400.0
    cruft = Repack(True, False, None, "cruft", 14 * day, prune=True)
    full = repack_commands("full_repack", cruft, limits)
    assert full[0][-4:] == ["-a", "--cruft", "--cruft-expiration=1209600.seconds.ago",
                            "--write-bitmap-index"]  # fmt: skip
    assert full[1] == ["prune", "--expire=1209600.seconds.ago"]  # git gc's order
    # no loose object that old: no prune (it would walk every object for nothing)
    assert repack_commands("full_repack", replace(cruft, prune=False), limits) == full[:1]
    loosen = Repack(True, False, None, "loosen", 14 * day)
    assert repack_commands("full_repack", loosen, limits)[1][0] == "prune"
    kept = repack_commands("full_repack", Repack(True, False, None, "keep", None), limits)
    assert len(kept) == 1 and "--keep-unreachable" in kept[0]
    inc = repack_commands("incremental_repack", Repack(expire=14 * day, prune=True), limits)
    assert inc[0][:5] == ["repack", "-q", "-d", "-l", f"--window-memory={limits.window_memory}"]
    assert inc[1] == ["prune", "--expire=1209600.seconds.ago"]
    assert len(repack_commands("incremental_repack", Repack(), limits)) == 1
    geo = repack_commands("geometric_repack", Repack(False, True, 2), limits)
    assert geo == [[*geo[0][:6], "--geometric=2", "--write-midx"]]


def test_an_empty_plan_runs_nothing(fleet: Fleet) -> None:
    result = execute(bare(fleet.empty), plan_for(inspect(bare(fleet.empty))), GIT, None, now=0)
    assert result.outcome == "skipped" and result.tasks == ()
    assert not (fleet.empty / LOCK_NAME).exists()


# --------------------------------------------------------------------------- the rules


def snap(refs: dict[str, str], head: str = "ref:refs/heads/main") -> RefSnapshot:
    return RefSnapshot(head, refs, {})


def test_concurrent_pushes_are_not_data_loss() -> None:
    before = snap({"refs/heads/main": "a", "refs/heads/old": "b"})
    pushed = snap({"refs/heads/main": "c", "refs/heads/new": "d"})  # moved, deleted, created
    assert compare(before, pushed, lambda oids: set(), dropped=False) == []
    # the client made b unreachable and the repack expired it: gc semantics, not loss
    assert compare(before, pushed, lambda oids: {"b"}, dropped=True) == []
    assert compare(before, pushed, lambda oids: {"b"}, dropped=False) != []


def test_lost_objects_and_changed_symbolic_refs_are_caught() -> None:
    before = RefSnapshot("ref:refs/heads/main", {"refs/heads/main": "a", "s": "a"}, {"s": "m"})
    assert compare(before, before, lambda oids: {"a"}, dropped=True)
    moved = RefSnapshot("ref:refs/heads/main", {"refs/heads/main": "a", "s": "a"}, {"s": "x"})
    assert compare(before, moved, lambda oids: set(), dropped=False)
    detached = RefSnapshot("a", before.refs, before.symrefs)
    assert compare(before, detached, lambda oids: set(), dropped=False)


def test_stale_files_never_leave_the_git_dir(tmp_path: Path) -> None:
    git_dir, outside = tmp_path / "r.git", tmp_path / "outside"
    (git_dir / "objects").mkdir(parents=True)
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    (git_dir / "objects" / "evil").symlink_to(outside)
    (git_dir / "link.lock").symlink_to(outside / "victim")
    (git_dir / "old.lock").write_text("x")
    (git_dir / "touched.lock").write_text("x")
    old = time.time() - 86400
    os.utime(git_dir / "old.lock", (old, old))
    planned = [TempFile(p, 1, old) for p in ("objects/evil/victim", "../outside/victim",
                                              "link.lock", "old.lock", "touched.lock")]  # fmt: skip
    outcome, message = remove_stale_files(git_dir, StaleFiles(tuple(planned)), time.time())
    assert outcome == "ok" and message.startswith("removed 1 of 5")
    assert (outside / "victim").read_text() == "keep me"
    assert not (git_dir / "old.lock").exists() and (git_dir / "touched.lock").exists()
    assert (git_dir / "link.lock").is_symlink()


class PushDuringRepack(Git):
    """A client pushes while the repack runs: a branch created, one deleted, one moved."""

    def run(self, args: Sequence[str], **kwargs: Any) -> GitResult:
        repo = kwargs.get("repo")
        if args[0] == "repack" and repo is not None:
            stdin = (
                "create refs/heads/pushed refs/heads/main~1\n"
                "delete refs/heads/feature/000\n"
                "update refs/heads/feature/001 refs/heads/main~2\n"
            )
            run_git(repo, "update-ref", "--stdin", input=stdin.encode())
        return super().run(args, **kwargs)


def test_concurrent_pushes_do_not_false_alarm(fleet: Fleet, tmp_path: Path) -> None:
    repo = copy(fleet.many_refs, tmp_path)
    run_git(repo.git_dir, "repack", "-q")  # a second pack: a full repack is due
    p = plan_for(inspect(repo))
    assert any(t.kind.endswith("_repack") for t in p.tasks)
    result = execute(repo, p, PushDuringRepack(), None, now=time.time())
    assert result.outcome == "ok", result
    names = refs(repo.git_dir)
    assert "refs/heads/pushed" in names and "refs/heads/feature/000\n" not in names
    run_git(repo.git_dir, "fsck", "--strict")


class LosesData(Git):
    """A broken maintenance step: HEAD re-pointed, or every pack deleted, after a repack."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def run(self, args: Sequence[str], **kwargs: Any) -> GitResult:
        result = super().run(args, **kwargs)
        repo = kwargs.get("repo")
        if args[0] == "repack" and repo is not None:
            if self.how == "head":
                run_git(repo, "symbolic-ref", "HEAD", "refs/heads/elsewhere")
            else:
                for pack in (repo / "objects" / "pack").glob("pack-*"):
                    pack.unlink()
        return result


@pytest.mark.parametrize(("how", "expected"), [("head", "HEAD changed"), ("packs", "missing")])
def test_data_loss_is_reported_loudly(
    fleet: Fleet, tmp_path: Path, how: str, expected: str
) -> None:
    repo = copy(fleet.loose, tmp_path)
    result = execute(repo, plan_for(inspect(repo)), LosesData(how), None, now=time.time())
    assert result.outcome == "failed"
    assert result.message.startswith("DATA SAFETY CHECK FAILED") and expected in result.message
