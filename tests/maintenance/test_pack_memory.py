"""Repack memory: pack-objects' delta windows, threads and delta cache chosen from the
repository's size and the host's memory, so that the parallel jobs together stay under
``maintenance.memory_share`` of it (git gc bounds none of them)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from custode.config.maintenance import MIB, MaintenancePolicy
from custode.git.runner import Git, GitResult
from custode.maintenance.executor import (
    PackLimits,
    PackOptions,
    execute,
    pack_options,
    repack_commands,
)
from custode.maintenance.planner import Repack, RepoHistory, plan
from custode.scan.discovery import Repository
from custode.scan.repostate import inspect
from fixtures.builders import Fleet, run_git

GIB = 1024 * MIB
HOST = 16 * GIB
SMALL, LARGE = 2 * MIB, 800 * MIB


def limits(jobs: int, **policy: Any) -> PackLimits:
    return PackLimits.of(MaintenancePolicy(**policy), jobs, host_memory=HOST)


def options(size: int, jobs: int, **policy: Any) -> PackOptions:
    return limits(jobs, **policy).sized(size)


def used(o: PackOptions) -> int:
    """What the options let pack-objects use beyond its object list."""
    return o.window_memory * o.threads + o.delta_cache


def test_each_job_gets_its_share_of_the_hosts_memory() -> None:
    assert limits(1).memory == HOST // 4  # memory_share 0.25
    assert limits(4).memory == HOST // 16
    assert limits(2, memory_share=0.5).memory == HOST // 4
    for jobs in (1, 2, 4, 16):
        for size in (0, SMALL, LARGE, 50 * GIB):
            o = options(size, jobs)
            # the windows and the cache take at most half of the share (the rest is the
            # object list's); 8 MiB of window is the floor
            assert used(o) <= max(limits(jobs).memory // 2, 8 * MIB + o.delta_cache), (jobs, o)


@pytest.mark.parametrize("jobs", [1, 4])
def test_the_commands_carry_the_limits_for_a_small_and_a_large_repository(jobs: int) -> None:
    small, large = options(SMALL, jobs), options(LARGE, jobs)
    assert small == PackOptions(8 * MIB, 1, MIB)  # a window beyond the repository buys nothing
    if jobs == 1:  # 4 GiB: threads as the CPUs allow, git's 256 MiB cache at most
        assert large.delta_cache == 200 * MIB and large.window_memory >= 400 * MIB // 4
    else:  # 1 GiB each: a quarter of the windows, half the cache
        assert large.delta_cache == 128 * MIB
        assert large.window_memory * large.threads == 384 * MIB
    for o in (small, large):
        (cmd,) = repack_commands("geometric_repack", Repack(geometric_factor=2), o)
        assert f"--window-memory={o.window_memory}" in cmd and f"--threads={o.threads}" in cmd
        assert o.config() == (("pack.deltaCacheSize", str(o.delta_cache)),)
    assert options(LARGE, 4).window_memory < options(LARGE, 1).window_memory


def test_threads_follow_the_size_and_the_memory() -> None:
    assert pack_options(10 * MIB, GIB, cpus=8).threads == 1
    assert pack_options(100 * MIB, GIB, cpus=8).threads == 4
    assert pack_options(100 * MIB, GIB, cpus=2).threads == 1  # half the CPUs
    tight = pack_options(LARGE, 40 * MIB, cpus=8)  # 20 MiB for windows: two threads of 8
    assert tight.threads == 1 and tight.window_memory == 15 * MIB and tight.delta_cache == 5 * MIB


def test_the_policys_caps_still_hold() -> None:
    capped = options(LARGE, 1, pack_window_memory=32 * MIB, pack_threads=1)
    assert capped.window_memory == 32 * MIB and capped.threads == 1
    assert options(LARGE, 1, pack_threads=3).threads == 3
    assert options(LARGE, 1, pack_window_memory=GIB) == options(LARGE, 1)  # only a cap
    for bad in ({"memory_share": 0}, {"memory_share": 1.5}):
        with pytest.raises(ValueError, match="memory_share"):
            MaintenancePolicy(**bad)


class Recording(Git):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], tuple[tuple[str, str], ...]]] = []

    def run(self, args: Sequence[str], **kwargs: Any) -> GitResult:
        self.calls.append((list(args), tuple(kwargs.get("config", ()))))
        return super().run(args, **kwargs)


@pytest.mark.integration
def test_a_repack_under_tight_limits_succeeds(fleet: Fleet, tmp_path: Path) -> None:
    path = tmp_path / "many-packs.git"
    shutil.copytree(fleet.many_packs, path, symlinks=True)
    repo = Repository(tmp_path, path, path, "bare", path.name)
    before = run_git(path, "for-each-ref")
    p = plan(inspect(repo), MaintenancePolicy(), Git().version(), time.time(), RepoHistory())
    assert p.tasks[0].kind == "full_repack", p
    git = Recording()
    tight = PackLimits(memory=16 * MIB, cpus=2)
    result = execute(repo, p, git, None, now=time.time(), limits=tight)
    assert result.outcome == "ok", result
    repacks = [(a, c) for a, c in git.calls if a[0] == "repack"]
    assert repacks, git.calls
    for args, config in repacks:
        assert "--window-memory=8388608" in args and "--threads=1" in args, args
        assert ("pack.deltaCacheSize", str(MIB)) in config, config
    assert run_git(path, "for-each-ref") == before
    run_git(path, "fsck", "--strict", "--no-progress")
