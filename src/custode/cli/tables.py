"""How wide a command's tables are drawn: the terminal's width on a terminal; into a pipe
or a file (a pager, a mail, a log), the width ``COLUMNS`` says, else ``PIPE_WIDTH``. Cells
that can be long (paths, reasons) fold within it rather than stretch the table or be cut."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from custode.cli.app import App

#: the width of a table written into a pipe or a file when ``COLUMNS`` is not set
PIPE_WIDTH = 100


def table_width(app: App) -> int:
    """The width to draw ``app.out``'s tables at."""
    if app.out.is_terminal:
        return app.out.width
    columns = os.environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
