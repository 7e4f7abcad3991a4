"""RepoState read from the filesystem agrees with git's own numbers on every fixture."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from custode.scan.discovery import discover
from custode.scan.repostate import RepoState, inspect, link_borrowers
from fixtures.builders import Fleet, git_count_objects, git_refs, run_git

pytestmark = pytest.mark.integration


def _states(root: Path) -> dict[str, RepoState]:
    return {
        s.relative: s for s in link_borrowers([inspect(r) for r in discover([root]).repositories])
    }


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def assert_matches_git(state: RepoState) -> None:
    git = git_count_objects(Path(state.git_dir))
    assert state.loose_objects == git["count"], state.relative
    assert state.loose_objects_bytes // 1024 == git["size"], state.relative
    assert state.packed_objects == git["in-pack"], state.relative
    assert state.packs == git["packs"], state.relative
    assert state.pack_bytes // 1024 == git["size-pack"], state.relative
    assert state.garbage_files == git["garbage"], state.relative
    assert state.garbage_bytes // 1024 == git["size-garbage"], state.relative
    assert state.refs == len(git_refs(Path(state.git_dir))), state.relative


def test_every_fixture_matches_git(fleet: Fleet) -> None:
    states = _states(fleet.root)
    assert len(states) >= 17
    for state in states.values():
        assert_matches_git(state)


def test_specific_facts(fleet: Fleet) -> None:
    s = _states(fleet.root)
    assert s["loose.git"].loose_objects >= 3000 and s["loose.git"].packs == 0
    assert s["many-packs.git"].packs >= 30
    packed = s["packed.git"]  # one pack: every object in it
    assert packed.packs == 1 and packed.base_pack_objects == packed.packed_objects > 0
    many = s["many-packs.git"]  # the largest pack's objects, as its index counts them
    counts = [int(run_git(None, "show-index", input=p.read_bytes()).count("\n"))
              for p in (fleet.root / "many-packs.git" / "objects" / "pack").glob("*.idx")]  # fmt: skip
    assert 0 < many.base_pack_objects < many.packed_objects and many.base_pack_objects in counts
    loose_files = [
        p for p in (fleet.many_refs / "refs").rglob("*") if p.is_file() and p.suffix != ".lock"
    ]
    assert s["many-refs.git"].loose_refs == len(loose_files) >= 300
    assert s["many-refs.git"].packed_refs > 0
    assert s["sha256.git"].object_format == "sha256"
    assert s["packed.git"].object_format == "sha1"
    assert s["packed.git"].commit_graph and s["packed.git"].loose_objects == 0
    assert s["pool.git"].borrowed_by == ("fork-1.git", "fork-2.git", "fork-3.git")
    assert all(s[f"fork-{i}.git"].alternates for i in (1, 2, 3))
    assert s["worktrees-main"].worktrees == 2
    assert s["worktrees-main"].prunable_worktrees == 1
    assert (s["empty.git"].refs == 0 and s["empty.git"].head == "refs/heads/main") or s[
        "empty.git"
    ].head.startswith("refs/heads/")
    assert s["working"].symbolic_refs >= 1  # refs/remotes/origin/HEAD
    assert s["super/.git/modules/lib"].superproject == str(fleet.submodules)
    for state in s.values():
        assert state.problems == (), state.relative
        assert state.size_bytes > 0 and state.newest_mtime > 0
        assert len(state.fingerprint) == 32


def test_stale_and_temporary_files(fleet: Fleet) -> None:
    state = _states(fleet.root)["stale.git"]
    paths = {t.path for t in state.temp_files}
    assert {
        "refs/heads/main.lock",
        "packed-refs.lock",
        "config.lock",
        "refs/heads/fresh.lock",
    } <= paths
    assert any(p.startswith("objects/pack/tmp_pack_") for p in paths)
    assert any(p.startswith("objects/pack/tmp_idx_") for p in paths)
    assert any("/tmp_obj_" in p for p in paths)
    now = time.time()
    ages = {t.path: now - t.mtime for t in state.temp_files}
    assert ages["refs/heads/fresh.lock"] < 3600 < ages["refs/heads/main.lock"]
    assert state.garbage_files >= 3  # tmp_pack, tmp_idx, tmp_obj, lone .pack


def test_fingerprint_changes_with_refs_and_objects_only(tmp_path: Path, fleet: Fleet) -> None:
    repo = tmp_path / "r.git"
    shutil.copytree(fleet.packed, repo, symlinks=True)

    def fp() -> str:
        return _states(tmp_path)["r.git"].fingerprint

    first = fp()
    assert fp() == first
    (repo / "description").write_text("changed\n")
    assert fp() == first
    head = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "update-ref", "refs/heads/new", head)
    second = fp()
    assert second != first
    blob = subprocess.run(
        ["git", "--git-dir", str(repo), "hash-object", "-w", "--stdin"],
        input="new object\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert blob.returncode == 0
    assert fp() != second


def test_broken_repositories_are_reported_not_raised(tmp_path: Path, fleet: Fleet) -> None:
    nohead = tmp_path / "nohead.git"
    shutil.copytree(fleet.packed, nohead, symlinks=True)
    (nohead / "HEAD").unlink()
    corrupt = tmp_path / "corrupt.git"
    shutil.copytree(fleet.many_refs, corrupt, symlinks=True)
    with (corrupt / "packed-refs").open("a") as f:
        f.write("this is not a ref line\n")
    badalt = tmp_path / "badalt.git"
    shutil.copytree(fleet.dependents[0], badalt, symlinks=True)
    (badalt / "objects" / "info" / "alternates").write_text("/nonexistent/objects\n")
    s = _states(tmp_path)
    assert s["nohead.git"].problems == ("HEAD is missing",)
    assert any("packed-refs line" in p and "corrupt" in p for p in s["corrupt.git"].problems)
    assert s["badalt.git"].problems == (
        "alternate object store /nonexistent/objects does not exist",
    )
    # git agrees that these are broken
    for name in ("corrupt.git", "badalt.git"):
        proc = subprocess.run(
            ["git", "--git-dir", str(tmp_path / name), "fsck"], capture_output=True, check=False
        )
        assert proc.returncode != 0, name
    assert os.path.exists(nohead / "objects")


def test_unreadable_repository_gets_a_broken_placeholder(fleet: Fleet) -> None:
    from custode.scan.repostate import inspect_failed

    repo = discover([fleet.packed]).repositories[0]
    state = inspect_failed(repo, "cannot read repository: Permission denied")
    assert state.problems == ("cannot read repository: Permission denied",)
    assert state.path == str(fleet.packed) and state.object_format == "unknown"
    assert state.refs == state.packs == state.size_bytes == 0


def test_partial_clones_are_recognised_without_git(tmp_path: Path, fleet: Fleet) -> None:
    """Each thing that makes git treat a repository as a partial clone, and near misses."""
    marks = {
        "extension.git": "[extensions]\n\tpartialClone = origin\n",
        "promisor.git": '[remote "origin"]\n\turl = /elsewhere\n\tpromisor = true\n',
        "old-style.git": "[remote.origin]\n\tpromisor\n",  # a bare key is true
        "not-promisor.git": '[remote "origin"]\n\turl = /elsewhere\n\tpromisor = false\n',
        "comment.git": "# promisor = true, partialClone\n",
        "pack.git": "",
        "plain.git": "",
    }
    for name, text in marks.items():
        shutil.copytree(fleet.packed, tmp_path / name, symlinks=True)
        with (tmp_path / name / "config").open("a") as config:
            config.write(text)
    pack = next((tmp_path / "pack.git" / "objects" / "pack").glob("*.pack"))
    pack.with_suffix(".promisor").write_text("")
    s = _states(tmp_path)
    assert s["extension.git"].partial_clone == "extensions.partialClone = origin"
    assert s["promisor.git"].partial_clone == "remote.origin.promisor = true"
    assert s["old-style.git"].partial_clone == "remote.origin.promisor = true"
    assert s["pack.git"].partial_clone == "1 promisor pack"
    for name in ("extension.git", "promisor.git", "old-style.git", "pack.git"):
        assert [p for p in s[name].problems if p.startswith("partial clone (")], name
        assert "never fetches" in s[name].problems[-1] and "full clone" in s[name].problems[-1]
    for name in ("not-promisor.git", "comment.git", "plain.git"):
        assert s[name].partial_clone == "" and s[name].problems == (), name
