"""Scanning the fleet for a command: its progress bar, and its problems on stderr."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from custode.cli.app import App
from custode.cli.progress import progress_bar
from custode.jobs.fleet import nothing_found
from custode.scan.discovery import Problem
from custode.scan.fleet import Progress as ProgressCallback


def show_problems(app: App, roots: list[Path], problems: Iterable[Problem], *,
                  found: bool) -> None:  # fmt: skip
    """Each unreadable path on stderr; no repository ``found`` is an error naming the roots."""
    for problem in problems:
        app.say(f"{problem.path}: {problem.message}")
    if not found:
        raise nothing_found(roots)


@contextmanager
def scan_progress(app: App) -> Iterator[ProgressCallback]:
    """A scan's progress callback: the fleet commands' one bar, "reading repositories"."""
    with progress_bar(app, "reading repositories") as tick:
        yield tick
