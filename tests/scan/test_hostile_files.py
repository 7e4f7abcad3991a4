"""A FIFO, a device, a directory or a giant where git or custode expects a small file.

One root holds a sound repository and one repository (or working copy) per case: a
working copy's ``.git`` file, a git dir's ``commondir``, a linked worktree's ``gitdir`` and
``commondir``, a config ``include.path`` target, ``HEAD``, ``packed-refs``,
``objects/info/alternates``, ``shallow`` and ``info/grafts``, each replaced by a FIFO, a
symbolic link to ``/dev/zero`` or to ``/dev/null`` (a device: tests do not run as root), a
directory, or a 300 MiB sparse file. ``status``, ``check`` and ``metrics`` run once each
over that root with ``git.timeout`` at an hour: each must finish (a subprocess timeout
fails the test), name the file of each case, and keep the sound repository ok. What
bounds ``check`` is ``git.doubt_timeout`` (3 s here) on the repositories in doubt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from custode.backup.crypto import generate_identity
from custode.errors import GitError, GitTimeoutError
from custode.git.runner import Git
from fixtures.builders import Fleet, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration

KINDS = ("fifo", "zero", "null", "dir", "huge")
HUGE = 300 << 20  # bytes, sparse: above every cap custode reads with
DOUBT_TIMEOUT = 3  # seconds: git.doubt_timeout in the test config
TAIL = {
    "fifo": "is a FIFO, not a regular file",
    "zero": "is a character device, not a regular file",
    "null": "is a character device, not a regular file",
    "dir": "is a directory, not a regular file",
}
#: Where each case is planted, relative to its git dir, and the cap custode reads it with.
IN_GIT_DIR = {
    "HEAD": ("HEAD", 4096),
    "packed-refs": ("packed-refs", 256 << 20),
    "alternates": ("objects/info/alternates", 1 << 20),
    "shallow": ("shallow", 64 << 20),
    "grafts": ("info/grafts", 64 << 20),
}
#: Cases where git 2.39 itself blocks (or reads on) until killed: ``check`` used to wait
#: for git.timeout on each. (A giant is only slow: how slow depends on the machine.)
GIT_HANGS = {
    "HEAD-fifo", "include-fifo", "packed-refs-fifo", "alternates-fifo", "alternates-zero",
    "shallow-fifo", "grafts-fifo", "grafts-zero", "wt-gitdir-fifo", "wt-gitdir-zero",
    "wt-commondir-fifo", "wt-commondir-zero", "loose-ref-fifo", "idx-fifo", "loose-object-fifo",
}  # fmt: skip


def plant(path: Path, kind: str) -> None:
    """Replace ``path`` (if any) with a hostile file of ``kind``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind in {"zero", "null"}:
        path.symlink_to(f"/dev/{kind}")
    elif kind == "dir":
        path.mkdir()
    else:
        with path.open("wb") as f:
            f.truncate(HUGE)


FIXES = {
    "remove": "remove it",
    "needed": "replace it with a regular file",  # HEAD: removed, it is no repository
    "repair": "replace it: git worktree repair writes it afresh",  # removed, git prunes
}


def tail(kind: str, cap: int, fix: str = "remove") -> str:
    """What custode says of a file of ``kind`` read with ``cap``."""
    if kind == "huge":
        return f"is {HUGE:,} bytes, more than the {cap:,} custode reads; check what wrote it"
    return f"{TAIL[kind]}; {FIXES[fix]}"


@dataclass
class Setup:
    root: Path
    env: dict[str, str]
    #: repository (relative) -> the problem status must give it
    broken: dict[str, str]
    #: path -> the problem line discovery must print for it (no repository there)
    unreadable: dict[str, str]
    #: repository for each case git itself hangs on -> what ``check`` must name
    hangs: dict[str, str]


def _bare(fleet: Fleet, root: Path, name: str) -> Path:
    path = root / name
    shutil.copytree(fleet.packed, path, symlinks=True)
    return path


