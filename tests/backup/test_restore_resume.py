"""An unfinished fleet restore (interrupted, or with repositories that failed) is finished
by the same command: what is in place is kept, the rest is restored, no ``--force``.

The interrupted case itself runs in ``test_interrupts.py``; here the journal behind it is
driven through real restores of real repositories: a repository whose stored files are
damaged fails while the others land, the same command retries only that one, and the
journal is refused (with the way out) when it is damaged or belongs elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.backup import restorejournal
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
NAMES = ["a.git", "b.git", "c.git", "d.git"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for n, name in enumerate(NAMES):
        run_git(None, "init", "-q", "--bare", root / name)
        fast_import(root / name, history_stream("refs/heads/main", 5 + n))
    return root


def store_files(env: dict[str, str]) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "custode" / "backups"


def damage(env: dict[str, str], repository: str) -> tuple[Path, bytes]:
    """Overwrite the stored refs of ``repository`` (its restore then fails); the file and
    its original bytes, to put back."""
    for manifest in store_files(env).rglob("manifest.json"):
        if json.loads(manifest.read_text())["repository"] == repository:
            refs = manifest.with_name("refs.age")
            good = refs.read_bytes()
            refs.write_bytes(b"not an age file\n")
            return refs, good
    raise AssertionError(f"no manifest of {repository}")


def heads(repo: Path) -> str:
    return run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")


def test_the_same_command_finishes_a_restore_whose_repositories_partly_failed(
    custode: Run, root: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    assert custode("backup", root).code == 0
    refs, good = damage(isolated_env, "c.git")
    out = tmp_path / "out"
    first = custode("restore", "--to", out, "--jobs", "1")
    assert first.code != 0
    assert "c.git" in first.stderr and "run the same custode restore again" in first.stderr
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".git") == [
        "a.git",
        "b.git",
        "d.git",
    ]
    assert (out / restorejournal.NAME).is_file()
    kept = (out / "a.git").stat().st_ino
    # the same command again (the store still damaged): only c.git is tried, and fails
    second = custode("restore", "--to", out, "--json")
    assert second.code != 0
    assert second.json()["summary"]["already_restored"] == 3
    assert second.json()["summary"]["failed"] == 1
    assert (out / "a.git").stat().st_ino == kept  # not restored again
    # repaired, the same command finishes: c.git lands, the journal goes
    refs.write_bytes(good)
    third = custode("restore", "--to", out, "--json")
    assert third.code == 0, third.stderr
    assert third.json()["summary"]["restored"] == 1
    assert sorted(third.json()["already_restored"]) == ["a.git", "b.git", "d.git"]
    assert "3 repositories already in place are kept" in third.stderr
    assert not (out / restorejournal.NAME).exists()
    for name in NAMES:
        assert heads(out / name) == heads(root / name)
        run_git(out / name, "fsck", "--strict", "--no-progress")
    # finished: the command is refused as any restore over existing repositories is
    again = custode("restore", "--to", out)
    assert again.code == 2 and "is not empty" in again.stderr


def test_a_listed_repository_removed_since_is_restored_again(
    custode: Run, root: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    assert custode("backup", root).code == 0
    refs, good = damage(isolated_env, "d.git")
    out = tmp_path / "out"
    assert custode("restore", "--to", out, "--jobs", "1").code != 0
    refs.write_bytes(good)
    shutil.rmtree(out / "b.git")  # removed by a person between the two runs
    again = custode("restore", "--to", out, "--json")
    assert again.code == 0, again.stderr
    assert again.json()["summary"]["restored"] == 2  # b.git and d.git
    assert heads(out / "b.git") == heads(root / "b.git")


def test_an_unfinished_restore_is_finished_from_its_own_snapshot_not_a_newer_one(
    custode: Run, root: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    assert custode("backup", root).code == 0
    first_snapshot = custode("snapshots", "--json").json()
    refs, good = damage(isolated_env, "a.git")
    out = tmp_path / "out"
    assert custode("restore", "--to", out, "--jobs", "1").code != 0
    refs.write_bytes(good)
    before = heads(root / "a.git")
    fast_import(root / "a.git", history_stream("refs/heads/later", 3))  # a newer backup
    assert custode("backup", root).code == 0
    journal = restorejournal.read(out)
    assert journal is not None
    # the same command finishes the snapshot it began, not the newest
    again = custode("restore", "--to", out, "--json")
    assert again.code == 0, again.stderr
    assert again.json()["summary"]["snapshot"] == journal.snapshot
    assert heads(out / "a.git") == before
    # naming another snapshot is refused with both ways on
    newest = custode("snapshots", "--json").json()
    assert newest != first_snapshot
    refs, good = damage(isolated_env, "b.git")
    other = tmp_path / "other"
    assert custode("restore", "--to", other, "--jobs", "1").code != 0  # from the newest
    refs.write_bytes(good)
    unfinished = restorejournal.read(other)
    assert unfinished is not None
    older = journal.snapshot
    refused = custode("restore", "--to", other, "--at", older)
    assert refused.code == 2
    assert f"--at {unfinished.snapshot}" in refused.stderr and "--force" in refused.stderr
    forced = custode("restore", "--to", other, "--at", older, "--force")
    assert forced.code == 0, forced.stderr
    assert heads(other / "a.git") == before
    assert not (other / restorejournal.NAME).exists()


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(lambda p: p.write_text("{not json"), id="not-json"),
        pytest.param(lambda p: p.write_text("[" * 100_000), id="nested-100000-deep"),
        pytest.param(
            lambda p: p.write_text(json.dumps({"format": 1, "done": []})), id="wrong-types"
        ),
        pytest.param(os.mkfifo, id="fifo"),
        pytest.param(lambda p: p.symlink_to("/dev/zero"), id="symlink-to-dev-zero"),
    ],
)
def test_a_damaged_journal_is_refused_naming_it_and_force_restores_over_it(
    custode: Run, root: Path, tmp_path: Path, plant: Callable[[Path], object]
) -> None:
    assert custode("backup", root).code == 0
    out = tmp_path / "out"
    out.mkdir()
    plant(out / restorejournal.NAME)
    refused = custode("restore", "--to", out)
    assert refused.code == 2, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert restorejournal.NAME in line and "--force" in line, line
    assert "internal error" not in refused.stderr
    forced = custode("restore", "--to", out, "--force")
    assert forced.code == 0, forced.stderr
    assert not os.path.lexists(out / restorejournal.NAME)
    assert heads(out / "a.git") == heads(root / "a.git")


def test_a_journal_of_another_store_is_refused(custode: Run, root: Path, tmp_path: Path) -> None:
    assert custode("backup", root).code == 0
    out = tmp_path / "out"
    out.mkdir()
    restorejournal.Journal(out, "file:///elsewhere", "vm", "20260101T000000Z-0000").save()
    refused = custode("restore", "--to", out)
    assert refused.code == 2
    assert "unfinished restore" in refused.stderr and "file:///elsewhere" in refused.stderr
