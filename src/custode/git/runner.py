"""The one git runner: every git process custode starts goes through ``Git.run``.

custode runs git over repositories it does not control; none may get git to run a program
of its choosing. Four layers see to that:

* **Environment** built from scratch (PATH, HOME, TMPDIR, the C locale, ``_FIXED_ENV``):
  inherited ``GIT_*`` variables (GIT_DIR, GIT_CONFIG_PARAMETERS...) and secrets never pass.
* **Command-line config** (``gitpolicy.HARDENING``), which outranks the repository's: no hooks,
  fsmonitor, pager, askpass, credential helper, ssh, gpg or alternate-refs program; no
  transport; no automatic gc or maintenance.
* **A subcommand allowlist** (``gitpolicy.ALLOWLIST``). Filters, textconv and diff drivers are named
  per driver and cannot be switched off wholesale, so only commands that never run them
  without a work tree are allowed, minus the options that would (``log -p``...). Aliases
  cannot shadow these builtins.
* **No transport, not even a lazy fetch.** No transfer command is allowed, and the lazy
  fetch a partial clone starts for a missing object (a ``git fetch`` from its promisor
  remote, which would run that remote's ``uploadpack`` or helper) inherits the environment
  and the ``-c`` options, which refuse every protocol: ``GIT_ALLOW_PROTOCOL`` names none
  that can exist, and it overrides a repository's ``protocol.<name>.allow``, which our
  ``protocol.allow`` does not (see ``gitpolicy``). ``GIT_NO_LAZY_FETCH`` stops the fetch
  before it starts where git honours it (the May 2024 security releases on: 2.39.4...).

One narrow exception to the fixed environment: ``ObjectDirs`` runs a git with another object
directory and alternates (``GIT_OBJECT_DIRECTORY``, ``GIT_ALTERNATE_OBJECT_DIRECTORIES``, and
nothing else), so a backup can write a pack into its own scratch directory, or prove a walk
finds every object in one pack. Only absolute paths of existing directories, free of what
git's alternates list would split or unquote, are accepted.

The repository goes in as ``--git-dir=<git dir>`` (given a bare repository, a ``.git``
directory or a working copy), never ``-C``: no discovery, so neither custode's cwd nor a
``.git`` file redirects git, and bare repositories and clones behave alike. custode never
checks out, so no work tree is given; git runs in the git dir (use absolute paths).
Callers put ``--`` before paths.

An explicit ``--git-dir`` skips git's "dubious ownership" check, so the runner applies
``trust_repository_owner`` itself: untrusted, a repository owned by another user is
refused; trusted, ``-c safe.directory`` names it (honoured from git 2.38), for the git
processes that still check.

Each git runs in its own process group under ``nice``/``ionice`` when available; a timeout
or an interrupt kills the whole group (SIGTERM, then SIGKILL after a grace). Commands that
start many gits call ``lower_own_priority`` first: the process itself then runs at that
priority, which every thread and child inherits, and no wrapper process is needed (two
fewer execs per git, 1.5 ms each).

What each git cost is read from the kernel as it is reaped (``os.wait4``: the runner's
``Popen`` keeps the resource usage CPython's ``waitpid`` drops): its user and system CPU
seconds, and its peak resident memory, the largest of git's and of each child it reaped
(pack-objects under repack), not their sum. Linux counts into a process's peak the peak
of the program it replaced at exec: a git starts as custode (forked, or vforked sharing
its memory), so one that stays below custode's own peak shows custode's. Only a peak
above custode's own is git's; ``GitResult.peak_rss`` is None otherwise, and when the usage
could not be had (no git runs differently for it).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from custode import interrupts
from custode.base.fsread import read_prefix
from custode.errors import GitError, GitNotFoundError, GitRefusedError, GitTimeoutError
from custode.git.files import doubts
from custode.git.policy import ALLOWLIST, DISTRUST_DERIVED, HARDENING, check

if TYPE_CHECKING:
    from custode.config.model import GitConfig

__all__ = [
    "ALLOWLIST", "DISTRUST_DERIVED", "FEATURES", "HARDENING", "MINIMUM_VERSION", "NO_PROTOCOL",
    "Git", "GitResult", "GitVersion", "ObjectDirs", "git_dir_of", "unknown_extensions",
]  # fmt: skip

IoNice = Literal["none", "idle", "best-effort"]

DOUBT_TTL = 60.0  # seconds a repository's doubt (or its absence) is believed
DOUBT_CACHE = 100_000  # repositories remembered at most (then forgotten all at once)


@dataclass(frozen=True, order=True)
class GitVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> GitVersion:
        """Read ``git version 2.39.5`` (also ``2.39.5.windows.1``, ``2.24.3 (Apple Git-128)``)."""
        m = re.search(r"\bversion (\d+)\.(\d+)(?:\.(\d+))?", text)
        if m is None:
            raise GitNotFoundError(
                f"cannot read a git version from {text.strip()[:80]!r}: "
                "install a standard git or set git.binary in config"
            )
        return cls(int(m[1]), int(m[2]), int(m[3] or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


MINIMUM_VERSION = GitVersion(2, 30)

#: The first git release with each feature custode uses (from git's release notes).
FEATURES: dict[str, GitVersion] = {
    "fsck-commit-graph-midx": GitVersion(2, 20),  # fsck checks commit-graph (2.19) and midx
    "commit-graph-split": GitVersion(2, 23),  # commit-graph write --split (modes: 2.27)
    "commit-graph-changed-paths": GitVersion(2, 27),  # --changed-paths (Bloom filters)
    "maintenance": GitVersion(2, 29),  # git maintenance
    "sha256": GitVersion(2, 29),  # init --object-format=sha256 (experimental)
    "bundle-v3": GitVersion(2, 29),  # bundle create --version=3, bundles of sha256 repos
    "rev-list-disk-usage": GitVersion(2, 31),  # rev-list --disk-usage
    "repack-geometric": GitVersion(2, 32),  # repack --geometric
    "repack-write-midx": GitVersion(2, 34),  # repack --write-midx
    "midx-bitmap": GitVersion(2, 34),  # multi-pack reachability bitmaps
    "cruft-packs": GitVersion(2, 37),  # repack --cruft, --cruft-expiration
    "safe-directory-command-line": GitVersion(2, 38),  # -c safe.directory is honoured
    "pack-refs-include-exclude": GitVersion(2, 42),  # pack-refs --include/--exclude
    "for-each-ref-exclude": GitVersion(2, 42),  # for-each-ref --exclude
    "repack-max-cruft-size": GitVersion(2, 43),  # repack --max-cruft-size
    # a reader whose MIDX bitmap names a pack a concurrent `repack -d` removed falls back to
    # a walk instead of dying (06f3867): before it, no multi-pack bitmaps (maintenance doc)
    "midx-bitmap-concurrent-repack": GitVersion(2, 42),
}

#: The only protocol GIT_ALLOW_PROTOCOL allows (it must allow one to be a list at all): no
#: transport or remote helper has this name, nor can an alias (``git remote-<name>``): '_'
#: is not allowed in a config key, and a name with no '.' cannot match one in a subsection.
NO_PROTOCOL = "custode_allows_no_transport"

_FIXED_ENV = {
    "LANG": "C", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat",
    "GIT_EDITOR": "false", "GIT_NO_REPLACE_OBJECTS": "1", "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_ALLOW_PROTOCOL": NO_PROTOCOL, "GIT_NO_LAZY_FETCH": "1",
}  # fmt: skip
_KEPT_ENV = ("PATH", "HOME", "TMPDIR")


#: What a path in the object-directory variables may not hold: git splits the alternates
#: list at ':' (';' on Windows) and C-unquotes an entry that starts with '"' (backslash
#: escapes); a control character (newline, NUL...) has no business in a path custode hands
#: git. The repository's own objects need none of this: a backup links them from scratch.
_UNSAFE_IN_OBJECT_DIR = frozenset(':;"\\') | {chr(c) for c in (*range(32), 127)}


@dataclass(frozen=True)
class ObjectDirs:
    """Where a git finds and writes objects instead of the repository's ``objects``:
    ``primary`` (``GIT_OBJECT_DIRECTORY``: new objects and packs go there) and
    ``alternates`` (``GIT_ALTERNATE_OBJECT_DIRECTORIES``, read only; each one's own
    ``info/alternates`` is followed, as git does). The repository itself (refs, config,
    ``shallow``) is still the ``--git-dir``. Checked by ``environment``."""

    primary: Path
    alternates: tuple[Path, ...] = ()

    def environment(self) -> dict[str, str]:
        """The two variables, or GitRefusedError naming the path git could misread."""
        for path in (self.primary, *self.alternates):
            text = os.fspath(path)
            bad = sorted(set(text) & _UNSAFE_IN_OBJECT_DIR)
            if bad:
                raise GitRefusedError(
                    f"refusing to run git with object directory {text!r}: it holds "
                    f"{', '.join(repr(c) for c in bad)}, which git's alternates list cannot "
                    "carry; use a scratch directory with a plain path"
                )
            if not Path(text).is_absolute():
                raise GitRefusedError(
                    f"refusing to run git with object directory {text!r}: not an absolute "
                    "path (git would resolve it against its own working directory)"
                )
            if not Path(text).is_dir():
                raise GitRefusedError(
                    f"refusing to run git with object directory {text}: not an existing directory"
                )
        env = {"GIT_OBJECT_DIRECTORY": os.fspath(self.primary)}
        if self.alternates:
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = ":".join(map(os.fspath, self.alternates))
        return env


def git_dir_of(repo: Path) -> Path:
    """The git dir of ``repo``: itself (bare or ``.git``), or a working copy's ``.git``.

    A ``.git`` file is read without blocking and only its first 4 KiB (a FIFO or a link
    to ``/dev/zero`` there is no git dir: ``repo`` itself is then given to git, which
    refuses it as no repository)."""
    dotgit = repo / ".git"
    if dotgit.is_file():
        try:
            text = read_prefix(str(dotgit), 4096, regular=True).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text.startswith("gitdir:") and "\0" not in text:  # NULs: zeroed by a power loss
            return (repo / text.removeprefix("gitdir:").strip()).absolute()
    return dotgit.absolute() if dotgit.is_dir() else repo.absolute()


def _trusted_paths(repo: Path) -> list[str]:
    """What safe.directory must name for ``repo`` (git checks its work tree or git dir)."""
    git_dir = git_dir_of(repo)
    paths = {str(git_dir), os.path.realpath(git_dir)}
    if git_dir.name == ".git":
        paths |= {str(git_dir.parent), os.path.realpath(git_dir.parent)}
    return sorted(paths)


@dataclass(frozen=True)
class GitResult:
    args: tuple[str, ...]  # the full command line that ran
    returncode: int
    stdout: bytes
    stderr: bytes
    duration: float  # seconds
    #: bytes: the peak resident memory of git or a child it reaped, when above custode's
    #: own (the module docstring says why); None: not known
    peak_rss: int | None = None
    cpu_seconds: float | None = None  # user and system, its reaped children's included

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


class Git:
    """Runs git hardened (see the module docstring). Thread-safe; one per config."""

    kill_grace = 2.0  # seconds between SIGTERM and SIGKILL on a timeout

    def __init__(
        self,
        binary: str = "git",
        *,
        timeout: float = 3600.0,
        doubt_timeout: float = 60.0,
        nice: int | None = 10,
        ionice: IoNice = "best-effort",
        trust_repository_owner: bool = True,
    ) -> None:
        self.binary = binary
        self.timeout = timeout
        self.doubt_timeout = doubt_timeout
        self.nice = nice
        self.ionice = ionice
        self.trust_repository_owner = trust_repository_owner
        self._lock = threading.Lock()
        self._version: GitVersion | None = None
        self._doubts: dict[Path, tuple[float, str]] = {}  # git dir -> (when, why or "")
        self._suspects: dict[Path, str] = {}  # git dir -> why, as the caller's scan found
        self._prefix: list[str] = []
        if nice and (tool := shutil.which("nice")):
            self._prefix += [tool, "-n", str(nice)]
        if ionice != "none" and (tool := shutil.which("ionice")):  # -t: run even if refused
            self._prefix += [tool, "-t", "-c", "3"] if ionice == "idle" else [
                tool, "-t", "-c", "2", "-n", "7"]  # fmt: skip

    def lower_own_priority(self) -> None:
        """Lower the calling thread to the runner's nice/ionice, for itself, the threads it
        starts and every git from then on; call it from the main thread before any other
        thread starts. Where the kernel refuses, the wrappers stay."""
        import psutil  # noqa: PLC0415  (most commands that run git never call this: start-up)

        try:
            if self.nice:
                now = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, 0, max(now, self.nice))
            if self.ionice == "idle":
                psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
            elif self.ionice == "best-effort":
                psutil.Process().ionice(psutil.IOPRIO_CLASS_BE, 7)
        except (OSError, psutil.Error, AttributeError):  # AttributeError: not Linux
            return
        self._prefix = []

    @classmethod
    def from_config(cls, cfg: GitConfig) -> Git:
        return cls(cfg.binary, timeout=cfg.timeout, doubt_timeout=cfg.doubt_timeout,
                   nice=cfg.nice, ionice=cfg.ionice,
                   trust_repository_owner=cfg.trust_repository_owner)  # fmt: skip

    def executable(self) -> str:
        """The git binary's path; GitNotFoundError if there is none."""
        found = shutil.which(self.binary)
        if found is None:
            raise GitNotFoundError(
                f"git not found ({self.binary!r} is not an executable file or on PATH): "
                "install git or set git.binary in config"
            )
        return found

    def environment(
        self, extra: Mapping[str, str] | None = None, objects: ObjectDirs | None = None
    ) -> dict[str, str]:
        """The environment git runs in: allowlisted, never inherited wholesale. ``extra``
        may not set a ``GIT_*`` variable; ``objects`` sets exactly the object directory
        and its alternates (``ObjectDirs``)."""
        env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(_FIXED_ENV)
        for key, value in (extra or {}).items():
            locked = key.startswith(("GIT_", "SSH_", "LD_")) and not key.startswith("GIT_TRACE")
            if locked or key in _FIXED_ENV:
                raise GitRefusedError(f"refusing to set {key} for git: the runner fixes it")
            env[key] = value
        if objects is not None:
            env.update(objects.environment())
        return env

    def command_line(
        self,
        args: Sequence[str],
        repo: Path | None = None,
        config: Sequence[tuple[str, str]] = (),
    ) -> list[str]:
        """The full argv ``run`` starts for ``args`` (checked against the allowlist).

        ``config`` adds ``-c key=value`` pairs after the hardening; none may name a key the
        hardening sets (GitRefusedError).
        """
        args = [os.fspath(a) for a in args]
        hardened = {key.lower() for key, _ in HARDENING}
        for key, _ in config:
            if key.lower() in hardened or key.lower().startswith("safe."):
                raise GitRefusedError(f"refusing to set {key} for git: the runner fixes it")
        check(args)
        git = self.executable()
        hardening = [f"{key}={value}" for key, value in HARDENING]
        trusted = _trusted_paths(repo) if repo is not None and self.trust_repository_owner else []
        asked = [f"{key}={value}" for key, value in config]
        options = [*hardening, *asked, *(f"safe.directory={path}" for path in trusted)]
        cmd = [*self._prefix, git, "--no-pager", *_dash_c(options)]
        if repo is not None:
            cmd.append(f"--git-dir={git_dir_of(repo)}")
        return [*cmd, *args]

    def version(self) -> GitVersion:
        """git's version, asked once per instance."""
        with self._lock:
            if self._version is None:
                argv = [self.executable(), "version"]
                result, _ = self._execute(argv, None, None, min(self.timeout or 60, 60),
                                          what=f"{argv[0]} version")  # fmt: skip
                if result.returncode != 0:
                    raise GitNotFoundError(
                        f"{argv[0]} version failed (exit {result.returncode}): "
                        "install git or set git.binary in config"
                    )
                self._version = GitVersion.parse(result.text)
            return self._version

    def check_version(self) -> GitVersion:
        """git's version, or GitNotFoundError when it is older than custode supports."""
        if (found := self.version()) < MINIMUM_VERSION:
            raise GitNotFoundError(
                f"git {found} is older than {MINIMUM_VERSION}, the oldest custode supports: "
                "upgrade git"
            )
        return found

    def supports(self, feature: str) -> bool:
        return self.version() >= FEATURES[feature]

    def require(self, feature: str) -> None:
        if not self.supports(feature):
            needed = FEATURES[feature]
            raise GitNotFoundError(
                f"git {self.version()} is too old for {feature} (needs {needed}); upgrade git"
            )

    def run(
        self,
        args: Sequence[str],
        *,
        repo: Path | None,
        timeout: float | None = None,
        input: bytes | None = None,
        check: bool = True,
        cwd: Path | None = None,
        env_extra: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        stdout: BinaryIO | None = None,
        config: Sequence[tuple[str, str]] = (),
        objects: ObjectDirs | None = None,
    ) -> GitResult:
        """Run ``git <args>`` on ``repo`` (a git dir or a working copy; None for none).

        ``config``: extra ``-c`` pairs, e.g. ``DISTRUST_DERIVED`` for a walk that decides
        what may be dropped or whether a backup is complete.

        ``stdout``, an open file, receives git's output directly (a pack of any size) at
        its current position; the result's ``stdout`` is then empty.

        ``objects``: read and write objects there instead of the repository's own
        ``objects`` directory (``ObjectDirs``; GitRefusedError for a path it refuses).

        git runs in ``cwd``, by default the git dir. ``timeout`` is in seconds (default the
        instance's; 0 for none). ``pass_fds`` are inherited by git and its children: pass
        the custode repository lock, so that a git outliving a killed custode still holds
        it. Raises GitRefusedError, GitNotFoundError, GitTimeoutError, and GitError for a
        non-zero exit when ``check``.
        """
        argv = self.command_line(args, repo, config)
        env = self.environment(env_extra, objects)
        self.check_version()
        sub = os.fspath(args[0])
        git_dir = git_dir_of(repo) if repo is not None else None
        where = str(repo if repo is not None else cwd or Path.cwd())
        workdir = cwd or git_dir
        if workdir is not None and not workdir.is_dir():
            raise GitError(f"git {sub} cannot run in {where}: {workdir} is not a directory")
        if git_dir is not None and not self.trust_repository_owner:
            _check_owner(git_dir, sub)
        limit = self.timeout if timeout is None else timeout
        doubt = self.doubt(git_dir) if git_dir is not None else ""
        if doubt and self.doubt_timeout and not 0 < (limit or 0) <= self.doubt_timeout:
            limit = self.doubt_timeout
        result, timed_out = self._execute(
            argv,
            workdir,
            input,
            limit or None,
            env,
            pass_fds=pass_fds,
            stdout=stdout,
            what=f"git {sub} in {where}",
        )
        if timed_out:
            fix = (
                f"custode gives a repository in doubt only git.doubt_timeout, as {doubt}"
                if doubt
                else "raise git.timeout in config"
            )
            raise GitTimeoutError(
                f"git {sub} in {where} did not finish within {limit:g} s and was killed: {fix}",
                args=result.args,
                stderr=_tail(result.stderr),
            )
        if check and result.returncode != 0:
            if names := unknown_extensions(result.stderr):
                cause = self.unsupported(names)
            else:
                cause = _cause(result.stderr, result.stdout)
            raise GitError(
                f"git {sub} failed in {where} (exit {result.returncode}): {cause}",
                args=result.args,
                returncode=result.returncode,
                stderr=_tail(result.stderr),
            )
        return result

    def doubt(self, git_dir: Path) -> str:
        """Why a git on ``git_dir`` could hang or read without end (``gitfiles.doubts``:
        a FIFO, a device or a giant where git expects a small file), "" if nothing does.

        Looked at again after ``DOUBT_TTL`` seconds, so a long-running ``serve`` sees
        a repository change either way."""
        now = time.monotonic()
        with self._lock:
            if suspect := self._suspects.get(git_dir):
                return suspect
            known = self._doubts.get(git_dir)
        if known is not None and now - known[0] < DOUBT_TTL:
            return known[1]
        found = doubts(str(git_dir))
        why = "; ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
        with self._lock:
            if len(self._doubts) > DOUBT_CACHE:
                self._doubts.clear()
            self._doubts[git_dir] = (now, why)
        return why

    def suspect(self, git_dir: Path, why: str) -> None:
        """Doubt ``git_dir`` (see ``doubt``) for what the caller found there itself: a scan
        sees files (loose refs, objects, packs) that ``doubt`` does not look at."""
        if why:
            with self._lock:
                self._suspects[git_dir] = why

    def unsupported(self, names: Sequence[str]) -> str:
        """``not supported by git 2.39 (extension NAME)``, with the fix."""
        v = self.version()
        return (
            f"not supported by git {v.major}.{v.minor} ({_extensions(names)}); "
            "upgrade git, or leave the repository out with discovery.exclude"
        )

    def _execute(
        self,
        argv: list[str],
        cwd: Path | None,
        stdin: bytes | None,
        timeout: float | None,
        env: dict[str, str] | None = None,
        *,
        pass_fds: Sequence[int] = (),
        stdout: BinaryIO | None = None,
        what: str = "git",
    ) -> tuple[GitResult, bool]:
        """Run argv in its own process group; the flag says it was killed on timeout.

        A stop request (``custode.interrupts``) starts no git, and reaches a running one:
        a git that then fails raises Interrupted (``what`` names it), whichever command
        asked, not the error its exit would otherwise make."""
        interrupts.check("git")
        started = time.monotonic()
        try:
            proc = _MeasuredPopen(
                argv,
                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                stdout=subprocess.PIPE if stdout is None else stdout,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=self.environment() if env is None else env,
                process_group=0,  # thread-safe, unlike preexec_fn
                pass_fds=tuple(pass_fds),
            )
        except FileNotFoundError as exc:
            raise GitNotFoundError(
                f"git not found ({exc.filename}): install git or set git.binary in config",
                args=tuple(argv),
            ) from None
        timed_out = False
        try:
            try:
                with interrupts.child(proc.pid):
                    out, err = proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _signal_group(proc.pid, signal.SIGTERM)  # git removes its lock and temp files
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.kill_grace)
                _signal_group(proc.pid, signal.SIGKILL)  # and any child the leader left behind
                try:
                    out, err = proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:  # a descendant left the group with our pipes
                    out, err = b"", b""
        except BaseException:  # KeyboardInterrupt, SystemExit...: leave no orphans
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        took = time.monotonic() - started
        if proc.returncode != 0 and interrupts.requested():
            raise interrupts.Interrupted(f"interrupted: {what} was stopped")
        peak, cpu = _usage(proc.rusage)
        result = GitResult(tuple(argv), proc.returncode, out or b"", err or b"", took, peak, cpu)
        return result, timed_out


