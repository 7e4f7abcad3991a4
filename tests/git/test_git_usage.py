"""custode.git.runner: what each git cost, from the kernel when it is reaped (peak memory,
CPU seconds), and nothing but an unknown when that cannot be had."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path
from typing import NoReturn

import pytest

from custode.git.runner import Git
from fixtures.builders import run_git

MIB = 1024 * 1024


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    path = tmp_path / "r.git"
    run_git(None, "init", "-q", "--bare", path)
    return path


def _own_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def test_a_git_above_custode_s_own_peak_records_its_peak_and_cpu(
    bare: Path, tmp_path: Path
) -> None:
    # hash-object maps the whole file and reads every page: its resident peak is at least
    # the file's size, made larger than this process's own so that it can be told apart
    size = _own_peak() + 64 * MIB
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(size)  # sparse: no disk, the pages are read as zeros
    result = Git().run(["hash-object", "--no-filters", "--", str(big)], repo=bare)
    assert result.returncode == 0 and len(result.text.strip()) == 40
    assert result.peak_rss is not None and size <= result.peak_rss < size + 256 * MIB
    assert result.cpu_seconds is not None and result.cpu_seconds > 0


def test_a_git_below_custode_s_own_peak_has_no_peak_but_its_cpu(bare: Path) -> None:
    # the kernel reports custode's own peak for it (inherited at exec): not git's
    result = Git().run(["rev-parse", "--git-dir"], repo=bare)
    assert result.returncode == 0
    assert result.peak_rss is None
    assert result.cpu_seconds is not None and result.cpu_seconds >= 0


def _wait4_fails(pid: int, options: int) -> NoReturn:
    raise OSError(errno.EINVAL, "wait4 refused")


@pytest.mark.parametrize("how", ["missing", "failing"])
def test_without_wait4_git_runs_as_before_and_its_cost_is_unknown(
    how: str, bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git = Git()
    if how == "missing":
        monkeypatch.delattr(os, "wait4")
    else:
        monkeypatch.setattr(os, "wait4", _wait4_fails)
    size = _own_peak() + 16 * MIB  # a peak that would be known
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(size)
    result = git.run(["hash-object", "--no-filters", "--", str(big)], repo=bare)
    assert result.returncode == 0 and len(result.text.strip()) == 40
    assert (result.peak_rss, result.cpu_seconds) == (None, None)
    failed = git.run(["rev-parse", "--verify", "-q", "nonesuch"], repo=bare, check=False)
    assert failed.returncode == 1  # the exit status still comes from waitpid
    assert (failed.peak_rss, failed.cpu_seconds) == (None, None)
