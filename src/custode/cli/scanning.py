"""Scanning the fleet for a command: progress on a terminal, problems on stderr."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from custode.cli.app import App
from custode.cli.progress import progress_bar
from custode.errors import PathNotFoundError
from custode.scan.discovery import Problem
from custode.scan.fleet import FleetScan, scan
from custode.scan.fleet import Progress as ProgressCallback


def scan_fleet(app: App, roots: list[Path], *, rescan: bool = False) -> FleetScan:
    """Discover and read the fleet, with a progress bar when a person is watching.

    Each unreadable path is reported on stderr (the command decides the exit status);
    no repository at all is an error naming the roots.
    """
    cache = None if rescan else app.state_dir() / "scan-cache.json"
    with scan_progress(app) as progress:
        result = scan(roots, app.config.discovery, progress, cache=cache)
    show_problems(app, roots, result.problems, found=bool(result.states))
    return result


def show_problems(app: App, roots: list[Path], problems: Iterable[Problem], *,
                  found: bool) -> None:  # fmt: skip
    """Each unreadable path on stderr; no repository ``found`` is an error naming the roots."""
    for problem in problems:
        app.err.print(f"custode: {problem.path}: {problem.message}", markup=False, highlight=False)
    if not found:
        raise PathNotFoundError(
            f"no git repositories found under {', '.join(map(str, roots))}; "
            "check the path and discovery.exclude"
        )


@contextmanager
def scan_progress(app: App) -> Iterator[ProgressCallback]:
    """A scan's progress callback: the fleet commands' one bar, "reading repositories"."""
    with progress_bar(app, "reading repositories") as tick:
        yield tick
