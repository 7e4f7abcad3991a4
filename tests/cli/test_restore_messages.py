"""The messages of ``custode restore`` and ``verify`` point at the real fix: a ``--to``
that cannot be used names the component at fault (exit 4, nothing left behind), a missing
key asks for the key the backups were made with and names where custode looked (never a
new one), a name that is no repository gets the close matches, and a drill says what it
read and restored. A real store made by ``custode backup`` of real repositories."""

from __future__ import annotations

import os
import pwd
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.backup.crypto import generate_identity
from custode.base.units import format_bytes
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
# root ignores file modes: drop the capabilities that let it (the tests run as root in CI)
NO_OVERRIDE = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
               "--")  # fmt: skip


@pytest.fixture
def store(custode: Run, tmp_path: Path) -> tuple[Path, Path]:
    """A store holding ``cli/httpie.git`` and ``other.git``, and the identity it needs."""
    root = tmp_path / "root"
    for n, name in enumerate(("cli/httpie.git", "other.git")):
        run_git(None, "init", "-q", "--bare", root / name)
        fast_import(root / name, history_stream("refs/heads/main", 4 + n))
    identity = tmp_path / "keys" / "identity.txt"
    public = generate_identity(identity)
    made = custode("backup", root, "--store", tmp_path / "store", "--recipient", public)
    assert made.code == 0, made.stderr
    return tmp_path / "store", identity


def files(top: Path) -> set[Path]:
    """What a restore may have left: everything but the store, the keys, the sources and
    custode's own XDG directories."""
    skip = {"store", "keys", "root", "xdg"}
    return {p for p in top.rglob("*") if p.relative_to(top).parts[0] not in skip}


def last_line(result: CliResult) -> str:
    return result.stderr.strip().splitlines()[-1]


def restore_into(custode: Run, store: tuple[Path, Path], to: Path, *args: str,
                 prefix: tuple[str, ...] = ()) -> CliResult:  # fmt: skip
    where, identity = store
    return custode("restore", "--store", where, "--identity", identity, "--to", to, *args,
                   prefix=prefix)  # fmt: skip


def assert_refused(custode: Run, store: tuple[Path, Path], to: Path, under: Path,
                   message: str) -> None:  # fmt: skip
    """A restore into ``to`` exits 4 with ``message`` as its last line and leaves nothing
    new under ``under``."""
    before = files(under)
    result = restore_into(custode, store, to)
    assert result.code == 4, result.stderr
    assert last_line(result) == message
    assert files(under) == before