def _with_worktree(fleet: Fleet, root: Path, name: str) -> tuple[Path, Path]:
    """A bare repository with a linked worktree beside it: (git dir, worktree's admin dir)."""
    git_dir = _bare(fleet, root, f"{name}.git")
    run_git(git_dir, "worktree", "add", "-q", str(root / f"{name}-wt"), "release")
    return git_dir, git_dir / "worktrees" / f"{name}-wt"


def build(fleet: Fleet, base: Path) -> Setup:
    root = base / "root"
    root.mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    good = _bare(fleet, root, "good.git")  # with Bloom filters: maintain has nothing to do
    run_git(good, "commit-graph", "write", "--reachable", "--changed-paths")
    broken: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    for kind in KINDS:
        for place, (rel, cap) in IN_GIT_DIR.items():
            name = f"{place}-{kind}"
            plant(_bare(fleet, root, f"{name}.git") / rel, kind)
            fix = "needed" if place == "HEAD" else "remove"
            broken[f"{name}.git"] = f"{rel}: {tail(kind, cap, fix)}"
        target = outside / f"include-{kind}"
        plant(target, kind)
        include = _bare(fleet, root, f"include-{kind}.git")
        run_git(include, "config", "include.path", str(target))
        broken[f"include-{kind}.git"] = f"config include {target}: {tail(kind, 16 << 20)}"
        git_dir, admin = _with_worktree(fleet, root, f"wt-gitdir-{kind}")
        plant(admin / "gitdir", kind)
        broken[git_dir.name] = f"worktrees/{admin.name}/gitdir: {tail(kind, 4096, 'repair')}"
        git_dir, admin = _with_worktree(fleet, root, f"wt-commondir-{kind}")
        plant(admin / "commondir", kind)
        unreadable[str(admin / "commondir")] = tail(kind, 4096, "repair")
        if kind != "dir":  # a directory is no file git opens there
            rel = f"worktrees/{admin.name}/commondir"
            broken[git_dir.name] = f"{rel}: {tail(kind, 4096, 'repair')}"
        common = _bare(fleet, root, f"commondir-{kind}.git") / "commondir"
        plant(common, kind)
        unreadable[str(common)] = tail(kind, 4096, "repair")
        if kind != "dir":  # a .git directory is a working copy's, not a case
            working = root / f"dotgit-{kind}"
            working.mkdir()
            (working / "README").write_text("a working tree\n")
            plant(working / ".git", kind)
            unreadable[str(working / ".git")] = tail(kind, 4096)
    broken.update(_fifos_git_reads(fleet, root))
    hangs = {f"{name}.git": broken[f"{name}.git"] for name in GIT_HANGS}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CUSTODE_"))}
    for name in ("CONFIG", "STATE", "DATA", "CACHE"):
        env[f"XDG_{name}_HOME"] = str(base / "xdg" / name.lower())
    config = base / "xdg" / "config" / "custode" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[git]\ntimeout = "1h"\ndoubt_timeout = "{DOUBT_TIMEOUT}s"\n')
    return Setup(root, env, broken, unreadable, hangs)


def _fifos_git_reads(fleet: Fleet, root: Path) -> dict[str, str]:
    """A FIFO as a loose ref, a pack index and a loose object: only the scan sees these,
    and ``check`` passes what it saw on to the runner."""
    ref = _bare(fleet, root, "loose-ref-fifo.git")
    os.mkfifo(ref / "refs" / "heads" / "pipe")
    pack = _bare(fleet, root, "idx-fifo.git")
    (idx,) = (pack / "objects" / "pack").glob("*.idx")
    plant(idx, "fifo")
    loose = _bare(fleet, root, "loose-object-fifo.git")
    shutil.rmtree(loose)
    shutil.copytree(fleet.loose, loose, symlinks=True)
    head = run_git(loose, "rev-parse", "HEAD").strip()
    obj = loose / "objects" / head[:2] / head[2:]
    plant(obj, "fifo")
    fifo = "is a FIFO, not a regular file; remove it"
    return {
        "loose-ref-fifo.git": f"refs/heads/pipe: {fifo}",
        "idx-fifo.git": f"objects/pack/{idx.name}: {fifo}",
        "loose-object-fifo.git": f"objects/{head[:2]}/{head[2:]}: {fifo}",
    }