class _MeasuredPopen(subprocess.Popen[bytes]):
    """``subprocess.Popen`` that keeps the resource usage the kernel reports when it reaps
    the process. ``wait`` and ``communicate`` reap through ``_try_wait``; this one is
    CPython 3.11's with ``os.wait4`` for ``os.waitpid``. ``poll`` reaps without it
    (``_internal_poll``), and where ``wait4`` is missing or fails ``waitpid`` runs as
    before: ``rusage`` then stays None, and nothing else changes."""

    rusage: resource.struct_rusage | None = None

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        """All callers to this function MUST hold self._waitpid_lock (as CPython's)."""
        try:
            (pid, sts, usage) = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            # as CPython's: SIGCLD is ignored or waiting disabled; the child is dead, its
            # status cannot be had
            pid = self.pid
            sts = 0
        except (OSError, AttributeError):  # AttributeError: no wait4 on this platform
            # waitpid, as before: the same error again, or the status without the usage
            # (the stubs do not declare CPython's private method)
            return super()._try_wait(wait_flags)  # type: ignore[misc, no-any-return]
        else:
            if pid == self.pid:  # 0: not exited yet (WNOHANG), no usage
                self.rusage = usage
        return (pid, sts)


#: ru_maxrss is in KiB on Linux, in bytes on macOS
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def _usage(usage: resource.struct_rusage | None) -> tuple[int | None, float | None]:
    """(peak bytes, CPU seconds) of a reaped git; the peak is None unless above custode's
    own peak so far, which the kernel counted in (the module docstring)."""
    if usage is None:
        return None, None
    peak = usage.ru_maxrss * _MAXRSS_UNIT
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT
    return (peak if peak > own else None), usage.ru_utime + usage.ru_stime