def test_a_to_through_a_file_names_the_file(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    (tmp_path / "notes").write_text("a file\n")
    assert_refused(custode, store, tmp_path / "notes" / "restored", tmp_path, (
        f"custode: cannot restore into {tmp_path}/notes/restored: {tmp_path}/notes is a file, "
        "not a directory; move it aside, or give another --to"
    ))  # fmt: skip


def test_a_file_where_a_repository_needs_a_directory_is_named_not_called_not_empty(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "cli").write_text("in the way\n")
    assert_refused(custode, store, out, tmp_path, (
        f"custode: cannot restore cli/httpie.git into {out}/cli/httpie.git: {out}/cli is a "
        "file, not a directory; move it aside, or give another --to"
    ))  # fmt: skip


@pytest.mark.skipif(not os.path.ismount("/proc"), reason="/proc is not mounted")
def test_a_to_on_the_proc_filesystem_says_so(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    result = restore_into(custode, store, Path("/proc/custode-restore"))
    assert result.code == 4, result.stderr
    assert last_line(result) == (
        "custode: cannot restore into /proc/custode-restore: /proc is on the kernel's proc "
        "filesystem, which holds no files of its own; give a --to on a disk"
    )
    assert not os.path.lexists("/proc/custode-restore")


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_a_to_below_a_directory_this_user_cannot_write_names_it(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    user = pwd.getpwuid(os.geteuid()).pw_name
    prefix = NO_OVERRIDE if os.geteuid() == 0 else ()
    before = files(tmp_path)
    try:
        result = restore_into(custode, store, locked / "new" / "out", prefix=prefix)
    finally:
        locked.chmod(0o755)
    assert result.code == 4, result.stderr
    assert last_line(result) == (
        f"custode: cannot restore into {locked}/new/out: {locked} (owned by {user}, mode 0555) "
        f"is not writable by this user ({user}); give a --to {user} can write, or change "
        "that directory's owner or mode"
    )
    assert files(tmp_path) == before


def test_a_to_that_is_a_dangling_symlink_names_where_it_points(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    assert_refused(custode, store, link, tmp_path, (
        f"custode: cannot restore into {link}: {link} is a symbolic link to {tmp_path}/gone, "
        "which does not exist; create the directory it names, or give another --to"
    ))  # fmt: skip


def test_a_missing_key_asks_for_the_one_the_backups_were_made_with(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    where, _ = store
    default = tmp_path / "xdg" / "config" / "custode" / "identity.txt"
    result = custode("restore", "--store", where, "--to", tmp_path / "out")
    assert result.code == 4, result.stderr
    assert last_line(result) == (
        "custode: no backup key: backup.identity is not set (nor --identity, where the "
        f"command has it) and the default identity file {default} does not exist; decrypting "
        "the backups needs the key they were encrypted to: copy the identity file from the "
        f"machine that made them to {default}, or name it with backup.identity or --identity "
        "(a new key cannot decrypt them)"
    )
    assert "age-keygen" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert not default.exists()


def test_verify_with_a_missing_key_names_it_and_never_suggests_a_new_one(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    where, _ = store
    given = tmp_path / "copied" / "identity.txt"
    result = custode("verify", "--level", "drill", "--store", where, "--identity", given)
    assert result.code == 4, result.stderr
    assert last_line(result) == (
        f"custode: no backup key: the identity file {given} given with --identity does not "
        "exist; decrypting the backups needs the key they were encrypted to: copy the "
        f"identity file from the machine that made them to {given}, or name it with "
        "backup.identity or --identity (a new key cannot decrypt them)"
    )
    assert "age-keygen" not in result.stderr


def test_a_name_that_is_no_repository_gets_the_close_matches(
    custode: Run, store: tuple[Path, Path], tmp_path: Path
) -> None:
    for name, hint in (
        ("httpie", "did you mean cli/httpie.git?"),
        ("othre.git", "did you mean other.git?"),
        ("zzz", "name repositories by their path relative to their root"),
    ):
        result = restore_into(custode, store, tmp_path / "out", name)
        assert result.code == 2, result.stderr
        assert re.fullmatch(
            rf"custode: snapshot \S+ holds no repository '{name}'; {re.escape(hint)} "
            r"\(custode snapshots --repositories lists them\)",
            last_line(result),
        ), result.stderr
    assert not (tmp_path / "out").exists()


def test_a_drill_says_what_it_read_and_restored(custode: Run, store: tuple[Path, Path]) -> None:
    where, identity = store
    full = custode("verify", "--level", "full", "--store", where, "--identity", identity,
                   "--json")  # fmt: skip
    assert full.code == 0, full.stderr
    drill = custode("verify", "--level", "drill", "--store", where, "--identity", identity,
                    "--json")  # fmt: skip
    assert drill.code == 0, drill.stderr
    summary = drill.json()["summary"]
    # a drill restores every repository: it reads every file a full verify reads
    assert summary["bytes_read"] == full.json()["summary"]["bytes_read"] > 0
    assert (summary["drills"], summary["restored"]) == (2, 2)
    text = custode("verify", "--level", "drill", "--store", where, "--identity", identity)
    assert text.code == 0, text.stderr
    read = format_bytes(summary["bytes_read"])
    assert re.fullmatch(
        rf"verify drill: ok: 1 snapshot, 2 manifests, {summary['files']} files, "
        rf"{re.escape(read)} read, 2 restore drills: 2 repositories restored and checked "
        r"\(slowest \d+\.\ds\) in \d+\.\ds",
        text.stdout.strip(),
    ), text.stdout
