"""Git-native backup files: capture, incremental bundles, restore by copy and by plain git."""

import shutil
import subprocess
from pathlib import Path

import pytest

from custode.backup.bundle import (
    PackFiles,
    Refs,
    capture,
    write_bundle,
)
from custode.backup.restore import write_refs
from custode.git.runner import Git
from fixtures.builders import fast_import, history_stream, run_git

pytestmark = pytest.mark.integration
GIT = Git()


def _repo(tmp_path: Path, name: str, fmt: str = "sha1") -> Path:
    path = tmp_path / name
    run_git(None, "init", "-q", "--bare", f"--object-format={fmt}", path)
    return path


def _state(repo: Path) -> str:
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname) %(symref)")
    return refs + run_git(repo, "symbolic-ref", "HEAD")


def _backup(repo: Path, out: Path, parent: Refs | None, fmt: str) -> tuple[Refs, PackFiles | None]:
    out.mkdir()
    refs = capture(GIT, repo)
    return refs, write_bundle(
        GIT, repo, refs, parent.tips() if parent else set(), out, object_format=fmt
    )


def _restore_by_copy(chain: list[PackFiles], refs: Refs, dest: Path, fmt: str) -> None:
    run_git(None, "init", "-q", "--bare", f"--object-format={fmt}", dest)
    pack_dir = dest / "objects" / "pack"
    for files in chain:  # as custode.backup.restore does, from the plaintext files
        assert files.index is not None
        with files.bundle.open("rb") as src:
            src.seek(files.header_bytes)
            (pack_dir / f"{files.pack_name}.pack").write_bytes(src.read())
        shutil.copyfile(files.index, pack_dir / f"{files.pack_name}.idx")
    write_refs(dest, refs)


@pytest.mark.parametrize("fmt", ["sha1", "sha256"])
def test_an_incremental_chain_restores_exactly_by_copy_and_by_plain_git(
    tmp_path: Path, fmt: str
) -> None:
    repo = _repo(tmp_path, "src.git", fmt)
    fast_import(repo, history_stream("refs/heads/main", 30))
    run_git(repo, "tag", "-a", "-m", "v1", "v1", "refs/heads/main")
    run_git(repo, "update-ref", "refs/heads/doomed", "refs/heads/main~5")
    run_git(repo, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/heads/main")
    refs1, full = _backup(repo, tmp_path / "b1", None, fmt)
    assert full is not None and full.prerequisites == ()
    state1 = _state(repo)
    # a day of pushes: new commits, a force-push that drops commits, a deleted branch
    fast_import(repo, history_stream("refs/heads/main", 5, start=30, parent="refs/heads/main^0"))
    run_git(repo, "update-ref", "refs/heads/rewritten", "refs/heads/main~2")
    run_git(repo, "update-ref", "-d", "refs/heads/doomed")
    refs2, inc = _backup(repo, tmp_path / "b2", refs1, fmt)
    assert inc is not None and inc.prerequisites
    state2 = _state(repo)
    same = _backup(repo, tmp_path / "b3", refs2, fmt)[1]  # nothing new: refs over an empty pack
    assert same is not None and same.index is None and same.pack_name == ""

    for label, chain, refs, state in (("at-1", [full], refs1, state1),
                                      ("at-2", [full, inc], refs2, state2)):  # fmt: skip
        dest = tmp_path / f"copy-{label}.git"
        _restore_by_copy(chain, refs, dest, fmt)
        assert _state(dest) == state
        run_git(dest, "fsck", "--strict")
        plain = tmp_path / f"plain-{label}.git"  # what the README's recovery does
        run_git(None, "init", "-q", "--bare", f"--object-format={fmt}", plain)
        for files in chain:
            run_git(plain, "bundle", "verify", files.bundle)
            run_git(plain, "fetch", "-q", "--prune", files.bundle, "refs/*:refs/*")
        listed = run_git(plain, "for-each-ref", "--format=%(objectname) %(refname)")
        assert listed == "".join(f"{oid} {name}\n" for name, oid in sorted(refs.refs.items()))
        run_git(plain, "fsck", "--strict")


def test_a_vanished_parent_tip_is_not_a_prerequisite(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "src.git")
    fast_import(repo, history_stream("refs/heads/main", 10))
    run_git(repo, "update-ref", "refs/heads/side", "refs/heads/main")
    refs1, _ = _backup(repo, tmp_path / "b1", None, "sha1")
    ghost = Refs(refs1.head, {**refs1.refs, "refs/heads/gone": "1" * 40})
    fast_import(repo, history_stream("refs/heads/main", 2, start=10, parent="refs/heads/main^0"))
    _, inc = _backup(repo, tmp_path / "b2", ghost, "sha1")
    assert inc is not None and "1" * 40 not in inc.prerequisites


def test_capture_is_the_moment_not_the_bundle_time(tmp_path: Path) -> None:
    """A push between capture and bundle is not in the bundle: it is the captured state."""
    repo = _repo(tmp_path, "src.git")
    fast_import(repo, history_stream("refs/heads/main", 5))
    refs = capture(GIT, repo)
    fast_import(repo, history_stream("refs/heads/main", 3, start=5, parent="refs/heads/main^0"))
    (tmp_path / "b").mkdir()
    files = write_bundle(GIT, repo, refs, set(), tmp_path / "b", object_format="sha1")
    assert files is not None
    heads = subprocess.run(["git", "bundle", "list-heads", str(files.bundle)], capture_output=True,
                           text=True, check=True, cwd=repo).stdout  # fmt: skip
    assert heads.split()[0] == refs.refs["refs/heads/main"]