def _dash_c(items: Sequence[str]) -> list[str]:
    return [word for item in items for word in ("-c", item)]


def _check_owner(git_dir: Path, sub: str) -> None:
    """trust_repository_owner = false: what git's own check would do without --git-dir."""
    try:
        owner = git_dir.stat().st_uid
    except OSError:
        return  # git reports a missing repository better
    if owner != os.geteuid():
        raise GitRefusedError(
            f"refusing to run git {sub} in {git_dir}: it is owned by uid {owner}, not uid "
            f"{os.geteuid()} that custode runs as; set git.trust_repository_owner = true to "
            "look after it"
        )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _cause(stderr: bytes, stdout: bytes = b"") -> str:
    """The line that says why: git's first fatal (later ones follow from it), else the last.

    Some commands (fsck: "missing commit <id>") report on stdout: used when stderr is empty.
    A line ending in ":" keeps the indented lines that complete it ("...extension found:"
    then the extension's name).
    """
    text = stderr if stderr.strip() else stdout[-4096:]
    raw = text.decode("utf-8", errors="replace").splitlines()
    lines = [(i, line.strip()) for i, line in enumerate(raw) if line.strip()]
    for prefix in ("fatal:", "error:"):
        if found := next(((i, line) for i, line in lines if line.startswith(prefix)), None):
            return _completed(raw, *found)
    return _completed(raw, *lines[-1]) if lines else "no error output"


