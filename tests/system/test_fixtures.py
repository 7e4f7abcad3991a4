"""The fixture fleet has every property it promises (checked with git itself)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from fixtures.builders import (
    FLEET_COUNTS,
    STALE_AGE,
    Fleet,
    git_count_objects,
    git_refs,
    run_git,
)
from fixtures.paths import PROJECT

pytestmark = pytest.mark.integration


def _loose_ref_files(git_dir: Path) -> list[Path]:
    return [p for p in (git_dir / "refs").rglob("*") if p.is_file() and p.suffix != ".lock"]


def _packed_refs(git_dir: Path) -> dict[str, str]:
    refs: dict[str, str] = {}
    for line in (git_dir / "packed-refs").read_text().splitlines():
        if line.startswith(("#", "^")):
            continue
        oid, name = line.split(" ", 1)
        refs[name] = oid
    return refs


def _worktrees(repo: Path) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    for block in run_git(repo, "worktree", "list", "--porcelain").strip().split("\n\n"):
        entry: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            entry[key] = value
        entries.append(entry)
    return entries


def test_root_holds_the_fleet_and_nothing_else(fleet: Fleet) -> None:
    top = {p.name for p in fleet.root.iterdir()}
    assert top == {
        "packed.git", "working", "loose.git", "many-packs.git", "many-refs.git", "stale.git",
        "pool.git", "fork-1.git", "fork-2.git", "fork-3.git", "sha256.git", "worktrees-main",
        "worktrees-main-wt1", "empty.git", "super", "outer", "gitlab",
    }  # fmt: skip
    repos = list(fleet.repositories())
    assert len(repos) == len(set(repos)) == 17
    for repo in repos:
        assert repo.is_dir() and repo.is_relative_to(fleet.root), repo


def test_packed_is_healthy_and_fully_packed(fleet: Fleet) -> None:
    repo = fleet.packed
    counts = git_count_objects(repo)
    assert counts["count"] == 0 and counts["packs"] == 1 and counts["in-pack"] > 0
    assert run_git(repo, "rev-parse", "--is-bare-repository").strip() == "true"
    assert (repo / "objects" / "info" / "commit-graph").is_file()
    assert list((repo / "objects" / "pack").glob("*.bitmap"))
    commits = int(run_git(repo, "rev-list", "--count", "refs/heads/main").strip())
    assert commits == FLEET_COUNTS["packed_commits"]
    tags = run_git(repo, "for-each-ref", "--format=%(objecttype) %(refname)", "refs/tags")
    assert "tag refs/tags/v1.0" in tags and "commit refs/tags/light-1" in tags
    # every ref is packed except the symbolic one, which git cannot pack
    assert [p.name for p in _loose_ref_files(repo)] == ["trunk"]
    assert (repo / "refs" / "heads" / "trunk").read_text() == "ref: refs/heads/main\n"
    assert run_git(repo, "symbolic-ref", "refs/heads/trunk").strip() == "refs/heads/main"
    assert set(_packed_refs(repo)) >= {"refs/heads/main", "refs/heads/release", "refs/tags/v3.0"}


def test_working_copy_has_branches_remotes_and_reflogs(fleet: Fleet) -> None:
    repo = fleet.working
    assert (repo / ".git").is_dir()
    refs = git_refs(repo)
    assert {"refs/heads/main", "refs/heads/feature", "refs/remotes/origin/main"} <= set(refs)
    origin_head = repo / ".git" / "refs" / "remotes" / "origin" / "HEAD"
    assert origin_head.read_text() == "ref: refs/remotes/origin/main\n"
    ahead = run_git(repo, "rev-list", "--count", "origin/main..main").strip()
    assert ahead == "2"
    assert run_git(repo, "rev-list", "--count", "main..feature").strip() == "3"
    assert (repo / ".git" / "logs" / "HEAD").is_file()
    assert (repo / ".git" / "logs" / "refs" / "heads" / "feature").is_file()
    # cloned with --no-hardlinks: its objects are its own, not links to packed.git's
    pack = next((repo / ".git" / "objects" / "pack").glob("*.pack"))
    assert pack.stat().st_nlink == 1
    assert run_git(repo, "status", "--porcelain").strip() == ""


def test_loose_has_thousands_of_reachable_loose_objects(fleet: Fleet) -> None:
    counts = git_count_objects(fleet.loose)
    assert counts["count"] >= FLEET_COUNTS["loose_min_objects"]
    assert counts["packs"] == 0 and counts["in-pack"] == 0
    assert not list((fleet.loose / "objects" / "pack").iterdir())
    reachable = run_git(fleet.loose, "rev-list", "--objects", "--all").splitlines()
    assert len(reachable) == counts["count"]


def test_many_packs(fleet: Fleet) -> None:
    counts = git_count_objects(fleet.many_packs)
    assert counts["packs"] >= FLEET_COUNTS["many_packs_min_packs"]
    assert counts["count"] == 0
    pack_dir = fleet.many_packs / "objects" / "pack"
    packs = list(pack_dir.glob("*.pack"))
    assert len(packs) == counts["packs"]
    assert all(p.with_suffix(".idx").is_file() for p in packs)


def test_many_refs_loose_and_packed(fleet: Fleet) -> None:
    repo = fleet.many_refs
    loose = {p.relative_to(repo).as_posix() for p in _loose_ref_files(repo)}
    assert len(loose) >= FLEET_COUNTS["many_refs_min_loose_refs"]
    assert any(r.startswith("refs/heads/") for r in loose)
    assert any(r.startswith("refs/tags/") for r in loose)
    packed = _packed_refs(repo)
    assert len(set(packed) - loose) >= 100
    both = "refs/heads/both"
    assert both in loose and both in packed
    loose_value = (repo / both).read_text().strip()
    assert loose_value != packed[both]
    assert run_git(repo, "rev-parse", both).strip() == loose_value  # loose wins
    assert sorted(git_refs(repo)) == sorted(loose | set(packed))
    types = run_git(repo, "for-each-ref", "--format=%(objecttype) %(refname)").splitlines()
    annotated = {line.split()[1] for line in types if line.startswith("tag ")}
    assert annotated & loose and annotated & set(packed)


def test_stale_files(fleet: Fleet) -> None:
    repo = fleet.stale_files
    now = time.time()
    stale = [
        repo / "refs" / "heads" / "main.lock",
        repo / "packed-refs.lock",
        repo / "config.lock",
        *(repo / "objects" / "pack").glob("tmp_pack_*"),
        *(repo / "objects" / "pack").glob("tmp_idx_*"),
        *(repo / "objects" / "ab").glob("tmp_obj_*"),
    ]
    assert len(stale) == 6
    lone = [
        p for p in (repo / "objects" / "pack").glob("*.pack") if not p.with_suffix(".idx").exists()
    ]
    assert len(lone) == 1
    for path in [*stale, *lone]:
        assert abs(now - path.stat().st_mtime - STALE_AGE) < 3600, path
    fresh = repo / "refs" / "heads" / "fresh.lock"
    assert now - fresh.stat().st_mtime < 3600
    counts = git_count_objects(repo)
    assert counts["garbage"] == 4  # tmp_pack, tmp_idx, tmp_obj, the lone .pack
    assert counts["packs"] == 1
    # the locks are real obstacles to git
    with pytest.raises(RuntimeError, match=r"main\.lock"):
        run_git(repo, "update-ref", "refs/heads/main", "refs/heads/main~1")


def test_pool_and_dependents(fleet: Fleet) -> None:
    assert len(fleet.dependents) == FLEET_COUNTS["forks"]
    pool_objects = (fleet.pool / "objects").resolve()
    kinds = []
    for fork in fleet.dependents:
        alternates = (fork / "objects" / "info" / "alternates").read_text().strip()
        kinds.append(os.path.isabs(alternates))
        assert ((fork / "objects") / alternates).resolve() == pool_objects
        own = git_count_objects(fork)
        assert own["count"] > 0 and own["packs"] == 0  # only its own commits are local
        branch = f"refs/heads/{fork.name.removesuffix('.git')}"
        assert run_git(fork, "rev-list", "--count", f"refs/heads/main..{branch}").strip() == "3"
    assert kinds.count(False) == 1 and kinds.count(True) == 2
    assert git_count_objects(fleet.pool)["count"] == 0


def test_sha256(fleet: Fleet) -> None:
    repo = fleet.sha256
    assert run_git(repo, "rev-parse", "--show-object-format").strip() == "sha256"
    counts = git_count_objects(repo)
    assert counts["count"] > 0 and counts["packs"] >= 1
    head = run_git(repo, "rev-parse", "refs/heads/main").strip()
    assert len(head) == 64


def test_worktrees(fleet: Fleet) -> None:
    entries = _worktrees(fleet.worktrees)
    assert entries[0]["worktree"] == str(fleet.worktrees)
    linked = entries[1:]
    assert len(linked) == 2
    assert [e["worktree"] for e in linked] == [str(fleet.worktree_live), str(fleet.worktree_pruned)]
    assert ["prunable" in e for e in linked] == [False, True]
    assert not fleet.worktree_pruned.exists()
    link = (fleet.worktree_live / ".git").read_text()
    assert link == f"gitdir: {fleet.worktrees}/.git/worktrees/{fleet.worktree_live.name}\n"


def test_empty(fleet: Fleet) -> None:
    assert git_refs(fleet.empty) == []
    assert (fleet.empty / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert git_count_objects(fleet.empty)["count"] == 0


def test_submodule_is_absorbed(fleet: Fleet) -> None:
    checkout = fleet.submodules / "lib"
    assert (checkout / ".git").is_file()
    assert (checkout / ".git").read_text() == "gitdir: ../.git/modules/lib\n"
    assert (fleet.submodule_gitdir / "HEAD").is_file()
    assert (fleet.submodule_gitdir / "objects").is_dir()
    status = run_git(fleet.submodules, "submodule", "status").rstrip("\n")
    assert status.startswith(" ") and status.split()[1] == "lib"  # initialised, in sync
    assert run_git(fleet.submodules, "status", "--porcelain").strip() == ""


def test_nested_working_copy_is_ignored_by_outer(fleet: Fleet) -> None:
    inner = fleet.nested_inner
    assert (inner / ".git").is_dir()
    assert run_git(inner, "rev-parse", "--show-toplevel").strip() == str(inner)
    assert "vendor" not in run_git(fleet.nested, "ls-files")
    ignored = run_git(fleet.nested, "status", "--porcelain", "--ignored")
    assert ignored.strip() == "!! vendor/"


def test_gitlab_hashed_layout(fleet: Fleet) -> None:
    digest = "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"  # sha256("1")
    base = fleet.root / "gitlab" / "@hashed" / "6b" / "86"
    assert fleet.hashed == (base / f"{digest}.git", base / f"{digest}.wiki.git")
    for repo in fleet.hashed:
        assert run_git(repo, "rev-parse", "--is-bare-repository").strip() == "true"
        assert git_refs(repo) == ["refs/heads/main"]


FSCKED = [
    "packed", "working", "loose", "many_packs", "many_refs", "stale_files", "pool",
    "dependents", "sha256", "worktrees", "empty", "submodules", "nested", "hashed",
    "nested_inner", "worktree_live", "submodule_gitdir",
]  # fmt: skip


@pytest.mark.parametrize("name", FSCKED)
def test_fsck_clean(fleet: Fleet, name: str) -> None:
    value = getattr(fleet, name)
    for repo in value if isinstance(value, tuple) else (value,):
        run_git(repo, "fsck", "--full", "--no-progress")  # raises on a non-zero exit


def test_helpers_agree_with_git(fleet: Fleet) -> None:
    counts = git_count_objects(fleet.dependents[0])
    assert set(counts) == {
        "count", "size", "in-pack", "packs", "size-pack", "prune-packable", "garbage",
        "size-garbage",
    }  # fmt: skip
    assert git_refs(fleet.many_refs) == sorted(git_refs(fleet.many_refs))


def test_relocated_moves_every_path(fleet: Fleet) -> None:
    moved = fleet.relocated(Path("/elsewhere"))
    assert moved.root == Path("/elsewhere")
    for old, new in zip(fleet.repositories(), moved.repositories(), strict=True):
        assert new == Path("/elsewhere") / old.relative_to(fleet.root)


def test_fleet_copy_is_self_contained(fleet: Fleet, fleet_copy: Fleet) -> None:
    assert fleet_copy.root != fleet.root
    old = str(fleet.root)
    for fork in fleet_copy.dependents:
        alternates = (fork / "objects" / "info" / "alternates").read_text()
        assert old not in alternates
        assert ((fork / "objects") / alternates.strip()).resolve() == (
            fleet_copy.pool / "objects"
        ).resolve()
    linked = [e["worktree"] for e in _worktrees(fleet_copy.worktrees)[1:]]
    assert linked == [str(fleet_copy.worktree_live), str(fleet_copy.worktree_pruned)]
    assert old not in (fleet_copy.worktree_live / ".git").read_text()
    assert old not in (fleet_copy.submodule_gitdir / "config").read_text()
    # mtimes survive the copy (stale stays stale)
    lock = "refs/heads/main.lock"
    assert (fleet_copy.stale_files / lock).stat().st_mtime == pytest.approx(
        (fleet.stale_files / lock).stat().st_mtime
    )
    # changing the copy leaves the original alone
    before = git_refs(fleet.packed)
    run_git(fleet_copy.packed, "update-ref", "refs/heads/copy-only", "refs/heads/main")
    run_git(fleet_copy.pool, "gc", "--quiet", "--prune=now")
    assert git_refs(fleet.packed) == before
    for fork in fleet_copy.dependents:
        run_git(fork, "fsck", "--no-progress")


# --------------------------------------------------------------------------- bench tools

BENCH = PROJECT / "bench"


def _load_make_fleet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_fleet", BENCH / "make_fleet.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_fleet", module)  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_make_fleet_and_the_git_peer(tmp_path: Path) -> None:
    make_fleet = _load_make_fleet()
    assert make_fleet.plan(60, 7) == make_fleet.plan(60, 7)
    assert make_fleet.plan(60, 7) != make_fleet.plan(60, 8)
    out = tmp_path / "fleet"
    assert make_fleet.main([str(out), "--count", "60", "--seed", "7", "--jobs", "1"]) == 0
    repos = sorted(p for p in out.rglob("*.git") if (p / "HEAD").is_file())
    assert len(repos) == 60
    assert {r.relative_to(out).parts[0] for r in repos} == {"gitea", "gitlab"}
    assert not list(out.rglob("hooks"))
    for repo in repos[::7]:
        run_git(repo, "fsck", "--no-progress")
    with pytest.raises(SystemExit, match="not empty"):
        make_fleet.main([str(out), "--count", "5"])
    # the peer half of bench/scan (custode itself is not needed with --peer-only)
    scan = [sys.executable, str(BENCH / "scan"), "--count", "60", "--fleet", str(out)]
    proc = subprocess.run(
        [*scan, "--peer-only", "--warmup", "0", "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["found"] == 60 and result["peer"]["failed"] == 0
    assert result["peer"]["refs"] > 60
