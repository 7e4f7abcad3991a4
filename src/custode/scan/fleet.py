"""Scan a fleet: discover repositories under roots and read every RepoState.

Inspection is filesystem-bound Python, so it is spread over a process pool (one worker
per core; threads would serialise on the interpreter lock) and overlaps the walk:
repositories go to the workers in chunks as discovery finds them. A fleet smaller than
one chunk is read in-process, with no pool at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from custode import interrupts
from custode.base.fsread import Watch
from custode.config.model import DiscoveryConfig
from custode.scan.cache import Entry, ScanCache
from custode.scan.discovery import OUTSIDE, Problem, Repository, discover, within
from custode.scan.repostate import RepoState, inspect, inspect_failed, link_borrowers

if TYPE_CHECKING:  # the pool is imported with it: a fleet read in-process needs neither
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing.synchronize import Event as EventType

CHUNK = 128

Progress = Callable[[int, int | None], None]  # (done, total or None while still walking)


@dataclass
class FleetScan:
    states: list[RepoState]
    problems: list[Problem]
    seconds: float


_cache = ScanCache()  # set before the pool forks, so workers inherit it (see scan)
# Set by the parent when the command is stopped: a worker ends its chunk after the
# repository it is reading (a SIGTERM reaches the parent alone, and a chunk of large
# repositories can take longer than the few seconds a stop may take). Made with the pool,
# before it forks, so a fleet read in-process costs no semaphore.
_stop: EventType | None = None
# A fresh read carries its cache entry; a cached state still valid comes back as a bare
# key, because the parent holds the same cache and need not get its own states pickled back.
Result = tuple[RepoState, Entry | None] | str


def _inspect_one(repo: Repository) -> Result:
    if _cache.lookup(repo) is not None:
        return str(repo.git_dir)
    watch = Watch()
    read_at = time.time_ns()
    try:
        state = inspect(repo, watch)
    except OSError as exc:
        return inspect_failed(repo, f"cannot read repository: {exc.strerror or exc}"), None
    return state, Entry.make(repo, state, watch, read_at)


def _inspect_chunk(repos: list[Repository]) -> list[Result]:
    results = []
    for repo in repos:
        if _stop is not None and _stop.is_set():
            break  # the parent was stopped and discards this chunk
        results.append(_inspect_one(repo))
    return results


class _Inspector:
    """Collects repositories as they are found and inspects them in chunks."""

    def __init__(self, workers: int, progress: Progress | None) -> None:
        self.workers = workers
        self.progress = progress
        self.pending: list[Repository] = []
        self.futures: list[Future[list[Result]]] = []
        self.pool: ProcessPoolExecutor | None = None
        self.found = self.done = 0

    def found_one(self, repo: Repository) -> None:
        interrupts.check("reading the fleet")  # SIGINT, SIGTERM: stop the walk here
        self.found += 1
        self.pending.append(repo)
        if self.found % 100 == 0:
            self._report(None)
        if len(self.pending) >= CHUNK and self.workers > 1:
            if self.pool is None:
                import multiprocessing  # noqa: PLC0415
                from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

                global _stop  # noqa: PLW0603  (workers are forked: a global is how they inherit it)
                ctx = multiprocessing.get_context("fork")
                _stop = ctx.Event()
                self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
            future = self.pool.submit(_inspect_chunk, self.pending)
            future.add_done_callback(self._chunk_done)
            self.futures.append(future)
            self.pending = []

    def _chunk_done(self, future: Future[list[Result]]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.done += len(future.result())

    def finish(self) -> list[Result]:
        states: list[Result] = []
        for repo in self.pending:
            interrupts.check("reading the fleet")
            states.append(_inspect_one(repo))
            self.done += 1
            self._report(None if self.futures else self.found)
        for future in self.futures:
            while True:  # close() cancels the chunks not started, stops those running
                interrupts.check("reading the fleet")
                try:
                    states.extend(future.result(timeout=interrupts.POLL))
                except TimeoutError:
                    continue
                break
            self._report(self.found)
        return states

    def close(self) -> None:
        """Stop the workers, also when the walk was interrupted (Ctrl-C) or failed: a
        running chunk ends after its current repository."""
        if self.pool is not None and _stop is not None:
            _stop.set()  # after a whole scan every chunk is done already
            self.pool.shutdown(cancel_futures=True)

    def _report(self, total: int | None) -> None:
        if self.progress is not None:
            self.progress(self.done, total)


def scan(
    roots: Iterable[Path],
    config: DiscoveryConfig,
    progress: Progress | None = None,
    workers: int | None = None,
    cache: Path | None = None,
) -> FleetScan:
    """Discover and inspect; states come back in discovery order (root, relative path).

    With ``cache``, states of repositories unchanged since the last scan are reused (see
    ``custode.scan.cache``) and the cache file is updated.
    """
    global _cache  # noqa: PLW0603  (workers are forked: a global is how they inherit it)
    start = time.monotonic()
    roots = list(roots)
    _cache = ScanCache.load(cache) if cache is not None else ScanCache()
    inspector = _Inspector(workers or os.cpu_count() or 1, progress)
    try:
        found = discover(roots, config, on_found=inspector.found_one)
        results = inspector.finish()
        fresh = [r for r in results if not isinstance(r, str)]
        states = [s for s, _ in fresh] + [
            _cache.entries[r].state for r in results if isinstance(r, str)
        ]
        if cache is not None:
            seen = {s.git_dir for s in states}
            if _cache.update((e for _, e in fresh if e is not None), found.roots, seen):
                _cache.save(cache)
    finally:
        inspector.close()
        _cache = ScanCache()
    states.sort(key=lambda s: (s.root, s.relative))
    # borrowers first: one left out below still borrows from the pools of the fleet
    linked = link_borrowers(states)
    kept = [s for s in linked if not _borrows_from_outside(s, found.roots, found.problems)]
    return FleetScan(kept, found.problems, time.monotonic() - start)


def _borrows_from_outside(state: RepoState, roots: list[Path], problems: list[Problem]) -> bool:
    """Report and return True when an alternate of ``state`` is outside every root: git
    would read (and a backup copy) another repository's objects custode was not given."""
    far = [alt for alt in state.alternates if not within(alt, roots)]
    if far:
        where = os.path.realpath(far[0])
        message = f"its alternates name {where}, outside every root: {OUTSIDE}"
        problems.append(Problem(Path(state.path), message))
    return bool(far)
