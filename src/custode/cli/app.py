"""The application object every command receives: config, output and logging in one place."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from custode import interrupts
from custode.base import paths
from custode.errors import PathNotFoundError

if TYPE_CHECKING:
    from rich.console import Console

    from custode.config.model import Config


def _surely_not_a_terminal(stream: TextIO | None) -> bool:
    """True where rich's ``Console.is_terminal`` is certainly False: no tty, and neither
    TTY_COMPATIBLE=1 nor FORCE_COLOR (which make rich say True) set. A run into a pipe or
    file (``--json``, a cron job) then decides without importing rich; any other case asks
    rich itself."""
    if os.environ.get("TTY_COMPATIBLE") == "1" or "FORCE_COLOR" in os.environ:
        return False
    stream = getattr(stream, "rich_proxied_file", stream)  # as rich does
    isatty = getattr(stream, "isatty", None)
    try:
        return isatty is None or not isatty()
    except ValueError:  # closed
        return True


@dataclass
class App:
    """Shared by all commands: lazily loads config; renders to stdout, talks on stderr."""

    config_path: Path | None = None
    debug: bool = False

    @cached_property
    def out(self) -> Console:
        """stdout: terminal width on a terminal; wide lines (no folding) into a pipe or file."""
        from rich.console import Console  # only what is drawn or said needs rich

        console = Console(soft_wrap=True)
        if not console.is_terminal:
            console.width = 240
        return console

    @cached_property
    def err(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, soft_wrap=True)

    @cached_property
    def config(self) -> Config:
        # Imported here: the config model (pydantic) is the largest import of start-up, and
        # --help, --version and the commands that read no config do without it.
        from custode.config.model import load_config
        from custode.records import problems as stateproblems

        if self.config_path is not None:
            config = load_config(self.config_path, required=True)
        else:
            config = load_config(paths.default_config_file(), required=False)
        stateproblems.set_busy_timeout(config.state.busy_timeout)  # every StateDB.open
        return config

    @property
    def interactive(self) -> bool:
        """True when a person watches stderr: show progress bars and colour."""
        return not _surely_not_a_terminal(sys.stderr) and self.err.is_terminal

    def state_dir(self) -> Path:
        return self.config.state.directory or paths.state_dir()

    def roots(self, given: tuple[Path, ...]) -> list[Path]:
        """Roots from the command line, else from config; at least one is required."""
        roots = list(given) or list(self.config.roots)
        if not roots:
            raise PathNotFoundError(
                "no roots given; pass a directory of repositories (custode status /srv/git) "
                f"or set roots in {self.config_path or paths.default_config_file()}"
            )
        return roots

    def print_json(self, obj: Any) -> None:
        """Indented for a person at a terminal, compact (and faster) for programs."""
        indent = None if _surely_not_a_terminal(sys.stdout) or not self.out.is_terminal else 2
        sys.stdout.write(json.dumps(obj, indent=indent, default=str) + "\n")

    def stop_on_signals(self) -> None:
        """A fleet command: SIGINT or SIGTERM starts nothing new, stops what runs and
        exits 130 (``custode.interrupts``)."""
        interrupts.install()

    def warn(self, message: str) -> None:
        logging.getLogger("custode").warning(message)

    def say(self, message: str) -> None:
        """What a job tells the person as it happens: one ``custode:`` line on stderr."""
        self.err.print(f"custode: {message}", markup=False, highlight=False)
