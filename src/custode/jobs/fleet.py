"""Reading the fleet for a job that then works on each repository (check, maintain): the
scan (through the scan cache), each unreadable path said as it is found, and no
repository at all refused, naming the roots, before any work starts.

A job names its stages; the caller's ``Bar`` gives each a progress callback (the CLI a
bar on a terminal, every other entry point nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from custode.config.model import Config
from custode.errors import PathNotFoundError
from custode.scan.fleet import FleetScan, Progress, scan

Say = Callable[[str], None]
#: a stage's progress display: given what the stage does, a context giving (done, total)
Bar = Callable[[str], AbstractContextManager[Progress]]


def quiet(message: str) -> None:
    """No one to tell."""


@contextmanager
def no_bar(what: str) -> Iterator[Progress]:
    """No one is watching."""

    def tick(done: int, total: int | None) -> None:
        pass

    yield tick


def read(
    roots: Sequence[Path], config: Config, state_dir: Path, *, bar: Bar, notice: Say
) -> FleetScan:
    """The fleet under ``roots``; each unreadable path goes to ``notice`` (the job decides
    what it means for its outcome). No repository at all is an error naming the roots."""
    with bar("reading repositories") as tick:
        found = scan(list(roots), config.discovery, tick, cache=state_dir / "scan-cache.json")
    for problem in found.problems:
        notice(f"{problem.path}: {problem.message}")
    if not found.states:
        raise nothing_found(roots)
    return found


def nothing_found(roots: Sequence[Path]) -> PathNotFoundError:
    """The error of a job given roots that hold no repository at all."""
    return PathNotFoundError(
        f"no git repositories found under {', '.join(map(str, roots))}; "
        "check the path and discovery.exclude"
    )
