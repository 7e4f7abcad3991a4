"""The pid file of ``custode serve``: one serve per state directory, and who it is.

``<state directory>/serve.pid`` holds the pid of the serve running there, under an
``flock(2)`` that the kernel drops when that process dies, however it dies: a file left by
a killed serve is never stale, the next start simply takes the lock and writes its own pid.

A clean exit (SIGTERM, SIGINT, a start that fails after taking the lock) removes the file,
so that its presence means a serve is, or was until it crashed, running. It is removed only
while it is still ours: the path names the inode we locked and holds our pid; a file that
another instance put in its place (after someone deleted ours) is left alone. Removing a
locked file races with a process that opened it just before: that process then locks the
removed inode. So ``acquire`` checks, once it holds the lock, that the path still names
the file it locked, and starts over when it does not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from custode.errors import LockedError, StateUnusableError

PID_FILE = "serve.pid"
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


class PidFile:
    """A held pid file; ``release`` (or the end of a ``with`` block) removes it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd, self._pid = path, fd, os.getpid()

    @classmethod
    def acquire(cls, state: Path) -> PidFile:
        """Lock ``state/serve.pid`` and write our pid in it; LockedError naming the pid of
        the serve that holds it, StateUnusableError when it cannot be created."""
        path = state / PID_FILE
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnusableError(
                f"cannot create the state directory {state}: {exc.strerror}; create it, or "
                "set state.directory"
            ) from None
        while True:
            fd = _open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise LockedError(
                    f"custode serve (pid {other}) already uses the state directory {state}; "
                    "stop it or give this one another state.directory"
                ) from None
            if _names(path, fd):
                break
            os.close(fd)  # its last holder removed it meanwhile: lock the file there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file if it is still ours, then drop the lock. Idempotent."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            mine = os.pread(fd, 32, 0).strip() == str(self._pid).encode()
            # a forked child that inherited this object is not the serve that wrote the file
            if mine and os.getpid() == self._pid and _names(self.path, fd):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> PidFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _open(path: Path) -> int:
    try:
        return os.open(path, _FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateUnusableError(
                f"{path} is a symbolic link; remove it (custode serve writes its pid there)"
            ) from None
        raise StateUnusableError(
            f"cannot create {path}: {exc.strerror}; custode serve needs to write its pid in "
            "the state directory"
        ) from None


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is (still) the file open as ``fd``."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