@pytest.fixture(scope="module")
def setup(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return build(fleet, tmp_path_factory.mktemp("hostile-files"))


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str


def run(setup: Setup, *args: str, timeout: float) -> Ran:
    """The real CLI; a hang past ``timeout`` fails the test (the old code waited an hour)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "custode", *args],
            capture_output=True, text=True, env=setup.env, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"custode {args[0]} did not finish within {timeout} s")
    return Ran(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def status(setup: Setup) -> tuple[Ran, dict[str, Any]]:
    ran = run(setup, "status", "--rescan", "--json", str(setup.root), timeout=120)
    return ran, {r["relative"]: r for r in json.loads(ran.stdout)["repositories"]}


@pytest.fixture(scope="module")
def check(setup: Setup) -> tuple[Ran, dict[str, Any]]:
    ran = run(setup, "check", "--json", str(setup.root), timeout=300)
    return ran, {r["relative"]: r for r in json.loads(ran.stdout)["repositories"]}


@pytest.fixture(scope="module")
def metrics(setup: Setup) -> Ran:
    return run(setup, "metrics", str(setup.root), timeout=120)


def _cases(setup_key: str) -> list[str]:
    names = []
    for kind in KINDS:
        names += [f"{place}-{kind}.git" for place in IN_GIT_DIR]
        names += [f"include-{kind}.git", f"wt-gitdir-{kind}.git"]
        if setup_key == "broken" and kind != "dir":
            names.append(f"wt-commondir-{kind}.git")
    return [*names, "loose-ref-fifo.git", "idx-fifo.git", "loose-object-fifo.git"]


@pytest.mark.parametrize("name", _cases("broken"))
def test_status_names_the_file_and_marks_only_that_repository_broken(
    setup: Setup, status: tuple[Ran, dict[str, Any]], name: str
) -> None:
    ran, repos = status
    assert ran.code != 0
    assert repos[name]["verdict"] == "broken"
    assert setup.broken[name] in repos[name]["problems"]
    assert repos["good.git"]["verdict"] == "ok"
    assert repos["good.git"]["problems"] == []


@pytest.mark.parametrize(
    "where",
    [f"{p}-{k}" for k in KINDS for p in ("commondir", "wt-commondir", "dotgit")
     if not (p == "dotgit" and k == "dir")],
)  # fmt: skip
def test_status_reports_a_path_no_repository_can_be_read_from(
    setup: Setup, status: tuple[Ran, dict[str, Any]], where: str
) -> None:
    ran, repos = status
    (path,) = [p for p in setup.unreadable if f"/{where}" in p]
    assert f"custode: {path}: {setup.unreadable[path]}" in ran.stderr.splitlines()
    assert repos["good.git"]["verdict"] == "ok"


@pytest.mark.parametrize("name", sorted(GIT_HANGS))
def test_check_gives_a_repository_in_doubt_only_the_doubt_timeout(
    setup: Setup, check: tuple[Ran, dict[str, Any]], name: str
) -> None:
    ran, repos = check
    assert ran.code == 3
    result = repos[f"{name}.git"]
    assert result["verdict"] == "error"
    (finding,) = result["findings"]
    assert re.fullmatch(
        rf"fsck: git fsck in \S+ did not finish within {DOUBT_TIMEOUT} s and was killed: "
        rf"custode gives a repository in doubt only git.doubt_timeout, as .*",
        finding,
    )
    assert setup.hangs[f"{name}.git"] in finding
    assert repos["good.git"]["verdict"] == "ok"


@pytest.mark.parametrize("kind", ["zero", "huge"])
def test_check_calls_an_include_git_cannot_parse_an_error_not_corruption(
    check: tuple[Ran, dict[str, Any]], kind: str
) -> None:
    _, repos = check
    result = repos[f"include-{kind}.git"]
    assert result["verdict"] == "error"
    assert result["findings"][0].startswith("fsck: fatal: bad config line 1 in file ")


@pytest.mark.parametrize("name", _cases("broken"))
def test_metrics_show_that_repository_unhealthy_and_the_rest_healthy(
    setup: Setup, metrics: Ran, name: str
) -> None:
    assert metrics.code == 0, metrics.stderr
    root = str(setup.root)
    line = f'custode_repository_healthy{{repository="{name}",root="{root}"}}'
    good = f'custode_repository_healthy{{repository="good.git",root="{root}"}}'
    lines = metrics.stdout.splitlines()
    assert f"{line} 0.0" in lines
    assert f"{good} 1.0" in lines


def test_backup_leaves_out_only_the_repository_git_would_hang_on(
    fleet: Fleet, tmp_path: Path, custode: Callable[..., CliResult]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _bare(fleet, root, "good.git")
    fifo = tmp_path / "include"
    os.mkfifo(fifo)
    run_git(_bare(fleet, root, "include-fifo.git"), "config", "include.path", str(fifo))
    pub = generate_identity(tmp_path / "keys" / "identity.txt")
    ran = custode("backup", root, "--store", tmp_path / "store", "--recipient", pub, "--json")
    repos = {r["repository"]: r for r in ran.json()["repositories"]}
    assert repos["good.git"]["outcome"] == "new"
    assert repos["include-fifo.git"]["outcome"] == "failed"
    assert repos["include-fifo.git"]["message"] == (
        f"config include {fifo}: is a FIFO, not a regular file; remove it"
    )


# --------------------------------------------------------------------------- zeroed files
# A power loss leaves a small file full of NUL bytes: a path with a NUL in it made the
# scan raise ValueError for the whole fleet.


def test_status_reports_paths_full_of_nul_bytes_and_carries_on(
    fleet: Fleet, tmp_path: Path, custode: Callable[..., CliResult]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    good = _bare(fleet, root, "good.git")  # with Bloom filters: maintain has nothing to do
    run_git(good, "commit-graph", "write", "--reachable", "--changed-paths")
    working = root / "dotgit-nul"
    working.mkdir()
    (working / ".git").write_bytes(b"gitdir: " + b"\0" * 64)
    _, admin = _with_worktree(fleet, root, "wt-commondir-nul")
    (admin / "commondir").write_bytes(b"\0" * 64)
    alternates = _bare(fleet, root, "alternates-nul.git") / "objects" / "info" / "alternates"
    alternates.write_bytes(b"\0" * 64)
    ran = custode("status", "--json", root)
    repos = {r["relative"]: r for r in ran.json()["repositories"]}
    assert repos["good.git"]["verdict"] == "ok"
    assert repos["alternates-nul.git"]["problems"] == [
        "objects/info/alternates holds NUL bytes; restore it"
    ]
    lines = ran.stderr.splitlines()
    assert f"custode: {working / '.git'}: unreadable .git file (expected 'gitdir: <path>')" in lines
    assert (
        f"custode: {admin / 'commondir'}: holds NUL bytes, not a path; run git worktree repair"
        in lines
    )


# --------------------------------------------------------------------------- extensions


def _with_extension(fleet: Fleet, root: Path, name: str) -> Path:
    path = _bare(fleet, root, "future.git")
    run_git(path, "config", "core.repositoryformatversion", "1")
    run_git(path, "config", f"extensions.{name}", "true")
    return path


EXTENSION = "frobnicate" + "x" * 150  # longer than a finding's 300-character cut allowed


def test_check_reports_an_unknown_extension_as_unsupported_not_corrupt(
    fleet: Fleet, tmp_path: Path, custode: Callable[..., CliResult]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _bare(fleet, root, "good.git")
    _with_extension(fleet, root, EXTENSION)
    v = Git().version()
    ran = custode("check", "--json", root)
    assert ran.code == 3
    repos = {r["relative"]: r for r in ran.json()["repositories"]}
    assert repos["good.git"]["verdict"] == "ok"
    assert repos["future.git"]["verdict"] == "error"
    assert repos["future.git"]["findings"] == [
        f"fsck: not supported by git {v.major}.{v.minor} (extension {EXTENSION.lower()}); "
        "upgrade git, or leave the repository out with discovery.exclude"
    ]
    assert "restore the repository from a backup" not in ran.stderr


def test_every_git_call_names_the_unknown_extension(fleet: Fleet, tmp_path: Path) -> None:
    repo = _with_extension(fleet, tmp_path, "frobnicate")
    git = Git(nice=None, ionice="none")
    v = git.version()
    with pytest.raises(GitError) as caught:
        git.run(["for-each-ref"], repo=repo)
    assert f"not supported by git {v.major}.{v.minor} (extension frobnicate)" in str(
        caught.value.message
    )


def test_a_v1_only_extension_in_a_v0_repository_is_named_not_cut(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = _bare(fleet, tmp_path, "v0.git")
    run_git(repo, "config", "extensions.objectFormat", "sha1")  # git: "v1-only"
    with pytest.raises(GitError) as caught:
        Git(nice=None, ionice="none").run(["for-each-ref"], repo=repo)
    assert caught.value.message.endswith(
        "fatal: repo version is 0, but v1-only extension found: objectformat"
    )


def test_a_caller_without_a_timeout_still_gets_the_doubt_timeout(
    fleet: Fleet, tmp_path: Path
) -> None:
    repo = _bare(fleet, tmp_path, "include-fifo.git")
    os.mkfifo(tmp_path / "fifo")
    run_git(repo, "config", "include.path", str(tmp_path / "fifo"))
    git = Git(nice=None, ionice="none", timeout=3600, doubt_timeout=DOUBT_TIMEOUT)
    with pytest.raises(GitTimeoutError) as caught:
        git.run(["for-each-ref"], repo=repo, timeout=0)  # 0: no limit asked for
    assert caught.value.message == (
        f"git for-each-ref in {repo} did not finish within {DOUBT_TIMEOUT} s and was killed: "
        "custode gives a repository in doubt only git.doubt_timeout, as config include "
        f"{tmp_path / 'fifo'}: is a FIFO, not a regular file; remove it"
    )


# --------------------------------------------------------------------------- dates


@pytest.fixture
def snapshot_store(
    fleet: Fleet, tmp_path: Path, custode: Callable[..., CliResult]
) -> tuple[Path, Path]:
    """A store with one snapshot, and the identity that opens it."""
    root = tmp_path / "root"
    root.mkdir()
    _bare(fleet, root, "good.git")
    identity = tmp_path / "keys" / "identity.txt"
    pub = generate_identity(identity)
    store = tmp_path / "store"
    ran = custode("backup", root, "--store", store, "--recipient", pub)
    assert ran.code == 0, ran.stderr
    return store, identity


@pytest.mark.parametrize(
    "when",
    ["2026-02-30", "2026-13-01", "2026-02-28T25:00", "0000-01-01", "9999-12-31T23:00-05:00"],
)
def test_an_impossible_date_or_time_is_a_usage_error(
    snapshot_store: tuple[Path, Path],
    tmp_path: Path,
    custode: Callable[..., CliResult],
    when: str,
) -> None:
    store, identity = snapshot_store
    ran = custode("restore", "--store", store, "--identity", identity,
                  "--to", tmp_path / "out", "--at", when)  # fmt: skip
    assert ran.code == 2, ran.stderr
    assert f"Invalid value for '--at': '{when}' is not a valid date or time (" in ran.stderr
    assert "internal error" not in ran.stderr
    assert not (tmp_path / "out").exists()


def test_a_duration_past_any_date_is_a_usage_error(custode: Callable[..., CliResult]) -> None:
    ran = custode("report", "--since", "99999999999999999999d")  # was an OverflowError
    assert ran.code == 2, ran.stderr
    assert (
        "Invalid value for '--since': '99999999999999999999d' is longer than the 100 years "
        "custode accepts"
    ) in ran.stderr
