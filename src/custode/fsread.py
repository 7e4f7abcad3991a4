"""Small, fast, defensive file reads for the scanning hot path.

``open()`` costs six system calls and a buffered-IO object per file; reading a HEAD, a
pack index header or a loose ref ten thousand times over makes that matter. These use
``os.open``/``os.read``/``os.close`` and raise OSError like ``open``. Repositories are
untrusted: ``O_NONBLOCK`` keeps a FIFO planted as ``HEAD`` from hanging the scan, and
``read_all`` only reads regular files (never ``/dev/zero`` behind a symbolic link).
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def read_prefix(path: str, size: int) -> bytes:
    """Up to ``size`` bytes from the start of ``path``."""
    fd = os.open(path, _FLAGS)
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def read_all(path: str) -> tuple[bytes, os.stat_result]:
    """The whole of a regular file and its stat, read through one descriptor."""
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks = []
        while chunk := os.read(fd, max(st.st_size, 65536)):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


class Watch:
    """The directories (and key files) one inspection read, with their mtimes.

    git changes a repository only by creating, renaming and deleting files, each of which
    changes the containing directory's mtime; so when every watched mtime is unchanged,
    what was read is unchanged. Each directory is stat'ed *before* it is read, so a change
    during the read shows as a newer mtime next time.
    """

    __slots__ = ("contents", "mtimes", "paths")

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.mtimes: list[int] = []
        # small files rewritten in place by a crash or a person, with no mtime to show it
        # (a power loss leaves a loose ref empty or NUL-filled): their path and what was read
        self.contents: list[tuple[str, bytes]] = []

    def scandir(self, path: str) -> list[os.DirEntry[str]]:
        """The entries of ``path`` (none if it does not exist), watching it."""
        try:
            st = os.stat(path)
            with os.scandir(path) as it:
                entries = list(it)
        except FileNotFoundError:  # never there, or removed by a git at work meanwhile
            return []
        self.paths.append(path)
        self.mtimes.append(st.st_mtime_ns)
        return entries

    def file(self, path: str, st: os.stat_result) -> None:
        """Watch a file git may rewrite in place (it does not, but people do)."""
        self.paths.append(path)
        self.mtimes.append(st.st_mtime_ns)

    def content(self, path: str, data: bytes) -> None:
        """Watch a small file by what was read from it: re-read and compared each time."""
        self.contents.append((path, data))

    def path(self, path: str) -> None:
        """Watch ``path``, or its nearest existing parent while it does not exist."""
        while True:
            try:
                st = os.stat(path)
            except OSError:
                parent = os.path.dirname(path)
                if parent == path:
                    return
                path = parent
                continue
            self.file(path, st)
            return

    def unchanged(self, not_after_ns: int) -> bool:
        """True when every watched mtime is as recorded and older than ``not_after_ns``.

        A change in the same clock tick as a read leaves the mtime as it was; so an entry
        modified shortly before its read (after ``not_after_ns``) is never trusted.
        """
        for path, mtime in zip(self.paths, self.mtimes, strict=True):
            if mtime >= not_after_ns:
                return False
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return False
            except OSError:
                return False
        return True
