"""The one progress display of every fleet command: a bar on stderr while a person
watches, nothing otherwise (logs stay structured when not on a terminal).

Every command gets the same columns: what it does, the bar, done/total, elapsed time,
and once a stop was requested ``interrupted: finishing N, cancelled M`` (drawn by the
bar's own refresh thread, so the display stays live while running work ends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from custode import interrupts
from custode.cli.app import App

Tick = Callable[[int, int | None], None]  # (done, total or None while still counting)


class StopColumn(ProgressColumn):
    """``interrupted: finishing N, cancelled M`` once a stop was requested."""

    def render(self, task: Task) -> Text:
        return Text(interrupts.status(), style="bold yellow")


@contextmanager
def progress_bar(app: App, what: str) -> Iterator[Tick]:
    """A callback (done, total) drawing one bar labelled ``what`` on a terminal; a no-op
    otherwise."""
    if not app.interactive:
        yield _nothing
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), StopColumn())  # fmt: skip
    with Progress(*columns, console=app.err, transient=True) as bar:
        task = bar.add_task(what, total=None)

        def tick(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield tick


def _nothing(done: int, total: int | None) -> None:
    """No one is watching."""
