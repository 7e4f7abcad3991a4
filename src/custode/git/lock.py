"""One custode at a time per repository: an advisory lock inside the git directory.

The lock is ``flock(2)`` on ``<git dir>/custode-lock``, so the kernel releases it when its
holder dies, however it dies (kill -9 included): a lock left by a killed custode is never
stale, the next run simply gets it. The file stays in place (removing it would race with a
process about to lock it) and records who holds it, for the error message. Its name has
no ``.lock`` suffix so that nothing mistakes it for one of git's own lock files. git's
locks are git's business: custode never takes or breaks them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from custode.errors import LockedError, RepositoryError

LOCK_NAME = "custode-lock"


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {info['pid']} on {info['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def repository_lock(git_dir: Path, purpose: str) -> Iterator[int]:
    """Hold the custode lock of ``git_dir`` for the duration of the block.

    Yields the lock's file descriptor: give it to every git started under the lock
    (``Git.run(pass_fds=...)``). A flock belongs to the open file, so a git that outlives
    a killed custode (git runs in its own process group) keeps the repository locked
    until it, and any child it started, has exited.

    Raises LockedError at once when another custode holds it (naming the holder), and
    RepositoryError when the lock cannot be created (read-only or vanished repository).
    """
    path = git_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise RepositoryError(
                f"cannot lock {git_dir}: {exc.strerror}; custode needs write access to the "
                "repository to maintain it"
            ) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise RepositoryError(
                f"{git_dir} is gone (deleted or moved since it was found); nothing was done"
            ) from None
        raise RepositoryError(f"cannot lock {git_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{git_dir} is being worked on by another custode ({_holder(fd)}); "
                "wait for it to finish or stop it"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "purpose": purpose}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the flock
