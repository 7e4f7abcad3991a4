"""Bad input during ``custode maintain``: a repository deleted mid-run, a disk that fills
up during a repack. Each fails alone with a clear message, the others carry on, nothing
is lost, and the next run completes."""

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from custode.config.maintenance import DAY, MaintenancePolicy
from custode.git.runner import Git, GitResult
from custode.maintenance.fleetrun import run_fleet
from custode.maintenance.planner import RepoHistory, plan
from custode.scan.discovery import Repository
from custode.scan.repostate import inspect
from fixtures.builders import Fleet, git_refs, run_git
from fixtures.system import unshare_prefix

pytestmark = pytest.mark.integration


class DeletesOnRepack(Git):
    """Deletes the repository named ``victim`` just as its repack starts."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def run(self, args: Any, **kwargs: Any) -> GitResult:
        repo = kwargs.get("repo")
        if args[0] == "repack" and repo is not None and repo.name == self.victim:
            shutil.rmtree(repo)
        return super().run(args, **kwargs)


def test_repositories_deleted_before_and_during_their_turn(fleet: Fleet, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name in ("during.git", "before.git", "kept.git"):
        shutil.copytree(fleet.many_packs, root / name, symlinks=True)
    git = DeletesOnRepack("during.git")
    seen = RepoHistory(first_seen=time.time() - 6 * DAY)
    items = []
    for name in ("during.git", "before.git", "kept.git"):
        state = inspect(Repository(root, root / name, root / name, "bare", name))
        items.append((state, plan(state, MaintenancePolicy(), git.version(), time.time(), seen)))
    refs = git_refs(root / "kept.git")
    shutil.rmtree(root / "before.git")  # after the scan, before its turn
    run = run_fleet(items, git, None, jobs=1)
    results = {s.relative: r for s, _, r in run.results}
    assert results["before.git"].outcome == "failed"
    assert results["before.git"].message == (
        f"{root / 'before.git'} is gone (deleted or moved since it was found); nothing was done"
    )
    assert results["during.git"].outcome == "failed"
    assert results["during.git"].message == (
        "the repository was deleted or moved during maintenance; nothing left to check"
    )
    assert results["kept.git"].outcome == "ok", results["kept.git"]
    assert git_refs(root / "kept.git") == refs
    run_git(root / "kept.git", "fsck", "--strict")


def test_disk_full_during_a_repack_fails_alone_and_loses_nothing(
    fleet: Fleet, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """A 1 MiB tmpfs holds one repository and a filler leaving 8 KiB: its repack hits
    ENOSPC. custode names the repository and the fix, maintains the other root, leaves
    refs and objects intact; with the space freed, the next run completes."""
    prefix = unshare_prefix()
    if prefix is None:
        pytest.skip("cannot create a mount namespace here (unshare refused)")
    mnt, other, out = tmp_path / "small", tmp_path / "other", tmp_path / "out"
    for path in (mnt, other, out):
        path.mkdir()
    shutil.copytree(fleet.many_packs, other / "fine.git", symlinks=True)
    custode = shlex.join([sys.executable, "-m", "custode", "maintain", "--json"])
    q = {k: shlex.quote(str(v)) for k, v in {"mnt": mnt, "out": out, "other": other}.items()}
    repo = f"{q['mnt']}/full.git"
    script = f"""
        set -u
        mount -t tmpfs -o size=1m tmpfs {q["mnt"]}
        cp -a {shlex.quote(str(fleet.many_packs))} {repo}
        git --git-dir {repo} for-each-ref > {q["out"]}/refs.before
        avail=$(df --output=avail -B1 {q["mnt"]} | tail -1)
        head -c $((avail - 8192)) /dev/zero > {q["mnt"]}/filler 2>/dev/null
        {custode} {q["mnt"]} {q["other"]} > {q["out"]}/first.json 2> {q["out"]}/first.err
        echo $? > {q["out"]}/first.rc
        git --git-dir {repo} for-each-ref > {q["out"]}/refs.after
        git --git-dir {repo} fsck --strict > {q["out"]}/fsck 2>&1; echo $? > {q["out"]}/fsck.rc
        rm {q["mnt"]}/filler
        {custode} {q["mnt"]} > {q["out"]}/second.json 2> {q["out"]}/second.err
        echo $? > {q["out"]}/second.rc
        git --git-dir {repo} fsck --strict >> {q["out"]}/fsck 2>&1; echo $? >> {q["out"]}/fsck.rc
        git --git-dir {repo} count-objects -v > {q["out"]}/counts
        git --git-dir {repo} for-each-ref > {q["out"]}/refs.final
    """
    proc = subprocess.run(
        [*prefix, "sh", "-c", script], env=isolated_env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    def read(name: str) -> str:
        return (out / name).read_text()

    assert read("first.rc").strip() == "3", read("first.err")
    first = {r["relative"]: r for r in json.loads(read("first.json"))["repositories"]}
    assert first["full.git"]["outcome"] == "failed"
    message = first["full.git"]["message"]
    assert "Out of diskspace" in message and "free disk space on the filesystem" in message
    assert f"custode: {mnt}/full.git: " in read("first.err")
    assert first["fine.git"]["outcome"] == "ok"
    assert read("refs.after") == read("refs.before") == read("refs.final")
    assert read("fsck.rc").split() == ["0", "0"], read("fsck")
    assert read("second.rc").strip() == "0", read("second.err")
    assert "count: 0\n" in read("counts")
