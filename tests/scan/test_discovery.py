import os
import shutil
from pathlib import Path

import pytest

from custode.config.model import DiscoveryConfig
from custode.errors import PathNotFoundError
from custode.scan import discovery
from custode.scan.discovery import discover
from fixtures.builders import Fleet

pytestmark = pytest.mark.integration


def _rels(root: Path, **config: object) -> set[str]:
    return {r.relative for r in discover([root], DiscoveryConfig(**config)).repositories}  # type: ignore[arg-type]


def test_finds_every_kind_of_repository_once(fleet: Fleet) -> None:
    found = discover([fleet.root])
    assert found.problems == []
    by_rel = {r.relative: r for r in found.repositories}
    expected = {
        "packed.git",
        "working",
        "loose.git",
        "many-packs.git",
        "many-refs.git",
        "stale.git",
        "pool.git",
        "fork-1.git",
        "fork-2.git",
        "fork-3.git",
        "sha256.git",
        "worktrees-main",
        "empty.git",
        "super",
        "super/.git/modules/lib",
        "outer",
        "outer/vendor/inner",
        *(h.relative_to(fleet.root).as_posix() for h in fleet.hashed),
    }
    assert set(by_rel) == expected
    assert len(found.repositories) == len(expected)
    assert by_rel["working"].kind == "working" and not by_rel["working"].bare
    assert by_rel["packed.git"].kind == "bare"
    sub = by_rel["super/.git/modules/lib"]
    assert sub.kind == "submodule" and sub.superproject == fleet.submodules
    # the live linked worktree is attached to its repository, not counted on its own
    assert by_rel["worktrees-main"].worktrees == (fleet.root / "worktrees-main-wt1",)
    assert any("@hashed" in rel for rel in by_rel)


def test_never_descends_into_a_git_directory(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    real = os.scandir

    def spy(path: str | os.PathLike[str]) -> object:
        scanned.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(discovery.os, "scandir", spy)
    discover([fleet.root])
    assert scanned
    inside = [p for p in scanned if "/objects" in p or "/refs" in p or "/logs" in p]
    assert inside == []


def test_repository_shaped_directory_inside_an_object_store_is_not_a_repository(
    tmp_path: Path, fleet: Fleet
) -> None:
    repo = tmp_path / "r.git"
    shutil.copytree(fleet.packed, repo, symlinks=True)
    fake = repo / "objects" / "info" / "fake.git"
    (fake / "objects").mkdir(parents=True)
    (fake / "refs").mkdir()
    (fake / "HEAD").write_text("ref: refs/heads/main\n")
    assert _rels(tmp_path) == {"r.git"}


def test_symlink_loop_is_reported_not_fatal(tmp_path: Path, fleet: Fleet) -> None:
    shutil.copytree(fleet.empty, tmp_path / "a" / "x.git", symlinks=True)
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    (tmp_path / "alias.git").symlink_to(tmp_path / "a" / "x.git")
    found = discover([tmp_path])
    assert [r.relative for r in found.repositories] == ["a/x.git"]  # counted once
    assert len(found.problems) == 1
    assert found.problems[0].path == tmp_path / "a" / "loop"
    assert "symbolic link loop" in found.problems[0].message


def test_symlinks_not_followed_when_configured(tmp_path: Path, fleet: Fleet) -> None:
    shutil.copytree(fleet.empty, tmp_path / "real" / "x.git", symlinks=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "link").symlink_to(tmp_path / "real")
    assert _rels(tmp_path / "other") == {"link/x.git"}
    assert _rels(tmp_path / "other", follow_symlinks=False) == set()


def test_exclude_globs_and_depth(fleet: Fleet) -> None:
    rels = _rels(fleet.root, exclude=["fork-*", "**/vendor", "gitlab"])
    assert not any(r.startswith(("fork-", "gitlab")) for r in rels)
    assert "outer" in rels and "outer/vendor/inner" not in rels
    assert "packed.git" in rels
    assert "outer/vendor/inner" not in _rels(fleet.root, descend_into_worktrees=False)
    assert not any("@hashed" in r for r in _rels(fleet.root, max_depth=2))


def test_broken_repository_without_head_is_still_found(tmp_path: Path, fleet: Fleet) -> None:
    shutil.copytree(fleet.packed, tmp_path / "nohead.git", symlinks=True)
    (tmp_path / "nohead.git" / "HEAD").unlink()
    assert _rels(tmp_path) == {"nohead.git"}


def test_root_that_is_a_repository(fleet: Fleet) -> None:
    found = discover([fleet.packed])
    assert [r.relative for r in found.repositories] == ["packed.git"]


def test_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError, match=r"root .*nope does not exist; check the path"):
        discover([tmp_path / "nope"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathNotFoundError, match=r"root .*file is not a directory"):
        discover([tmp_path / "file"])


def test_what_leads_outside_every_root_is_reported_not_found(tmp_path: Path, fleet: Fleet) -> None:
    root, far = tmp_path / "root", tmp_path / "far.git"
    shutil.copytree(fleet.empty, far, symlinks=True)
    (root / "app").mkdir(parents=True)
    (root / "app" / ".git").write_text("gitdir: ../../far.git\n")  # relative, climbing out
    (root / "linked").mkdir()
    (root / "linked" / ".git").symlink_to(far)
    shutil.copytree(fleet.empty, root / "wt.git", symlinks=True)
    (root / "wt.git" / "commondir").write_text("../../far.git\n")
    shutil.copytree(fleet.empty, root / "inside.git", symlinks=True)
    (root / "near").mkdir()
    (root / "near" / ".git").write_text(f"gitdir: {root / 'inside.git'}\n")  # inside: fine
    found = discover([root])
    assert {r.relative for r in found.repositories} == {"inside.git"}
    problems = {str(p.path): p.message for p in found.problems}
    assert set(problems) == {
        str(root / "app" / ".git"),
        str(root / "linked" / ".git"),
        str(root / "wt.git"),
    }
    assert all(f"{far} is outside every root" in m for m in problems.values()), problems


def test_the_alternates_sweep_reads_excluded_and_deep_directories(
    tmp_path: Path, fleet: Fleet
) -> None:
    root = tmp_path / "root"
    pool = root / "pool.git"
    shutil.copytree(fleet.empty, pool, symlinks=True)
    deep = root / "archive" / "a" / "b" / "c" / "fork.git"
    shutil.copytree(fleet.empty, deep, symlinks=True)
    (deep / "objects" / "info").mkdir(exist_ok=True)
    (deep / "objects" / "info" / "alternates").write_text(
        "# comment\n../../../../../../pool.git/objects\n"
    )
    work = root / "app"
    work.mkdir()
    (work / ".git").write_text(f"gitdir: {tmp_path / 'outside.git'}\n")  # read where it is
    shutil.copytree(fleet.empty, tmp_path / "outside.git", symlinks=True)
    (tmp_path / "outside.git" / "objects" / "info").mkdir(exist_ok=True)
    (tmp_path / "outside.git" / "objects" / "info" / "alternates").write_text(f"{pool}/objects\n")
    assert _rels(root, exclude=["archive"], max_depth=2) == {"pool.git"}
    sweep = discovery.sweep_alternates([root])
    lender = os.path.realpath(pool / "objects")
    assert sweep.links == {
        (os.path.realpath(deep), lender),
        (os.path.realpath(tmp_path / "outside.git"), lender),
    }
    assert sweep.unsure == []
