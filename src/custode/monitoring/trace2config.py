"""Where git's trace2 events go: the config section, the socket's default path, and
``enable``/``disable``, which point ``trace2.eventTarget`` in the global or system git config
at custode's socket (and take it away again).

The target is ``af_unix:stream:<socket>``, never ``dgram``: measured with git 2.39, a git
writing to a datagram socket nobody reads blocks as soon as the receiver's queue holds
``net.unix.max_dgram_qlen`` (10) datagrams, shared by every git on the host (a git status
alone writes more); a stream connection has its own buffer (~160 events, more than a git
process writes) and the listener accepts and drains every connection on a thread that
does nothing else. With no listener (no socket file, or a stale one) git's connect fails
at once and git runs untraced, silently; a closed connection makes git's write fail with
EPIPE (git ignores SIGPIPE around trace2 writes), and git carries on.

git reads ``trace2.*`` only from the system and global files, so those are the two
scopes. custode writes them with ``git config --file <path>`` (the only form of
``git config`` writes the runner allows), so the path is computed here, as git does:
global is ``$GIT_CONFIG_GLOBAL``, else ``~/.gitconfig``, else (only if that does not exist
and it does) ``$XDG_CONFIG_HOME/git/config``; system is ``$GIT_CONFIG_SYSTEM``, else
``/etc/gitconfig`` (a git built with another prefix: pass the file explicitly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from custode.errors import GitError, PathNotFoundError, UsageError
from custode.git.runner import Git

Scope = Literal["global", "system"]

TARGET_KEY = "trace2.eventTarget"
#: Written next to the target, removed with it: brief events (no file/line/time) and no
#: nested regions cut the volume to ~2 KiB per git process.
EXTRA_KEYS = {"trace2.eventBrief": "true", "trace2.eventNesting": "1"}
MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1; git truncates longer paths silently


def default_socket(state_dir: Path) -> Path:
    """``$XDG_RUNTIME_DIR/custode/trace2.sock`` if that is set, else in ``state_dir``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "custode" / "trace2.sock"
    return state_dir / "trace2.sock"


def check_socket_path(path: Path) -> Path:
    """``path`` made absolute; UsageError if git could not reach it (too long)."""
    path = Path(os.path.abspath(path))
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UsageError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes, the limit of a unix "
            "socket address: choose a shorter path (--socket or trace2.socket)"
        )
    return path


def config_file(scope: Scope) -> Path:
    """The file git reads for ``scope`` (see the module docstring)."""
    if scope == "system":
        return Path(os.environ.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig")
    if env := os.environ.get("GIT_CONFIG_GLOBAL"):
        return Path(env)
    home = Path.home() / ".gitconfig"
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "git" / "config"
    return xdg if not home.exists() and xdg.exists() else home


def target(socket: Path) -> str:
    return f"af_unix:stream:{socket}"


def _points_at(value: str, socket: Path) -> bool:
    """Whether a trace2 target names ``socket`` (any af_unix form of it)."""
    rest = value.removeprefix("af_unix:")
    rest = rest.removeprefix("stream:").removeprefix("dgram:")
    return value.startswith("af_unix:") and os.path.abspath(rest) == str(socket)


@dataclass(frozen=True)
class Change:
    file: Path
    target: str
    changed: bool  # False: it was already so (enable) or already absent (disable)


def current_target(git: Git, file: Path) -> str | None:
    if not file.exists():
        return None
    result = git.run(["config", "--file", str(file), "--get", TARGET_KEY], repo=None, check=False)
    if result.returncode == 1:  # the key is not set
        return None
    if result.returncode != 0:
        raise GitError(
            f"cannot read {file} (git config exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()[:200]}; fix or remove the file",
            args=result.args,
            returncode=result.returncode,
        )
    return result.text.strip()


def enable(git: Git, file: Path, socket: Path) -> Change:
    """Point ``trace2.eventTarget`` in ``file`` at ``socket``; refuse to replace another
    target (someone else's telemetry)."""
    socket = check_socket_path(socket)
    wanted = target(socket)
    now = current_target(git, file)
    if now is not None and not _points_at(now, socket):
        raise UsageError(
            f"{TARGET_KEY} in {file} is already {now!r}, not custode's socket {socket}: "
            f"remove it (git config --file {file} --unset {TARGET_KEY}) or pass its socket "
            "with --socket"
        )
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathNotFoundError(
            f"cannot create {file.parent}: {exc.strerror}; choose the other scope"
        ) from None
    _check_writable(file)
    if now == wanted and all(_get(git, file, k) == v for k, v in EXTRA_KEYS.items()):
        return Change(file, wanted, changed=False)
    for key, value in {TARGET_KEY: wanted, **EXTRA_KEYS}.items():
        git.run(["config", "--file", str(file), key, value], repo=None)
    return Change(file, wanted, changed=True)


def disable(git: Git, file: Path, socket: Path) -> Change:
    """Remove custode's keys from ``file``, only if its target is ``socket``."""
    socket = check_socket_path(socket)
    now = current_target(git, file)
    if now is None:
        return Change(file, target(socket), changed=False)
    if not _points_at(now, socket):
        raise UsageError(
            f"{TARGET_KEY} in {file} is {now!r}, not custode's socket {socket}: left as it "
            "is (pass its socket with --socket if custode set it)"
        )
    _check_writable(file)
    for key in (TARGET_KEY, *EXTRA_KEYS):
        # exit 5: the key was not set; anything else is a real failure
        result = git.run(["config", "--file", str(file), "--unset-all", key], repo=None,
                         check=False)  # fmt: skip
        if result.returncode not in (0, 5):
            raise GitError(
                f"git config --file {file} --unset-all {key} failed (exit "
                f"{result.returncode}): {result.stderr.decode(errors='replace').strip()[:200]}",
                args=result.args,
                returncode=result.returncode,
            )
    return Change(file, now, changed=True)


def _check_writable(file: Path) -> None:
    """git config writes ``<file>.lock`` beside the file and renames it."""
    if not os.access(file.parent, os.W_OK):
        raise PathNotFoundError(
            f"cannot write {file}: {file.parent} is not writable by this user; run as its "
            "owner (root for --system) or use the other scope"
        )


def _get(git: Git, file: Path, key: str) -> str | None:
    result = git.run(["config", "--file", str(file), "--get", key], repo=None, check=False)
    return result.text.strip() if result.returncode == 0 else None
