"""The one progress display of every fleet command: a bar on stderr while a person
watches, nothing otherwise (logs stay structured when not on a terminal).

Every command gets the same columns: what it does, the bar, done/total, elapsed time,
and once a stop was requested ``interrupted: finishing N, cancelled M`` (drawn by the
bar's own refresh thread, so the display stays live while running work ends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from custode import interrupts

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

    from custode.cli.app import App

Tick = Callable[[int, int | None], None]  # (done, total or None while still counting)


@contextmanager
def progress_bar(app: App, what: str) -> Iterator[Tick]:
    """A callback (done, total) drawing one bar labelled ``what`` on a terminal; a no-op
    otherwise."""
    if not app.interactive:
        yield _nothing
        return
    # Imported here: only a person at a terminal sees a bar (start-up of every other run).
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), _stop_column())  # fmt: skip
    with Progress(*columns, console=app.err, transient=True) as bar:
        task = bar.add_task(what, total=None)

        def tick(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield tick


def _stop_column() -> ProgressColumn:
    """``interrupted: finishing N, cancelled M`` once a stop was requested."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class StopColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(interrupts.status(), style="bold yellow")

    return StopColumn()


def _nothing(done: int, total: int | None) -> None:
    """No one is watching."""
