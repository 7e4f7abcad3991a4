"""One custode at a time per repository: an advisory lock inside the git directory.

The lock is ``flock(2)`` on ``<git dir>/custode-lock``, so the kernel releases it when its
holder dies, however it dies (kill -9 included): a lock left by a killed custode is never
stale, the next run simply gets it. The file records who holds it, for the error
message, and goes when its holder is done, so that nothing of custode's stays in a
repository: the holder removes it while it still holds the lock, and whoever locks a file
then checks that the path still names that very file (the same device and inode); if
not, it opened one a finished holder has just removed, and it starts over. Only a killed
custode leaves the file behind, until the next run takes it (and removes it). Its name
has no ``.lock`` suffix so that nothing mistakes it for one of git's own lock files.
git's locks are git's business: custode never takes or breaks them.
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
    fd = _locked(path, git_dir)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "purpose": purpose}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield fd
    finally:
        with contextlib.suppress(OSError):  # still ours: a held lock's file is not removed
            os.unlink(path)
        os.close(fd)  # releases the flock


_ATTEMPTS = 100  # finished holders removing the file under us, one after another


def _locked(path: Path, git_dir: Path) -> int:
    """A descriptor of ``path`` holding its flock, the path still naming that file."""
    for _ in range(_ATTEMPTS):
        fd = _open(path, git_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(
                f"{git_dir} is being worked on by another custode ({holder}); "
                "wait for it to finish or stop it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        mine = os.fstat(fd)
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # a finished holder removed it after we opened it: again
    raise LockedError(f"{git_dir}: its custode lock keeps changing hands; try again later")


def _open(path: Path, git_dir: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
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
