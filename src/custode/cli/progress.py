"""The one progress display of every fleet command: a bar on stderr while a person
watches, nothing otherwise (logs stay structured when not on a terminal).

Every command gets the same columns: what it does (a command may describe it further as
it goes: ``Bar.describe``), the bar, done/total (``N (counting)`` while the total is not
known yet), elapsed time, and once a stop was requested ``interrupted: finishing N,
cancelled M`` (drawn by the bar's own refresh thread, so the display stays live while
running work ends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from custode import interrupts

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

    from custode.cli.app import App


class Bar:
    """What a command draws its progress with: called with (done, total or None while
    still counting); ``describe(text)`` replaces the label (what is being done now). Does
    nothing when no one is watching."""

    def __init__(self, update: Callable[..., Any] | None = None) -> None:
        self._update = update

    def __call__(self, done: int, total: int | None) -> None:
        if self._update is not None:
            self._update(completed=done, total=total)

    def describe(self, text: str) -> None:
        if self._update is not None:
            self._update(description=text)


@contextmanager
def progress_bar(app: App, what: str) -> Iterator[Bar]:
    """A :class:`Bar` drawing one bar labelled ``what`` on a terminal; a no-op
    otherwise."""
    if not app.interactive:
        yield Bar()
        return
    # Imported here: only a person at a terminal sees a bar (start-up of every other run).
    from functools import partial

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), _count_column(),
               TimeElapsedColumn(), _stop_column())  # fmt: skip
    with Progress(*columns, console=app.err, transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield Bar(partial(bar.update, task))


def _count_column() -> ProgressColumn:
    """``done/total``, or ``done (counting)`` while the total is not known yet."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class CountColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            done = int(task.completed)
            if task.total is None:
                return Text(f"{done} (counting)", style="progress.download")
            return Text(f"{done}/{int(task.total)}", style="progress.download")

    return CountColumn()


def _stop_column() -> ProgressColumn:
    """``interrupted: finishing N, cancelled M`` once a stop was requested."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class StopColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(interrupts.status(), style="bold yellow")

    return StopColumn()
