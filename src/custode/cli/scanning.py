"""Scanning the fleet for a command: progress on a terminal, problems on stderr."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from custode.cli.app import App
from custode.errors import PathNotFoundError
from custode.scan.fleet import FleetScan, scan


def scan_fleet(app: App, roots: list[Path], *, rescan: bool = False) -> FleetScan:
    """Discover and read the fleet, with a progress bar when a person is watching.

    Each unreadable path is reported on stderr (the command decides the exit status);
    no repository at all is an error naming the roots.
    """
    result = _scan(app, roots, rescan)
    for problem in result.problems:
        app.err.print(f"custode: {problem.path}: {problem.message}", markup=False, highlight=False)
    if not result.states:
        raise PathNotFoundError(
            f"no git repositories found under {', '.join(map(str, roots))}; "
            "check the path and discovery.exclude"
        )
    return result


def _scan(app: App, roots: list[Path], rescan: bool) -> FleetScan:
    cache = None if rescan else app.state_dir() / "scan-cache.json"
    if not app.interactive:
        return scan(roots, app.config.discovery, cache=cache)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=app.err, transient=True, auto_refresh=False) as bar:
        task = bar.add_task("reading repositories", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total, refresh=True)

        return scan(roots, app.config.discovery, progress, cache=cache)