def _completed(raw: list[str], index: int, line: str) -> str:
    if not line.endswith(":"):
        return line
    more = []
    for follow in raw[index + 1 : index + 6]:
        if not follow.startswith(("\t", " ")) or not follow.strip():
            break
        more.append(follow.strip())
    return " ".join([line, *more])


_UNKNOWN_EXTENSION = "unknown repository extension found:"
_NAME_MAX = 200  # characters of an extension's name kept in a message


def unknown_extensions(stderr: bytes) -> list[str]:
    """The repository extensions git said it does not know (git 2.39 prints each on its
    own tab-indented line after ``fatal: unknown repository extension found:``)."""
    lines = stderr[-65536:].decode("utf-8", errors="replace").splitlines()
    names: list[str] = []
    for i, line in enumerate(lines):
        if line.strip().endswith(_UNKNOWN_EXTENSION):
            for name in lines[i + 1 :]:
                if not name.startswith(("\t", " ")) or not name.strip():
                    break
                if name.strip() not in names:
                    names.append(name.strip())
    return names


def _extensions(names: Sequence[str]) -> str:
    shown = ", ".join(n if len(n) <= _NAME_MAX else n[: _NAME_MAX - 1] + "…" for n in names)
    return f"extension{'s' if len(names) > 1 else ''} {shown}"


def _tail(stderr: bytes, limit: int = 4096) -> str:
    return stderr[-limit:].decode("utf-8", errors="replace")
