"""The maintenance executor: runs a ``Plan`` on one repository through the git runner.

``execute`` holds the custode lock of the repository for the whole run and checks the
safety invariants rather than assuming them:

* **Connectivity first.** When the plan holds a task that can drop objects, a
  connectivity check (``rev-list --objects --all --reflog --indexed-objects``, which,
  unlike ``fsck --connectivity-only``, does not race with pushes) runs before *any* task;
  if it fails, every task is skipped and the repository is left as it was (never
  "repaired"): the result is failed.
* **Derived data is not trusted.** That walk, the object lookups after the tasks and
  every git that can delete an object (``repack -d``, ``prune``) run with
  ``DISTRUST_DERIVED``: a commit-graph, a bitmap or a multi-pack-index that lies would
  make them miss what a commit really needs, and drop it. A commit-graph lies also to
  everyone else, and a graph written next would copy it; so before a task that can drop
  objects ``commit-graph verify`` runs too, and a graph that fails it puts the
  repository in doubt: every task is skipped, nothing rewritten (``custode check
  --full`` reports the same graph as corrupt).
* **Refs survive.** Refs are listed before and after. Clients may push during
  maintenance, so equality of the whole list would false-alarm; the rule is: HEAD and
  every symbolic ref are unchanged (a push cannot change them), every ref that exists
  afterwards points at an object that exists, and every object a ref pointed at before
  still exists, unless that ref was moved or deleted meanwhile *and* a task that drops
  unreachable objects ran (the client made it unreachable; expiring it is git's gc
  semantics). Anything else is data loss, reported loudly as a failed result.
* **One failure stops the object work.** A failed repack, multi-pack-index or
  commit-graph task skips the object tasks after it; cleanup and ref tasks are
  independent. Errors from git become failed outcomes carrying git's one-line cause.
* **No multi-pack-index outlives its packs.** A full repack leaves one pack and writes
  no multi-pack-index; the old one (then its bitmap and ``.rev``) is removed before git
  deletes the packs it names (run with ``DISTRUST_DERIVED``, git would not see it, and
  one naming deleted packs makes git 2.39 fail every clone): ``remove_midx``.
* **Memory is bounded.** Each repack's ``--window-memory``, ``--threads`` and
  ``pack.deltaCacheSize`` come from the repository's size and its share of the host's
  memory (``PackLimits``, ``pack_options``).
* **No push fails for it.** Every repack command runs git's prune-packed, which removes
  emptied ``objects/XX`` directories under a landing push; they are held non-empty while
  it runs (``objectdirs.py``), and a repack whose directories cannot be held does not run.

Each task's outcome carries its time and the peak memory of its gits, the largest the
runner measured (``GitResult.peak_rss``; none when no git's peak was above custode's own):
the history records it beside the prediction, and the cost model learns from it. It also
carries the CPU seconds its gits used (``GitResult.cpu_seconds``, their reaped children's
included): a task whose time is far above its CPU waited for the host, not for its work.

Stale files are removed only if still the file the plan saw (same mtime, so still older
than the policy's age), a regular file inside the git dir, reached without following a
symlink (each directory is opened with ``O_NOFOLLOW``, the file unlinked relative to it).
Directories (receive-pack quarantines) are left alone: their mtime does not tell whether
a running git still writes below them.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from custode.config.maintenance import MaintenancePolicy
from custode.errors import GitError
from custode.git.lock import repository_lock
from custode.git.refsnapshot import RefSnapshot, snapshot
from custode.git.runner import DISTRUST_DERIVED, Git
from custode.maintenance.needs import TaskKind
from custode.maintenance.objectdirs import hold_object_dirs, release_leftovers
from custode.maintenance.planner import (
    CommitGraph,
    Plan,
    PruneWorktrees,
    Repack,
    StaleFiles,
    Task,
)
from custode.records.audit import AuditLog
from custode.scan.discovery import Repository
from custode.scan.repostate import inspect

Outcome = Literal["ok", "failed", "skipped"]
#: the tasks that rewrite the object store: after one fails, the rest are skipped (typed,
#: so a kind the planner does not have is a type error)
OBJECT_TASKS: frozenset[TaskKind] = frozenset(
    {"incremental_repack", "geometric_repack", "full_repack", "write_midx", "write_commit_graph"}
)
MIB = 1024 * 1024


@dataclass(frozen=True)
class PackOptions:
    """What one repack of pack-objects may use: ``--window-memory`` (per thread),
    ``--threads`` and ``pack.deltaCacheSize`` (one cache for the whole process)."""

    window_memory: int
    threads: int
    delta_cache: int

    def args(self) -> list[str]:
        return [f"--window-memory={self.window_memory}", f"--threads={self.threads}"]

    def config(self) -> tuple[tuple[str, str], ...]:
        return (("pack.deltaCacheSize", str(self.delta_cache)),)


#: git's own defaults: a delta cache of 256 MiB, and (for us) 4 threads at most
DELTA_CACHE_MAX = 256 * MIB
THREADS_MAX = 4
THREAD_BYTES = 32 * MIB  # a repository gets one more thread per this many bytes
WINDOW_MIN = 8 * MIB  # below it, the delta window shrinks to a few objects: poor deltas


def pack_options(
    repo_bytes: int, memory: int, *, cpus: int, window_cap: int = 0, threads_cap: int = 0
) -> PackOptions:
    """The limits for a repack of ``repo_bytes`` (packs and loose objects) that may use
    ``memory`` bytes; ``window_cap`` and ``threads_cap`` (0: none) are the policy's.

    git gc bounds none of them (an unlimited window per thread, a 256 MiB delta cache).
    Here half of ``memory`` is left to what no option bounds (the object list, the pack
    index, mapped pack windows); of the other half an eighth of ``memory`` (at most git's
    256 MiB, at most a quarter of the repository) is the delta cache and the rest the
    delta windows of the threads. A repository gets a thread per 32 MiB (up to half the
    CPUs, 4 at most), fewer when each would get less than 8 MiB of window; a window
    larger than the repository buys nothing, so none is.
    """
    threads = threads_cap or max(1, min(THREADS_MAX, cpus // 2))
    threads = max(1, min(threads, -(-repo_bytes // THREAD_BYTES)))
    cache = max(MIB, min(DELTA_CACHE_MAX, memory // 8, repo_bytes // 4))
    windows = max(WINDOW_MIN, memory // 2 - cache)
    threads = max(1, min(threads, windows // WINDOW_MIN))
    window = max(WINDOW_MIN, min(windows // threads, max(WINDOW_MIN, repo_bytes)))
    if window_cap:
        window = min(window, window_cap)
    return PackOptions(window, threads, cache)


@dataclass(frozen=True)
class PackLimits:
    """The memory each repack may use (``memory_share`` of the host over the parallel
    jobs) and the policy's caps; ``sized`` chooses a repository's ``PackOptions``."""

    memory: int = 1024 * MIB
    window_cap: int = 0  # maintenance.pack_window_memory; 0: none
    threads_cap: int = 0  # maintenance.pack_threads; 0: none
    cpus: int = os.cpu_count() or 2

    @classmethod
    def of(
        cls, policy: MaintenancePolicy, jobs: int = 1, host_memory: int | None = None
    ) -> PackLimits:
        total = psutil.virtual_memory().total if host_memory is None else host_memory
        share = int(policy.memory_share * total / max(1, jobs))
        return cls(share, policy.pack_window_memory, policy.pack_threads)

    def sized(self, repo_bytes: int) -> PackOptions:
        return pack_options(repo_bytes, self.memory, cpus=self.cpus,
                            window_cap=self.window_cap, threads_cap=self.threads_cap)  # fmt: skip


@dataclass(frozen=True)
class TaskOutcome:
    kind: str
    reason: str
    outcome: Outcome
    duration: float  # seconds
    message: str  # one line
    memory_bytes: int | None = None  # the largest peak of its gits measured; None: none was
    cpu_seconds: float | None = None  # its gits' user and system time; None: none measured


@dataclass(frozen=True)
class ExecutionResult:
    path: str
    outcome: Outcome  # failed if any task or check failed; skipped if nothing ran
    message: str  # one line
    tasks: tuple[TaskOutcome, ...]
    bytes_before: int
    bytes_after: int
    started: float  # ``now`` as given
    duration: float  # seconds
    fingerprint: str = ""  # the repository's, right after; "" when nothing ran

    @property
    def reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after


def execute(
    repo: Repository,
    plan: Plan,
    git: Git,
    audit: AuditLog | None,
    *,
    now: float,
    limits: PackLimits | None = None,
) -> ExecutionResult:
    """Run ``plan`` on ``repo`` under its custode lock; see the module docstring.

    Raises LockedError when another custode holds the repository, RepositoryError when
    the lock cannot be taken; everything git reports ends up in the result.
    """
    started = time.monotonic()
    if not plan.tasks:
        why = plan.skipped_reason or "nothing to do"
        return ExecutionResult(str(repo.path), "skipped", why, (), 0, 0, now, 0.0)
    with repository_lock(repo.git_dir, "maintain") as lock_fd:
        run = _Run(repo, plan, git, audit, now, limits or PackLimits(), started, lock_fd)
        return run.run()


@dataclass
class _Run:
    repo: Repository
    plan: Plan
    git: Git
    audit: AuditLog | None
    now: float
    limits: PackLimits
    started: float
    lock_fd: int  # inherited by every git, so that one outliving us keeps the lock
    outcomes: list[TaskOutcome] = field(default_factory=list)
    pack: PackOptions = field(default_factory=lambda: PackLimits().sized(0))
    peak: int | None = None  # the running task's largest measured git peak (bytes)
    cpu: float | None = None  # the running task's gits' CPU seconds so far

    def git_run(
        self,
        args: list[str],
        input: bytes | None = None,
        check: bool = True,
        *,
        distrust: bool = False,
        config: tuple[tuple[str, str], ...] = (),
    ) -> str:
        """Run git under the lock; ``distrust``: without commit-graph, bitmaps or midx."""
        config = (*DISTRUST_DERIVED, *config) if distrust else config
        done = self.git.run(
            args, repo=self.repo.git_dir, input=input, check=check, pass_fds=(self.lock_fd,),
            config=config,
        )  # fmt: skip
        if done.peak_rss is not None:
            self.peak = max(self.peak or 0, done.peak_rss)
        if done.cpu_seconds is not None:
            self.cpu = (self.cpu or 0.0) + done.cpu_seconds
        return done.text

    def result(self, outcome: Outcome, message: str, before: int) -> ExecutionResult:
        after = inspect(self.repo)
        elapsed = time.monotonic() - self.started
        return ExecutionResult(
            str(self.repo.path), outcome, message, tuple(self.outcomes), before,
            after.size_bytes, self.now, elapsed, after.fingerprint,
        )  # fmt: skip

    def skip_all(self, tasks: tuple[Task, ...], why: str) -> None:
        self.outcomes += [TaskOutcome(t.kind, t.reason, "skipped", 0.0, why) for t in tasks]

    def run(self) -> ExecutionResult:
        state = inspect(self.repo)
        before = state.size_bytes
        self.pack = self.limits.sized(state.pack_bytes + state.loose_objects_bytes)
        if state.garbage_files:  # a holder is garbage to the scan: none, nothing to list
            release_leftovers(self.repo.git_dir / "objects")  # of a custode killed mid-repack
        try:
            refs_before = snapshot(self.git, self.repo.git_dir, (self.lock_fd,))
        except GitError as exc:
            self.skip_all(self.plan.tasks, "refs could not be listed")
            return self.result("failed", f"cannot list refs: {_line(exc)}", before)
        if any(t.drops_unreachable for t in self.plan.tasks):
            problem = self.connectivity() or self.graph_problem()
            if problem:
                why = f"{problem}; left untouched, not repaired"
                self.skip_all(self.plan.tasks, why)
                return self.result("failed", why, before)
        dropped, object_failure = False, ""
        for task in self.plan.tasks:
            if object_failure and task.kind in OBJECT_TASKS:
                why = f"skipped after an earlier failure: {object_failure}"
                self.outcomes.append(TaskOutcome(task.kind, task.reason, "skipped", 0.0, why))
                continue
            done = self.run_task(task)
            self.outcomes.append(done)
            if done.outcome == "failed" and task.kind in OBJECT_TASKS:
                object_failure = f"{task.kind}: {done.message}"
            dropped = dropped or (task.drops_unreachable and done.outcome != "skipped")
        if problem := self.check_after(refs_before, dropped):
            return self.result("failed", problem, before)
        failed = [o for o in self.outcomes if o.outcome == "failed"]
        if failed:
            return self.result("failed", f"{failed[0].kind} failed: {failed[0].message}", before)
        if all(o.outcome == "skipped" for o in self.outcomes):
            return self.result("skipped", "every task was skipped", before)
        ran = sum(o.outcome == "ok" for o in self.outcomes)
        return self.result("ok", f"{ran} task{'s' if ran != 1 else ''} done, refs intact", before)

    def check_after(self, refs_before: RefSnapshot, dropped: bool) -> str:
        """'' when the refs and their objects survived (the module docstring's rule)."""
        if not os.path.isdir(self.repo.git_dir):
            return "the repository was deleted or moved during maintenance; nothing left to check"
        try:
            refs_after = snapshot(self.git, self.repo.git_dir, (self.lock_fd,), verify=True)
            loss = compare(refs_before, refs_after, self.missing, dropped)
            if not loss and dropped and (problem := self.connectivity()):
                loss = [f"connectivity check failed after maintenance: {problem}"]
        except GitError as exc:
            loss = [f"refs could not be checked after maintenance: {_line(exc)}"]
        return "DATA SAFETY CHECK FAILED: " + "; ".join(loss) if loss else ""

    def connectivity(self) -> str:
        """'' when every object reachable from refs, reflogs and the index exists.

        ``rev-list --objects`` (what git's own connectivity check after a fetch runs), not
        ``fsck --connectivity-only``: fsck lists the objects first and reads the refs
        after, so a push landing in between looks like a missing commit (seen under a
        push loop, 3 of 60 runs); rev-list reads the refs first and re-reads the packs
        when an object is not found, and a push writes objects before it moves a ref.
        """
        try:
            self.git_run(
                ["rev-list", "--objects", "--all", "--reflog", "--indexed-objects", "--quiet"],
                distrust=True,
            )
        except GitError as exc:
            return f"connectivity check failed: {_line(exc)}"
        return ""

    def graph_problem(self) -> str:
        """'' unless the repository has a commit-graph and ``commit-graph verify`` fails.

        Not under DISTRUST_DERIVED: with ``core.commitGraph=false`` git reads no graph,
        so it would verify nothing. A lying graph (one parent index changed) made the
        next ``commit-graph write`` keep the lie, and git's walks skip the real parent.
        """
        info = self.repo.git_dir / "objects" / "info"
        if not (info / "commit-graph").exists() and not (info / "commit-graphs").exists():
            return ""
        try:
            self.git_run(["commit-graph", "verify", "--no-progress"])
        except GitError as exc:
            return (
                f"the repository is in doubt: commit-graph verify failed: {_line(exc)}; "
                "remove objects/info/commit-graph* and rewrite it "
                "(git commit-graph write --reachable)"
            )
        return ""

    def missing(self, oids: set[str]) -> set[str]:
        """Which of ``oids`` are not in the object store (alternates included)."""
        if not oids:
            return set()
        data = "".join(f"{oid}\n" for oid in sorted(oids)).encode()
        out = self.git_run(["cat-file", "--batch-check=%(objectname)"], input=data, distrust=True)
        return {line.split()[0] for line in out.splitlines() if line.endswith(" missing")}

    def run_task(self, task: Task) -> TaskOutcome:
        start = time.monotonic()
        self.peak = self.cpu = None
        try:
            outcome, message = self.dispatch(task)
        except GitError as exc:
            outcome, message = "failed", _line(exc)
            if any(m in f"{exc} {exc.stderr}" for m in _DISK_FULL):
                message = _disk_full(message, self.repo.git_dir)
        except OSError as exc:
            outcome, message = "failed", f"{exc.strerror or exc} ({exc.filename or ''})"
            if exc.errno == errno.ENOSPC:
                message = _disk_full(message, self.repo.git_dir)
        took = time.monotonic() - start
        done = TaskOutcome(task.kind, task.reason, outcome, took, message, self.peak, self.cpu)
        if self.audit is not None:
            details = {"reason": task.reason, "outcome": outcome, "message": message,
                       "duration": round(done.duration, 3)}  # fmt: skip
            if done.memory_bytes is not None:
                details["memory_bytes"] = done.memory_bytes
            self.audit.append(f"maintain.{task.kind}", str(self.repo.path), details)
        return done

    def dispatch(self, task: Task) -> tuple[Outcome, str]:
        args = task.args
        if isinstance(args, StaleFiles):
            return remove_stale_files(self.repo.git_dir, args, self.now)
        if isinstance(args, PruneWorktrees):
            self.git_run(["worktree", "prune", f"--expire={_ago(args.expire)}"])
            return "ok", "worktrees pruned"
        if isinstance(args, Repack):
            retried = False
            # every repack here runs git's prune-packed (-d, prune), whose rmdir() of an
            # emptied objects/XX can fail a push landing there: hold them (objectdirs.py)
            with hold_object_dirs(self.repo.git_dir / "objects"):
                if task.kind == "full_repack":
                    # the repack deletes the packs an old multi-pack-index names, and (run
                    # with DISTRUST_DERIVED) does not see it to remove it: first, then
                    remove_midx(self.repo.git_dir / "objects")
                for command in repack_commands(task.kind, args, self.pack):
                    # they delete packs or loose objects: what they keep must come from
                    # the objects, not from caches
                    retried = self.repack(command) or retried
            note = " (bitmap retried after a concurrent push)" if retried else ""
            return "ok", f"{task.kind.replace('_', ' ')} done{note}"
        if isinstance(args, CommitGraph):
            self.git_run(commit_graph_command(args))
            return "ok", "commit-graph written"
        command, done = _SIMPLE[task.kind]  # NoArgs: pack_refs, write_midx
        self.git_run(command)
        return "ok", done

    def repack(self, command: list[str]) -> bool:
        """Run one repack command; True when its multi-pack bitmap had to be retried."""
        limits = self.pack.config() if command[0] == "repack" else ()
        try:
            self.git_run(command, distrust=True, config=limits)
        except GitError as exc:
            if "bitmap" not in exc.message:
                raise
            # git writes a multi-pack bitmap (2.42+ here: see the planner) from the refs it
            # read at the start; a push moving a ref meanwhile makes it fail ("could not
            # write multi-pack bitmap") after the new packs are safely in place. Once
            # more: near-instant, the objects are packed now.
            self.git_run(command, distrust=True, config=limits)
            return True
        return False


# --------------------------------------------------------------------------- commands


_SIMPLE = {
    "pack_refs": (["pack-refs", "--all", "--prune"], "refs packed"),
    "write_midx": (["multi-pack-index", "write"], "multi-pack-index written"),
}


def repack_commands(kind: str, args: Repack, limits: PackOptions) -> list[list[str]]:
    """The git commands of a repack task: the repack, then ``git prune`` of the loose
    objects past the expiration when the scan saw any (git gc's order: a cruft repack
    leaves the expired loose ones loose, an incremental one every unreachable one)."""
    cmd = ["repack", "-q", "-d", "-l", *limits.args()]
    if kind == "geometric_repack":
        cmd.append(f"--geometric={args.geometric_factor or 2}")
    elif kind == "full_repack":
        if args.unreachable == "cruft":
            cmd += ["-a", "--cruft"]
            if args.expire is not None:
                cmd.append(f"--cruft-expiration={_ago(args.expire)}")
        elif args.unreachable == "keep" or args.expire is None:
            cmd += ["-a", "--keep-unreachable"]
        else:  # loosen: git before cruft packs; prune drops the loosened ones past expiry
            cmd += ["-A", f"--unpack-unreachable={_ago(args.expire)}"]
    if args.write_midx:
        cmd.append("--write-midx")
    if args.write_bitmaps:
        cmd.append("--write-bitmap-index")
    loosened = kind == "full_repack" and args.unreachable == "loosen"
    if args.expire is None or not (args.prune or loosened):
        return [cmd]  # no loose object that old (a prune would walk every object for none)
    return [cmd, ["prune", f"--expire={_ago(args.expire)}"]]


def commit_graph_command(args: CommitGraph) -> list[str]:
    cmd = ["commit-graph", "write", "--reachable", "--no-progress"]
    if args.split == "incremental":
        cmd.append("--split")
    elif args.split == "replace":
        cmd.append("--split=replace")
    if args.changed_paths:
        cmd.append("--changed-paths")
    return cmd


def _ago(seconds: float) -> str:
    return f"{int(seconds)}.seconds.ago"


# --------------------------------------------------------------------------- refs


def compare(
    before: RefSnapshot,
    after: RefSnapshot,
    missing: Callable[[set[str]], set[str]],
    dropped: bool,
) -> list[str]:
    """What went wrong between ``before`` and ``after`` (the rule in the module docstring)."""
    problems: list[str] = []
    if before.head != after.head:
        problems.append(f"HEAD changed from {before.head or '?'} to {after.head or '?'}")
    for name, target in sorted(before.symrefs.items()):
        if after.symrefs.get(name) != target:
            now = after.symrefs.get(name) or after.refs.get(name) or "gone"
            problems.append(f"symbolic ref {name} -> {target} is now {now}")
    current, earlier = set(after.refs.values()), set(before.refs.values())
    gone = missing(earlier - current if after.verified else earlier | current)
    for name, oid in sorted(after.refs.items()):
        if oid in gone:
            problems.append(f"{name} points at missing object {oid}")
    for name, oid in sorted(before.refs.items()):
        moved = after.refs.get(name) != oid  # by a client; unchanged ones are checked above
        if oid in gone and moved and not dropped:
            problems.append(f"object {oid} of {name} is gone")
    return problems


# --------------------------------------------------------------------------- midx

MIDX = "multi-pack-index"


def remove_midx(objects: Path) -> int:
    """Remove ``pack/multi-pack-index`` and then its bitmap and reverse index (under the
    repository lock, before a full repack deletes the packs it names); a count.

    The index goes first: git reads a bitmap only through it. Each name is unlinked
    relative to ``pack/`` opened without following a symlink, so nothing outside the
    repository is touched. A ``pack/`` that is a symlink is left alone when it shows no
    multi-pack-index; else OSError: the repack must not run.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top = os.open(objects, flags)
    except OSError as exc:
        return _unreachable_midx(objects, exc)
    try:
        try:
            fd = os.open("pack", flags, dir_fd=top)
        except OSError as exc:
            return _unreachable_midx(objects, exc)
        try:
            names = os.listdir(fd)
            derived = sorted(n for n in names if n.startswith(f"{MIDX}-") and
                             n.endswith((".bitmap", ".rev")))  # fmt: skip
            return sum(_unlink_file(fd, objects / "pack", n) for n in [MIDX, *derived])
        finally:
            os.close(fd)
    finally:
        os.close(top)


def _unreachable_midx(objects: Path, exc: OSError) -> int:
    if exc.errno == errno.ENOENT or not os.path.lexists(objects / "pack" / MIDX):
        return 0
    raise OSError(
        exc.errno, f"cannot remove the multi-pack-index without following a symlink "
        f"({exc.strerror}): remove it by hand, then run custode maintain again",
        str(objects / "pack" / MIDX),
    )  # fmt: skip


def _unlink_file(fd: int, where: Path, name: str) -> int:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory where git expects a file; remove "
                                "it by hand", str(where / name))  # fmt: skip
    os.unlink(name, dir_fd=fd)
    return 1


# --------------------------------------------------------------------------- stale files


def remove_stale_files(git_dir: Path, args: StaleFiles, now: float) -> tuple[Outcome, str]:
    """Unlink each planned file still as planned; see the module docstring."""
    removed, kept, errors = 0, [], []
    for temp in args.files:
        try:
            why = _remove_one(git_dir, temp.path, temp.mtime, now)
        except OSError as exc:
            why, failed = f"{temp.path}: {exc.strerror}", True
        else:
            failed = False
        if why is None:
            removed += 1
        elif failed:
            errors.append(why)
        else:
            kept.append(why)
    message = f"removed {removed} of {len(args.files)}"
    if kept:
        message += f"; left {len(kept)} ({', '.join(kept[:3])})"
    if errors:
        return "failed", f"{message}; cannot remove {', '.join(errors[:3])}"
    return "ok", message


def _remove_one(git_dir: Path, rel: str, mtime: float, now: float) -> str | None:
    """None when removed, else why the file was left (it is not what the plan saw)."""
    parts = rel.split("/")
    if os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
        return f"{rel}: not a plain path inside the git dir"
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(git_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return f"{rel}: its directory is gone or a symlink"
                raise
            os.close(fd)
            fd = child
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return f"{rel}: already gone"
        if not stat.S_ISREG(st.st_mode):
            return f"{rel}: not a regular file"
        if st.st_mtime != mtime or not st.st_mtime < now:
            return f"{rel}: changed since planned"
        os.unlink(parts[-1], dir_fd=fd)
        return None
    finally:
        os.close(fd)


_DISK_FULL = ("No space left on device", "Out of diskspace")  # strerror, git's own words


def _disk_full(message: str, git_dir: Path) -> str:
    if not any(m in message for m in _DISK_FULL):
        message += " (No space left on device)"
    return (
        f"{message}: free disk space on the filesystem holding {git_dir} and run custode "
        "maintain again (git wrote to temporary files first: nothing was lost)"
    )


def _line(exc: GitError) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
