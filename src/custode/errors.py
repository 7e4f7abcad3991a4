"""Every error custode reports on purpose, the exit code each maps to, and what each
exit code means (its outcome word, and which is worse when several commands end).

Messages are one line: they name the thing that is wrong and end with the fix. Only
``custode.cli.main`` turns these into output and an exit status.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import Literal


class ExitCode(IntEnum):
    """Exit statuses of every custode command (listed in each command's help)."""

    OK = 0
    ERROR = 1  # an unexpected failure: a bug, reported with --debug for the traceback
    USAGE = 2  # bad arguments or an invalid config file
    PARTIAL = 3  # the command finished but some repositories have problems
    NOT_FOUND = 4  # a path named by the user does not exist or is not usable
    GIT = 5  # git is missing, too old, failed or timed out
    INTEGRITY = 6  # a record (audit log, backup) failed verification
    STATE = 7  # custode's own state (its directory, the history database) is unusable
    LOCKED = 11  # another custode holds a lock this command needs
    INTERRUPTED = 130


#: said once, in ``custode --help`` (and the README); each command's help points there
EXIT_CODES_HELP = (
    "Exit status: 0 ok; 1 unexpected error; 2 usage or config error; "
    "3 some repositories have problems; 4 path not found; 5 git failed; "
    "6 verification failed; 7 state directory or history database unusable; 11 locked; "
    "130 interrupted."
)
EXIT_CODES_SEE = "Exit status: see custode --help."


Outcome = Literal["ok", "partial", "interrupted", "failed"]

#: what a command that ended with each status achieved, as ``custode run`` reports a stage
#: and records a run and ``custode serve`` counts a scheduled job
OUTCOMES: dict[ExitCode, Outcome] = {
    ExitCode.OK: "ok",
    ExitCode.ERROR: "failed",
    ExitCode.USAGE: "failed",
    ExitCode.PARTIAL: "partial",
    ExitCode.NOT_FOUND: "failed",
    ExitCode.GIT: "failed",
    ExitCode.INTEGRITY: "failed",
    ExitCode.STATE: "failed",
    ExitCode.LOCKED: "failed",
    ExitCode.INTERRUPTED: "interrupted",
}

#: worst first: several commands together (the stages of ``custode run``) exit with the
#: first status here that any of them ended with
SEVERITY = (ExitCode.INTERRUPTED, ExitCode.INTEGRITY, ExitCode.ERROR, ExitCode.GIT,
            ExitCode.NOT_FOUND, ExitCode.LOCKED, ExitCode.USAGE, ExitCode.STATE,
            ExitCode.PARTIAL, ExitCode.OK)  # fmt: skip


def outcome(code: int) -> Outcome:
    """The outcome of a command that exited with ``code``; a status that is not an
    ``ExitCode`` (a job that could not start, or was killed by a signal) failed."""
    try:
        return OUTCOMES[ExitCode(code)]
    except ValueError:
        return "failed"


def worst(codes: Iterable[int]) -> ExitCode:
    """The status of several commands together: the most severe of their ``codes``
    (``ERROR`` when none is an ``ExitCode``)."""
    seen = set(codes)
    return next((c for c in SEVERITY if c in seen), ExitCode.ERROR)


class CustodeError(Exception):
    """Base of every error custode reports deliberately."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CustodeError):
    exit_code = ExitCode.USAGE


class ConfigError(CustodeError):
    """The config file cannot be read or does not validate."""

    exit_code = ExitCode.USAGE


class PathNotFoundError(CustodeError):
    """A root or file named by the user does not exist or is the wrong kind of thing."""

    exit_code = ExitCode.NOT_FOUND


class GitError(CustodeError):
    """git failed. Carries the command, its exit status and the tail of its stderr."""

    exit_code = ExitCode.GIT

    def __init__(
        self,
        message: str,
        *,
        args: tuple[str, ...] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.command = args
        self.returncode = returncode
        self.stderr = stderr


class GitTimeoutError(GitError):
    """git ran longer than its time limit and was killed."""


class GitNotFoundError(GitError):
    """No usable git binary, or one older than custode supports."""


class GitRefusedError(GitError):
    """The runner refused to run a git command that could execute repository-supplied code."""


class RepositoryError(CustodeError):
    """A repository cannot be read: broken, corrupt or unreadable."""

    exit_code = ExitCode.PARTIAL


class IntegrityError(CustodeError):
    """A record custode keeps (the audit log, the state database) failed verification."""

    exit_code = ExitCode.INTEGRITY


class StateError(CustodeError):
    """A file in the state directory (the history database, the audit log) cannot be used."""


class StateUnusableError(StateError):
    """custode's own state cannot be used: the history database is busy or damaged, or the
    state directory is unsafe. Costs what needs it, never what does not (the backup)."""

    exit_code = ExitCode.STATE


class LockedError(CustodeError):
    exit_code = ExitCode.LOCKED
