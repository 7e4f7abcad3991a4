"""Scan a fleet: discover repositories under roots and read every RepoState.

Inspection is filesystem-bound Python; above a few hundred repositories it is spread
over a process pool (one worker per core, chunks of repositories) because threads
would serialise on the interpreter lock.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from custode.config import DiscoveryConfig
from custode.discovery import Problem, Repository, discover
from custode.repostate import RepoState, inspect, inspect_failed, link_borrowers

PARALLEL_ABOVE = 400
CHUNK = 250

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class FleetScan:
    states: list[RepoState]
    problems: list[Problem]
    seconds: float


def _inspect_one(repo: Repository) -> RepoState:
    try:
        return inspect(repo)
    except OSError as exc:
        return inspect_failed(repo, f"cannot read repository: {exc.strerror or exc}")


def _inspect_chunk(repos: list[Repository]) -> list[RepoState]:
    return [_inspect_one(r) for r in repos]


def inspect_all(
    repos: list[Repository], progress: Progress | None = None, workers: int | None = None
) -> list[RepoState]:
    total = len(repos)
    workers = workers or os.cpu_count() or 1
    if total <= PARALLEL_ABOVE or workers == 1:
        states = []
        for i, repo in enumerate(repos, 1):
            states.append(_inspect_one(repo))
            if progress and (i % 50 == 0 or i == total):
                progress(i, total)
        return states
    chunks = [repos[i : i + CHUNK] for i in range(0, total, CHUNK)]
    states = []
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for chunk in pool.map(_inspect_chunk, chunks):
            states.extend(chunk)
            if progress:
                progress(len(states), total)
    return states


def scan(
    roots: Iterable[Path],
    config: DiscoveryConfig,
    progress: Progress | None = None,
) -> FleetScan:
    start = time.monotonic()
    found = discover(roots, config)
    states = link_borrowers(inspect_all(found.repositories, progress))
    return FleetScan(states, found.problems, time.monotonic() - start)
