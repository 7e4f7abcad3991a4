"""The application object every command receives: config, output and logging in one place."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from custode import interrupts
from custode.base import paths
from custode.errors import PathNotFoundError

if TYPE_CHECKING:
    from custode.config.model import Config


def _stdout_console() -> Console:
    """Terminal width on a terminal; wide lines (no folding) into a pipe or file."""
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 240
    return console


@dataclass
class App:
    """Shared by all commands: lazily loads config; renders to stdout, talks on stderr."""

    config_path: Path | None = None
    debug: bool = False
    out: Console = field(default_factory=_stdout_console)
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))

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
        return self.err.is_terminal

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
        indent = 2 if self.out.is_terminal else None
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
