"""Small, fast, defensive file reads for the scanning hot path.

``open()`` costs six system calls and a buffered-IO object per file; reading a HEAD, a
pack index header or a loose ref ten thousand times over makes that matter. These use
``os.open``/``os.read``/``os.close`` and raise OSError like ``open``. Repositories are
untrusted: ``O_NONBLOCK`` keeps a FIFO planted as ``HEAD`` from hanging the scan, and
``read_all`` only reads regular files (never ``/dev/zero`` behind a symbolic link), up to
a cap. ``problem`` turns its errors (``NotRegularFile``, ``FileTooLarge``) into a report
line that names the file and the fix.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

#: What custode reads whole of a file git keeps small (a config, HEAD, packed-refs...):
#: far above any real one (packed-refs of a million refs is ~70 MiB), far below what
#: would exhaust memory. A larger file is reported, not read.
READ_MAX = 256 << 20

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
)  # fmt: skip


def kind(mode: int) -> str:
    """What a file of ``mode`` is, for a message: "a FIFO", "a directory"..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class UnfitFile(OSError):
    """A file custode (and git) cannot sensibly read: its message says why."""


class NotRegularFile(UnfitFile):
    """A FIFO, a device, a directory... where a regular file is expected."""

    def __init__(self, path: str, mode: int) -> None:
        super().__init__(errno.EINVAL, f"is {kind(mode)}, not a regular file", path)


class FileTooLarge(UnfitFile):
    """A regular file larger than a reader's cap (a planted or sparse giant)."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        text = f"is {size:,} bytes, more than the {limit:,} custode reads"
        super().__init__(errno.EFBIG, text, path)


#: Files a repository cannot do without: "remove it" would be the wrong fix.
NEEDED = frozenset({"HEAD", "config"})
#: The fix for a linked worktree's ``gitdir`` or ``commondir``: removed, git would prune
#: the worktree (and the commits only its HEAD names) instead.
REPAIR = "replace it: git worktree repair writes it afresh"


def problem(name: str, exc: OSError) -> str:
    """``<name>: <what is wrong>; <the fix>``: a report line about one file."""
    return f"{name}: {fault(exc, name)}"


def fault(exc: OSError, name: str = "") -> str:
    """What is wrong with a file and the fix, for after its name.

    Nothing is lost by removing a FIFO or a device, except where git needs the file
    (``NEEDED``) or would act on its absence (a worktree's ``gitdir``); a giant may be
    real data."""
    if isinstance(exc, NotRegularFile):
        if name in NEEDED:
            fix = "replace it with a regular file"
        elif os.path.basename(name) in {"gitdir", "commondir"}:
            fix = REPAIR
        else:
            fix = "remove it"
    elif isinstance(exc, FileTooLarge):
        fix = "check what wrote it"
    else:
        return f"cannot read it ({exc.strerror or exc})"
    return f"{exc.strerror}; {fix}"


_UNFIT = ("not a regular file;", " custode reads;")  # only NotRegularFile, FileTooLarge say these


def unfit(problems: Iterable[str]) -> list[str]:
    """The problems (``problem`` lines) that are a FIFO, a device or a giant where a small
    file belongs: what git would wait on or read without end."""
    return [p for p in problems if any(mark in p for mark in _UNFIT)]


def _open(path: str, follow: bool) -> int:
    return os.open(path, _FLAGS if follow else _FLAGS | os.O_NOFOLLOW)


def read_prefix(path: str, size: int, *, regular: bool = False) -> bytes:
    """Up to ``size`` bytes from the start of ``path``.

    ``regular``: raise NotRegularFile unless it is a regular file (by default a FIFO
    reads as empty and a device as whatever it gives)."""
    fd = os.open(path, _FLAGS)
    try:
        if regular and not stat.S_ISREG(mode := os.fstat(fd).st_mode):
            raise NotRegularFile(path, mode)
        return os.read(fd, size)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def read_all(
    path: str, limit: int = READ_MAX, *, follow: bool = True
) -> tuple[bytes, os.stat_result]:
    """The whole of a regular file and its stat, read through one descriptor.

    Never blocks (``O_NONBLOCK``: a FIFO is refused, not waited on); raises
    NotRegularFile for anything but a regular file (``/dev/zero`` behind a symbolic
    link), FileTooLarge past ``limit`` bytes (also when it grows while read), and
    ``OSError(ELOOP)`` for a symbolic link when not ``follow``.
    """
    fd = _open(path, follow)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, st.st_mode)
        if st.st_size > limit:
            raise FileTooLarge(path, st.st_size, limit)
        chunks = []
        total = 0
        while chunk := os.read(fd, min(max(st.st_size, 65536), limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileTooLarge(path, total, limit)
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
            except (OSError, ValueError):  # ValueError: a NUL in a path read from a file
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
