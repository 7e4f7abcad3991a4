"""The maintenance planner: every rule on hand-built states, properties, and the real fleet."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custode.config.maintenance import DAY, HOUR, MIB, MaintenancePolicy
from custode.git.runner import GitVersion
from custode.maintenance.planner import (
    CommitGraph,
    Plan,
    PruneWorktrees,
    Repack,
    RepoHistory,
    StaleFiles,
    Task,
    TaskKind,
    plan,
)
from custode.scan.discovery import discover
from custode.scan.objectstore import TempFile
from custode.scan.repostate import RepoState, inspect, link_borrowers
from fixtures.builders import Fleet

NOW = 1_750_000_000.0
GIT = GitVersion(2, 39)
POLICY = MaintenancePolicy()
ORDER = list(get_args(TaskKind))  # TaskKind lists the tasks in the order they run
REPACKS = {"incremental_repack", "geometric_repack", "full_repack"}

#: A bare repository that needs nothing: one pack with a bitmap, a commit-graph with
#: Bloom filters, refs packed.
OPTIMISED = RepoState(
    path="/srv/r.git", relative="r.git", root="/srv", git_dir="/srv/r.git", kind="bare",
    bare=True, object_format="sha1", head="refs/heads/main", loose_objects=0,
    loose_objects_bytes=0, packs=1, pack_bytes=100 * MIB, packed_objects=50000,
    largest_pack_bytes=100 * MIB, base_pack_bytes=100 * MIB, kept_packs=0, cruft_packs=0, pack_bitmaps=1,
    multi_pack_index=False, midx_packs=0, midx_bitmap=False, commit_graph=True,
    commit_graph_chain=1, commit_graph_changed_paths=True, loose_refs=0, packed_refs=40,
    refs=40, symbolic_refs=0, garbage_files=0, garbage_bytes=0, temp_files=(), alternates=(),
    borrowed_by=(), superproject=None, worktrees=0, prunable_worktrees=0, dead_worktree_mtime=0.0, gc_log=False,
    size_bytes=101 * MIB, newest_mtime=NOW - DAY, newest_pack_mtime=NOW - DAY, fingerprint="0" * 32,
    base_pack_mtime=NOW - 30 * DAY, oldest_cruft_mtime=0.0,
)  # fmt: skip


def state(**changes: Any) -> RepoState:
    """OPTIMISED with ``changes``."""
    return replace(OPTIMISED, **changes)


def run(
    s: RepoState, *, git: GitVersion = GIT, last_full: float | None = None, **policy: Any
) -> Plan:
    history = RepoHistory(last_full_repack=last_full)
    return plan(s, POLICY.model_copy(update=policy), git, NOW, history)


def kinds(p: Plan) -> list[str]:
    return [t.kind for t in p.tasks]


def task(p: Plan, kind: str) -> Task:
    return next(t for t in p.tasks if t.kind == kind)


def temp(path: str, age: float) -> TempFile:
    return TempFile(path, 10, NOW - age)


# --------------------------------------------------------------------------- whole plans


def test_optimised_repositories_get_an_empty_plan() -> None:
    for s in (OPTIMISED, state(kind="working", bare=False, pack_bitmaps=0)):
        p = run(s, last_full=None)
        assert p.tasks == () and p.skipped_reason == "nothing to do: already optimised"


def test_empty_repository() -> None:
    p = run(state(packs=0, pack_bytes=0, pack_bitmaps=0, commit_graph=False, refs=0,
                  packed_refs=0, commit_graph_chain=0))  # fmt: skip
    assert p.tasks == () and p.skipped_reason == "nothing to do: empty repository"


def test_a_broken_repository_is_left_untouched() -> None:
    wreck = state(problems=("HEAD is missing",), loose_objects=10**6, packs=90, loose_refs=10**4,
                  temp_files=(temp("config.lock", 9 * DAY),), commit_graph=False)  # fmt: skip
    p = run(wreck)
    assert p.tasks == () and p.skipped_reason == "left untouched: HEAD is missing"


def test_tasks_run_cleanup_then_refs_then_objects_then_commit_graph() -> None:
    p = run(state(temp_files=(temp("HEAD.lock", 2 * HOUR),), prunable_worktrees=1,
                  loose_refs=500, packs=9, commit_graph=False))  # fmt: skip
    assert kinds(p) == ["remove_stale_files", "prune_worktrees", "pack_refs", "geometric_repack",
                        "write_commit_graph"]  # fmt: skip


def test_tasks_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="Repack"):
        Task("full_repack", "why", CommitGraph("replace", True))
    with pytest.raises(ValueError, match="reason"):
        Task("pack_refs", "")


# --------------------------------------------------------------------------- objects


def test_loose_objects_are_packed_above_the_threshold() -> None:
    assert run(state(loose_objects=1024)).tasks == ()
    p = run(state(loose_objects=7412), last_full=NOW - HOUR)  # full repack not due
    assert kinds(p) == ["incremental_repack", "write_commit_graph"]
    inc = task(p, "incremental_repack")
    assert "7,412 loose objects > 1,024" in inc.reason and inc.args == Repack()
    assert task(p, "write_commit_graph").args == CommitGraph("incremental", True)


def test_a_repository_without_packs_gets_a_full_repack() -> None:
    p = run(state(packs=0, pack_bytes=0, pack_bitmaps=0, loose_objects=3040))
    full = task(p, "full_repack")
    assert "no pack yet" in full.reason
    # one pack: its own bitmap, no multi-pack-index
    assert full.args == Repack(True, False, None, "cruft", 14 * DAY) and full.drops_unreachable
    assert full.reason.endswith("cruft pack, dropped after 2w")  # none loose that old
    old = task(run(state(packs=0, pack_bytes=0, pack_bitmaps=0, loose_objects=3040,
                         oldest_loose_mtime=NOW - 30 * DAY)), "full_repack")  # fmt: skip
    assert old.args == Repack(True, False, None, "cruft", 14 * DAY, prune=True)
    assert old.reason.endswith("cruft pack, dropped after 2w (loose ones that old are pruned)")


@pytest.mark.parametrize("last_full", [None, NOW - 60 * DAY, NOW - 6 * DAY, NOW - DAY])
def test_a_large_repository_keeps_its_well_formed_pack(last_full: float | None) -> None:
    """However long since the last full repack: geometric repacks on top (deltas reused)."""
    for base in (NOW - 90 * DAY, NOW - HOUR):
        # git 2.39, bare: no multi-pack-index, which would delete the largest pack's bitmap
        p = run(state(packs=9, base_pack_mtime=base), last_full=last_full)
        assert kinds(p) == ["geometric_repack", "write_commit_graph"]
        assert p.tasks[0].reason.startswith("9 packs > 7 for 100.0 MiB of packs")
        assert p.tasks[0].args == Repack(False, False, 2) and not p.tasks[0].drops_unreachable
        assert any("no multi-pack-index: with git 2.39.0 it would delete" in n for n in p.notes)
        p = run(state(packs=3, kind="working", bare=False), last_full=last_full)
        assert p.tasks[0].reason.startswith("3 packs and no multi-pack-index")
        assert p.tasks[0].args == Repack(False, True, 2)
    p = run(state(loose_objects=7412), last_full=last_full)
    assert kinds(p)[0] == "incremental_repack"
    assert run(state(base_pack_mtime=NOW - 90 * DAY), last_full=last_full).tasks == ()


def test_a_small_repository_is_repacked_whole_whenever_a_repack_is_due() -> None:
    small = state(pack_bytes=10 * MIB, largest_pack_bytes=10 * MIB, base_pack_bytes=10 * MIB)
    assert run(small).tasks == ()
    assert run(replace(small, packs=3)).tasks == ()  # the limit at 10 MiB
    for s in (replace(small, packs=4), replace(small, loose_objects=7412)):
        p = run(s, last_full=NOW - HOUR)
        assert kinds(p) == ["full_repack", "write_commit_graph"]
        assert "10.0 MiB < 16 MiB: repacked whole" in p.tasks[0].reason
    assert kinds(run(replace(small, packs=4), small_repository=MIB))[0] == "geometric_repack"


def test_a_large_repository_is_repacked_whole_only_for_what_it_buys() -> None:
    # its packs serve clones badly: the largest holds less than half of the bytes
    spread = state(packs=4, base_pack_bytes=40 * MIB)
    p = run(spread, last_full=NOW - 6 * DAY)
    assert kinds(p)[0] == "full_repack"
    assert p.tasks[0].reason.startswith(
        "the largest of 4 packs holds 40.0 of 100.0 MiB (< half): they serve clones badly, "
        "last full repack 6 days ago"
    )
    # at most once a cooldown (git's pack.packSizeLimit can leave several packs)
    assert "full_repack" not in kinds(run(spread, last_full=NOW - HOUR))
    # a cruft pack does not count: it is not rewritten
    cruft = state(packs=3, cruft_packs=1, cruft_pack_bytes=60 * MIB, base_pack_bytes=30 * MIB,
                  oldest_cruft_mtime=NOW - DAY)  # fmt: skip
    assert "full_repack" not in kinds(run(cruft, last_full=NOW - DAY))
    # a bare repository without a bitmap, on a git that writes no multi-pack bitmap: its
    # own, once a cooldown has passed since the last full repack
    bare = state(pack_bitmaps=0)
    p = run(bare, last_full=NOW - 6 * DAY)
    assert kinds(p)[0] == "full_repack" and p.tasks[0].reason.startswith(
        "no reachability bitmap (git 2.39.0 writes none into a multi-pack-index)"
    )
    assert isinstance(p.tasks[0].args, Repack) and p.tasks[0].args.write_bitmaps
    assert run(bare, last_full=NOW - DAY).tasks == ()
    geometric = run(bare, git=GitVersion(2, 42), last_full=NOW - 6 * DAY)
    assert kinds(geometric)[0] == "geometric_repack"
    unknown = state(packs=0, pack_bytes=0, loose_objects=3000, base_pack_mtime=0.0)
    assert kinds(run(unknown))[0] == "full_repack"


def test_old_loose_objects_are_packed_or_pruned() -> None:
    """Loose objects older than the cruft expiration: the reachable ones packed, the
    unreachable ones pruned (a cruft repack leaves them loose)."""
    stray = state(loose_objects=12, loose_objects_bytes=48 * 1024,
                  oldest_loose_mtime=NOW - 90 * DAY)  # fmt: skip
    p = run(stray, last_full=NOW - HOUR)
    assert kinds(p) == ["incremental_repack", "write_commit_graph"]
    inc = p.tasks[0]
    assert inc.reason == (
        "loose objects up to 90 days old > the 2w expiration: the reachable ones are packed; "
        "unreachable loose objects older than 2w are pruned"
    )
    assert inc.args == Repack(expire=14 * DAY, prune=True) and inc.drops_unreachable
    assert task(p, "write_commit_graph").args == CommitGraph("replace", True)
    small = replace(stray, pack_bytes=MIB, largest_pack_bytes=MIB, base_pack_bytes=MIB)
    full = task(run(small, last_full=NOW - HOUR), "full_repack")
    assert full.drops_unreachable and "repacked whole" in full.reason
    assert run(replace(stray, oldest_loose_mtime=NOW - 13 * DAY)).tasks == ()
    assert run(stray, cruft_expiration=None).tasks == ()
    assert run(replace(stray, borrowed_by=("fork.git",))).tasks == ()
    unsure = plan(stray, POLICY, GIT, NOW, None, unsure_borrowers="a root was not scanned")
    assert unsure.tasks == ()


def test_an_old_cruft_pack_is_expired_by_a_full_repack() -> None:
    cruft = state(packs=2, cruft_packs=1, oldest_cruft_mtime=NOW - 15 * DAY)
    p = run(cruft, last_full=NOW - 6 * DAY)
    assert kinds(p)[0] == "full_repack" and p.tasks[0].drops_unreachable
    assert "cruft pack 15 days old: its expired objects go" in p.tasks[0].reason
    assert run(cruft, last_full=NOW - DAY).tasks == ()  # the cooldown still applies
    young = replace(cruft, oldest_cruft_mtime=NOW - 13 * DAY)
    assert run(young, last_full=NOW - 6 * DAY).tasks == ()
    assert run(cruft, last_full=NOW - 6 * DAY, cruft_expiration=None).tasks == ()
    assert run(replace(cruft, borrowed_by=("f.git",)), last_full=NOW - 6 * DAY).tasks == ()


def test_a_repository_unchanged_since_its_last_maintenance_is_skipped() -> None:
    neglected = state(loose_objects=9000, loose_refs=500)
    fp = neglected.fingerprint
    done = RepoHistory(last_success=NOW - DAY, fingerprint=fp)
    p = plan(neglected, POLICY, GIT, NOW, done)
    assert p.tasks == () and p.skipped_reason == (
        "nothing to do: unchanged since its last maintenance 1 day ago"
    )
    changed = replace(neglected, fingerprint="1" * 32)
    assert plan(changed, POLICY, GIT, NOW, done).tasks  # a push since
    old = RepoHistory(last_success=NOW - 8 * DAY, fingerprint=fp)  # revisit_after: 7d
    assert plan(neglected, POLICY, GIT, NOW, old).tasks
    broken = replace(neglected, problems=("HEAD is missing",))
    assert (plan(broken, POLICY, GIT, NOW, done).skipped_reason or "").startswith("left untouched")


def test_geometric_repack_when_too_many_packs_are_outside_the_midx() -> None:
    recent = NOW - DAY
    # a pack bitmap, not a multi-pack one: git 2.39 gets no multi-pack bitmap (test_repack_race)
    tracked = state(packs=10, multi_pack_index=True, midx_packs=3)
    assert run(tracked, last_full=recent).tasks == ()  # 7 untracked: the limit at 100 MiB
    p = run(replace(tracked, packs=11), last_full=recent)
    assert kinds(p) == ["geometric_repack", "write_commit_graph"]
    assert "8 packs outside the multi-pack-index > 7" in p.tasks[0].reason


def test_kept_and_cruft_packs_are_not_repack_candidates() -> None:
    assert run(state(packs=3, kept_packs=1, cruft_packs=1)).tasks == ()


def test_a_missing_bitmap_is_written_for_bare_repositories_only() -> None:
    p = run(state(pack_bitmaps=0), last_full=NOW - HOUR, git=GitVersion(2, 42))
    assert kinds(p) == ["geometric_repack", "write_commit_graph"]
    assert p.tasks[0].reason.startswith("no reachability bitmap")
    assert run(state(pack_bitmaps=0, kind="working", bare=False)).tasks == ()
    assert run(state(pack_bitmaps=0), write_bitmaps=False).tasks == ()


def test_borrowers_get_no_bitmaps() -> None:
    borrower = state(pack_bitmaps=0, alternates=("/srv/pool.git/objects",))
    p = run(borrower)
    assert p.tasks == () and any("no bitmaps" in n for n in p.notes)
    for s in (replace(borrower, packs=4), replace(borrower, packs=0, loose_objects=5000)):
        repack = next(t for t in run(s).tasks if t.kind in REPACKS)
        assert isinstance(repack.args, Repack) and not repack.args.write_bitmaps


def test_a_borrowed_from_repository_never_drops_objects() -> None:
    pool = state(borrowed_by=("fork-1.git", "fork-2.git"), packs=9, loose_objects=9000,
                 pack_bytes=MIB, base_pack_bytes=MIB // 4)  # fmt: skip
    p = run(pool)
    full = task(p, "full_repack")
    assert full.args == Repack(True, False, None, "keep", None) and not full.drops_unreachable
    assert "kept: fork-1.git, fork-2.git borrow from it" in full.reason
    assert "objects borrowed by fork-1.git, fork-2.git: never pruned" in p.notes
    assert task(p, "write_commit_graph").args == CommitGraph("incremental", True)


def test_cruft_expiration_by_policy_and_git_version() -> None:
    many = state(packs=4, base_pack_bytes=10 * MIB)
    assert task(run(many, cruft_expiration=None), "full_repack").args == Repack(
        True, False, None, "cruft", None
    )
    old = task(run(many, git=GitVersion(2, 36)), "full_repack")
    assert old.args == Repack(True, False, None, "loosen", 14 * DAY)
    assert "loosened, pruned after 2w (git 2.36.0)" in old.reason
    graph = task(run(many), "write_commit_graph")
    assert graph.args == CommitGraph("replace", True)  # the repack may drop listed commits


def test_git_without_geometric_repack_falls_back() -> None:
    old, recent = GitVersion(2, 31), NOW - DAY
    p = run(state(packs=3), git=old, last_full=recent)
    assert kinds(p) == ["write_midx"]  # git maintenance's incremental-repack, first step
    p = run(state(packs=6, pack_bytes=MIB), git=old, last_full=recent)
    assert kinds(p)[0] == "full_repack" and "6 packs > 5" in p.tasks[0].reason
    assert task(p, "full_repack").args == Repack(True, False, None, "loosen", 14 * DAY)
    assert kinds(run(state(packs=11), git=GitVersion(2, 33), last_full=recent)) == [
        "geometric_repack", "write_midx", "write_commit_graph"
    ]  # fmt: skip


def test_commit_graph_features_follow_the_git_version() -> None:
    s = state(commit_graph=False, commit_graph_chain=0, commit_graph_changed_paths=False)
    assert task(run(s), "write_commit_graph").args == CommitGraph("replace", True)
    for minor, args in ((26, CommitGraph("replace", False)), (22, CommitGraph("none", False))):
        assert task(run(s, git=GitVersion(2, minor)), "write_commit_graph").args == args
    assert run(state(commit_graph_changed_paths=False), git=GitVersion(2, 26)).tasks == ()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"commit_graph": False, "commit_graph_chain": 0}, "no commit-graph"),
        ({"commit_graph_chain": 21}, "a chain of 21 layers > 20"),
        ({"commit_graph_changed_paths": False}, "no changed-path Bloom filters"),
    ],
)
def test_commit_graph_is_rewritten_when_missing_or_stale(changes: Any, reason: str) -> None:
    graph = task(run(state(**changes)), "write_commit_graph")
    assert graph.reason == reason and graph.args == CommitGraph("replace", True)
    assert run(state(**changes, refs=0, packed_refs=0)).tasks == ()  # nothing to index


# --------------------------------------------------------------------------- refs and files


def test_loose_refs_are_packed_above_a_size_scaled_limit() -> None:
    assert run(state(loose_refs=16, packed_refs=0)).tasks == ()
    assert "17 loose refs > 16" in run(state(loose_refs=17, packed_refs=0)).tasks[0].reason
    assert run(state(loose_refs=49, packed_refs=1000)).tasks == ()
    assert kinds(run(state(loose_refs=50, packed_refs=1000))) == ["pack_refs"]
    assert run(state(loose_refs=40, symbolic_refs=30, packed_refs=0)).tasks == ()


def test_only_old_lock_and_temporary_files_are_stale() -> None:
    files = (
        temp("refs/heads/main.lock", 2 * HOUR), temp("refs/heads/fresh.lock", 30),
        temp("objects/pack/tmp_pack_1", 2 * HOUR), temp("objects/pack/tmp_pack_2", 2 * DAY),
        temp("objects/incoming-Ab12", 3 * DAY), temp("gc.pid", 13 * HOUR),
    )  # fmt: skip
    p = run(state(temp_files=files))
    stale = task(p, "remove_stale_files")
    assert isinstance(stale.args, StaleFiles)
    assert [f.path for f in stale.args.files] == [
        "refs/heads/main.lock", "objects/pack/tmp_pack_2", "objects/incoming-Ab12", "gc.pid"
    ]  # fmt: skip
    assert stale.args.files[0].mtime == NOW - 2 * HOUR  # the executor re-checks it
    assert (
        "1 lock older than 1h" in stale.reason and "2 temporary files older than 1d" in stale.reason
    )


def test_a_held_packed_refs_lock_or_gc_pid_defers_that_work() -> None:
    busy = state(loose_refs=500, temp_files=(temp("packed-refs.lock", 60),))
    p = run(busy)
    assert p.tasks == () and any("packed-refs.lock is held" in n for n in p.notes)
    stale = replace(busy, temp_files=(temp("packed-refs.lock", 2 * HOUR),))
    assert kinds(run(stale)) == ["remove_stale_files", "pack_refs"]
    gc = state(loose_objects=5000, temp_files=(temp("gc.pid", 600),))
    assert run(gc).tasks == () and any("git gc is running" in n for n in run(gc).notes)


def test_dead_worktrees_are_pruned_with_gits_expiry() -> None:
    """As git: once the index of one is older than the expiry (at once without an index),
    not every run before that (the prune would do nothing)."""
    prune = task(run(state(prunable_worktrees=2)), "prune_worktrees")
    assert prune.args == PruneWorktrees(90 * DAY) and "2 dead worktrees" in prune.reason
    old = state(prunable_worktrees=1, dead_worktree_mtime=NOW - 91 * DAY)
    assert "one unused for 13w" in task(run(old), "prune_worktrees").reason
    assert run(state(prunable_worktrees=1, dead_worktree_mtime=NOW - DAY)).tasks == ()


def test_unchanged_but_time_may_make_stale() -> None:
    """A lock or dead worktree may turn stale with no change: such repositories are
    planned on every run, never skipped by their fingerprint."""
    lock = state(temp_files=(temp("packed-refs.lock", 2 * HOUR),))
    done = RepoHistory(last_success=NOW - HOUR, fingerprint=lock.fingerprint)
    assert kinds(plan(lock, POLICY, GIT, NOW, done)) == ["remove_stale_files"]


def test_policy_limits_and_validation() -> None:
    assert [POLICY.untracked_pack_limit(n * MIB) for n in (0, 10, 100, 1024, 102400)] == [
        2, 3, 7, 11, 19
    ]  # fmt: skip
    assert [POLICY.pack_limit(n * MIB) for n in (1, 100, 1024)] == [5, 17, 26]
    assert [POLICY.loose_ref_limit(n) for n in (0, 10, 100, 1000)] == [16, 16, 32, 49]
    for bad in ({"packs_growth": 1.0}, {"stale_lock_age": -1.0}, {"geometric_factor": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MaintenancePolicy(**bad)


# --------------------------------------------------------------------------- properties

_count, _few = st.integers(0, 10**7), st.integers(0, 60)
_names = st.lists(st.sampled_from(["a.git", "b.git", "c.git", "d.git"]), max_size=4, unique=True)
_temp_paths = ["config.lock", "packed-refs.lock", "gc.pid", "refs/heads/x.lock", "objects/ab/tmp_1",
               "objects/pack/tmp_pack_2", "objects/incoming-3", "objects/pack/x.lock"]  # fmt: skip
_temps = st.lists(
    st.builds(TempFile, st.sampled_from(_temp_paths), _count, st.floats(NOW - 30 * DAY, NOW + DAY)),
    max_size=6,
)
STATES = st.builds(
    state, kind=st.sampled_from(["bare", "working", "submodule"]), loose_objects=_count,
    packs=_few, pack_bytes=st.integers(0, 2**45), kept_packs=_few, cruft_packs=_few,
    pack_bitmaps=_few, multi_pack_index=st.booleans(), midx_packs=_few, midx_bitmap=st.booleans(),
    commit_graph=st.booleans(), commit_graph_chain=_few, commit_graph_changed_paths=st.booleans(),
    loose_refs=_count, packed_refs=_count, refs=_count, symbolic_refs=_few,
    temp_files=_temps.map(tuple), alternates=_names.map(tuple), borrowed_by=_names.map(tuple),
    prunable_worktrees=_few, problems=st.just(()) | st.tuples(st.text(min_size=1)),
)  # fmt: skip
POLICIES = st.builds(
    MaintenancePolicy, loose_objects=_count, full_repack_cooldown=st.floats(0, 30 * DAY),
    cruft_expiration=st.none() | st.floats(0, 100 * DAY), write_bitmaps=st.booleans(),
    multi_pack_index=st.booleans(), changed_paths=st.booleans(),
    commit_graph_chain=st.integers(1, 50),
)  # fmt: skip
GITS = st.builds(GitVersion, st.just(2), st.integers(0, 50), st.integers(0, 9))
LAST = st.none() | st.floats(NOW - 60 * DAY, NOW + DAY)


@given(STATES, POLICIES, GITS, LAST)
def test_property_plans_are_sound(
    s: RepoState, pol: MaintenancePolicy, git: GitVersion, last: float | None
) -> None:
    h = RepoHistory(last_full_repack=last)
    p = plan(s, pol, git, NOW, h)  # never raises
    assert p == plan(s, pol, git, NOW, h)  # deterministic
    assert (p.skipped_reason is None) == bool(p.tasks) and all(t.reason for t in p.tasks)
    assert [ORDER.index(k) for k in kinds(p)] == sorted(ORDER.index(k) for k in kinds(p))
    assert sum(k in REPACKS for k in kinds(p)) <= 1
    if s.problems:
        assert p.tasks == () and (p.skipped_reason or "").startswith("left untouched: ")
    if s.borrowed_by:  # nothing that deletes objects (prune_worktrees deletes none)
        assert not any(t.drops_unreachable for t in p.tasks)
    for t in p.tasks:
        if isinstance(t.args, Repack):
            assert not (t.args.write_bitmaps and s.alternates)
        if isinstance(t.args, StaleFiles):
            ages = {"lock": pol.stale_lock_age, "pid": pol.stale_gc_pid_age}
            for f in t.args.files:
                assert NOW - f.mtime > ages.get(f.path.rpartition(".")[2], pol.stale_temp_age)


@given(STATES.map(lambda s: replace(s, problems=())), POLICIES, GITS)
def test_property_the_state_a_plan_leaves_needs_nothing(
    s: RepoState, pol: MaintenancePolicy, git: GitVersion
) -> None:
    after = replace(
        s, loose_objects=0, packs=1, kept_packs=0, cruft_packs=0, multi_pack_index=False,
        pack_bitmaps=int(pol.write_bitmaps and s.kind == "bare" and not s.alternates),
        midx_packs=0, midx_bitmap=False, commit_graph=True, commit_graph_chain=1,
        commit_graph_changed_paths=True, loose_refs=s.symbolic_refs, temp_files=(),
        prunable_worktrees=0,
    )  # fmt: skip
    assert plan(after, pol, git, NOW, None).tasks == ()


# --------------------------------------------------------------------------- the fleet


@pytest.mark.integration
def test_the_fixture_fleet(fleet: Fleet) -> None:
    found = link_borrowers([inspect(r) for r in discover([fleet.root]).repositories])
    states, now = {s.relative: s for s in found}, time.time()
    plans = {name: plan(s, POLICY, GIT, now) for name, s in states.items()}
    assert REPACKS & set(kinds(plans["loose.git"]))
    # small: repacked whole whenever a repack is due, whenever the last full one ran
    assert kinds(plans["many-packs.git"])[0] == "full_repack"
    recent = RepoHistory(last_full_repack=now - DAY)
    assert kinds(plan(states["many-packs.git"], POLICY, GIT, now, recent))[0] == "full_repack"
    assert "pack_refs" in kinds(plans["many-refs.git"])
    stale = task(plans["stale.git"], "remove_stale_files").args
    assert isinstance(stale, StaleFiles)  # not refs/heads/fresh.lock: a running git may own it
    assert {f.path for f in stale.files} == {
        "refs/heads/main.lock", "packed-refs.lock", "config.lock", "objects/ab/tmp_obj_Tr5d7W",
        "objects/pack/tmp_pack_Xq3b9Z", "objects/pack/tmp_idx_Lm2c8Y",
    }  # fmt: skip
    busy_pool = replace(states["pool.git"], packs=12, loose_objects=5000)
    for p in (plans["pool.git"], plan(busy_pool, POLICY, GIT, now)):
        assert not any(t.drops_unreachable for t in p.tasks) and "never pruned" in p.notes[0]
    assert plans["empty.git"].tasks == ()
    # packed.git is optimised but for changed-path Bloom filters, which `git commit-graph
    # write` adds only when asked: one commit-graph rewrite, then nothing.
    assert kinds(plans["packed.git"]) == ["write_commit_graph"]
    assert plans["packed.git"].tasks[0].reason == "no changed-path Bloom filters"
    packed = replace(states["packed.git"], commit_graph_changed_paths=True)
    assert plan(packed, POLICY, GIT, now).tasks == ()
    for p in (plans[f"fork-{n}.git"] for n in (1, 2, 3)):
        assert not any(isinstance(t.args, Repack) and t.args.write_bitmaps for t in p.tasks)
    assert all((p.skipped_reason or "nothing").startswith("nothing") for p in plans.values())
