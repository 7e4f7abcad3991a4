"""Files only custode's user may touch. A secret file — an age identity, an SMTP password —
is refused unless it is a regular file that only its owner can read (mode 0600-like), and
bounded in size. The state directory and the files custode reads back from it (history,
audit log, scan cache) are refused unless custode's user (or root) owns them and neither
group nor others can write them: whoever can write them decides what custode believes.
Errors name the file, what is wrong and the fix; they never show the content."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from custode.errors import PathNotFoundError, StateUnusableError, UsageError


def read_secret(path: Path, what: str, *, limit: int, missing: str, expected: str) -> bytes:
    """The bytes of ``path``, which ``what`` names in errors ("identity file"); ``missing``
    is the fix when it does not exist, ``expected`` what it should be ("an age key file")."""
    try:
        # O_NONBLOCK: a FIFO planted here must not make us wait; fstat checks what it is
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
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


def require_private_dir(path: Path, what: str, *, create: bool = True) -> bool:
    """Whether ``path`` exists (created with mode 0700 if missing and ``create``); refuse
    it unless it is a directory that custode's user or root owns and that group and
    others cannot write."""
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # a file there: FileExistsError
    try:
        info = path.stat()  # a symlink to a directory is followed: the directory is checked
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        raise StateUnusableError(
            f"{what} {path} is not a directory; fix: move it aside or set state.directory"
        )
    _require_owned(path, what, info)
    return True


def require_private_file(path: Path, what: str) -> bool:
    """Whether ``path`` exists; refuse it unless it is a regular file (not a symlink)
    that custode's user or root owns and that group and others cannot write."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode):
        raise StateUnusableError(
            f"{what} {path} is not a regular file (a symbolic link, a directory, a FIFO or "
            "a device); fix: move it aside"
        )
    _require_owned(path, what, info)
    return True


def _require_owned(path: Path, what: str, info: os.stat_result) -> None:
    euid = os.geteuid()
    if info.st_uid not in (euid, 0):
        user = _user_name(euid)
        raise StateUnusableError(
            f"{what} {path} belongs to uid {info.st_uid}, not to custode's user {user}: "
            f"whoever owns it decides what custode reads; fix: run 'chown {user} {path}' "
            "or set state.directory to a directory of custode's user"
        )
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        raise StateUnusableError(
            f"{what} {path} is writable by group or others (mode {mode:04o}): anyone who "
            f"can write it decides what custode reads; fix: run 'chmod go-w {path}'"
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry, common in containers
        return str(uid)
