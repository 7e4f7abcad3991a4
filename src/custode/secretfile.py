"""Reading a secret file — an age identity, an SMTP password: refused unless it is a regular
file that only its owner can read (mode 0600-like), and bounded in size. Errors name the
file, what is wrong and the fix; they never show the content."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from custode.errors import PathNotFoundError, UsageError


def read_secret(path: Path, what: str, *, limit: int, missing: str, expected: str) -> bytes:
    """The bytes of ``path``, which ``what`` names in errors ("identity file"); ``missing``
    is the fix when it does not exist, ``expected`` what it should be ("an age key file")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # fstat below checks what was opened
    except FileNotFoundError:
        raise PathNotFoundError(f"{what} {path} does not exist: {missing}") from None
    except OSError as exc:
        raise UsageError(
            f"cannot open {what} {path}: {exc.strerror}: check the path and its permissions"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{what} {path} is not a regular file: give {expected}")
        if info.st_mode & 0o077:
            raise UsageError(
                f"{what} {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}): run 'chmod 600 {path}'"
            )
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} {path} is too large to be {expected}")
    return data


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
