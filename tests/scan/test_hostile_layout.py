"""Repositories whose files are laid out to hang, flood or mislead a scan.

Every case must finish quickly, report the repository as broken where git would fail,
and never wander outside the repository.
"""

import os
import shutil
from pathlib import Path

import pytest

from custode.scan.discovery import discover
from custode.scan.repostate import RepoState, inspect
from fixtures.builders import Fleet

pytestmark = pytest.mark.integration


def _state(root: Path, name: str) -> RepoState:
    found = {r.relative: r for r in discover([root]).repositories}
    return inspect(found[name])


@pytest.fixture
def repo(tmp_path: Path, fleet: Fleet) -> Path:
    path = tmp_path / "root" / "r.git"
    shutil.copytree(fleet.packed, path, symlinks=True)
    return path


def test_head_is_a_fifo(repo: Path) -> None:
    (repo / "HEAD").unlink()
    os.mkfifo(repo / "HEAD")
    state = _state(repo.parent, "r.git")  # would block forever on a plain open()
    assert state.problems == (
        "HEAD: is a FIFO, not a regular file; replace it with a regular file",
    )


def test_packed_refs_is_dev_zero(repo: Path) -> None:
    (repo / "packed-refs").unlink()
    (repo / "packed-refs").symlink_to("/dev/zero")
    state = _state(repo.parent, "r.git")  # would read forever
    assert state.problems == ("packed-refs: is a character device, not a regular file; remove it",)


def test_loose_ref_is_a_fifo(repo: Path) -> None:
    os.mkfifo(repo / "refs" / "heads" / "pipe")
    state = _state(repo.parent, "r.git")
    assert state.problems == ("refs/heads/pipe: is a FIFO, not a regular file; remove it",)


def test_refs_symlinked_elsewhere_is_not_walked(repo: Path, tmp_path: Path) -> None:
    shutil.rmtree(repo / "refs")
    (repo / "refs").symlink_to("/")
    state = _state(repo.parent, "r.git")
    assert "refs is a symbolic link; custode does not follow it" in state.problems


def test_junk_tree_in_objects_is_walked_only_shallowly(repo: Path) -> None:
    deep = repo / "objects" / "junk"
    for i in range(10):
        deep = deep / f"level{i}"
    deep.mkdir(parents=True)
    (deep / "file").write_text("x" * 10000)
    (repo / "objects" / "junk" / "root").symlink_to("/")
    state = _state(repo.parent, "r.git")
    assert state.problems == ()
    assert state.size_bytes < 10 * 1024 * 1024


def test_symlink_inside_a_working_tree_is_not_followed(tmp_path: Path, fleet: Fleet) -> None:
    root = tmp_path / "root"
    shutil.copytree(fleet.working, root / "app", symlinks=True)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(fleet.empty, elsewhere / "hidden.git", symlinks=True)
    (root / "app" / "link").symlink_to(elsewhere)
    (root / "top-link").symlink_to(elsewhere)
    found = {r.relative for r in discover([root]).repositories}
    assert found == {"app", "top-link/hidden.git"}
