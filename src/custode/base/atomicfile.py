"""Writing a whole file atomically: a reader sees the old content or the new, never half.

The content goes to a temporary file beside the target (same file system), is flushed to
disk, gets its mode, and is renamed over the target; on any error the temporary file goes
and the target is as it was. ``mkstemp`` creates the file 0600: a file read by another
user (Prometheus reading rules, node_exporter a textfile) asks for its ``mode``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
