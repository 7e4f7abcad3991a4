"""The maintenance planner: ``plan(RepoState, MaintenancePolicy, git version, now) → Plan``.

Pure: it reads the state it is given and runs nothing, so the plan is the dry run. Each
task says why, with its numbers ("3,040 loose objects > 1,024"). Tasks run in order:
cleanup (stale files, dead worktrees), refs, objects, and the commit-graph last, so it is
written from the packs the repack leaves. Which tasks, and why, the rules of
``integrity.needs`` decide (the health verdict reports the same needs); the planner adds
the history (skips, pacing, doubt) and each task's arguments.

Never lose data: a broken repository, or one in doubt (its last check was not clean),
gets no task; a repository that others borrow objects from, or may (custode cannot be
sure), never gets a repack that can drop an unreachable object; stale files are only
git's own leftovers older than the policy's ages (a running git may own a younger one), listed
with the mtime seen so the executor can leave any file touched since. A repository with
alternates gets no bitmaps: git disables them when it cannot pack every object (``-l``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from custode.base.units import format_age as _age
from custode.base.units import format_duration as _dur
from custode.config.maintenance import MaintenancePolicy
from custode.git.leftovers import stale_kind
from custode.git.runner import FEATURES, GitVersion
from custode.maintenance.needs import (
    MIDX_BITMAP_SAFE,
    Need,
    Needs,
    TaskKind,
    bitmaps,
    changed_paths,
    expiration,
    has,
    needs,
    wants_bitmaps,
    writes_midx,
)
from custode.scan.objectstore import TempFile
from custode.scan.repostate import RepoState

__all__ = [
    "MIDX_BITMAP_SAFE", "Args", "CommitGraph", "NoArgs", "Plan", "PruneWorktrees", "Repack",
    "RepoHistory", "StaleFiles", "Task", "TaskKind", "plan",
]  # fmt: skip

#: What a full repack does with unreachable objects: a cruft pack (git 2.37+), kept in the
#: new pack (``--keep-unreachable``), or loosened for ``git prune`` (older git).
Unreachable = Literal["cruft", "keep", "loosen"]
#: How the commit-graph is written: a new layer, the chain replaced, or (git without
#: ``--split``) one file.
Split = Literal["incremental", "replace", "none"]


@dataclass(frozen=True)
class StaleFiles:
    """remove_stale_files: paths relative to the git dir, with the mtime the plan saw."""

    files: tuple[TempFile, ...]


@dataclass(frozen=True)
class PruneWorktrees:
    expire: float  # seconds: only worktrees unused for longer are pruned


@dataclass(frozen=True)
class Repack:
    """The repack tasks; a repack drops objects only when ``expire`` is set.

    A full repack writes no multi-pack-index (one pack needs none: an old one is removed
    first) and, with ``write_bitmaps``, the pack's own bitmap; a geometric repack writes
    the multi-pack-index, with its bitmap only where git keeps that safe.
    """

    write_bitmaps: bool = False
    write_midx: bool = False
    geometric_factor: int | None = None  # geometric_repack
    unreachable: Unreachable = "keep"  # full_repack
    #: full or incremental repack: unreachable objects older than this (seconds) are
    #: dropped, the loose ones by ``git prune`` after the repack (``prune``)
    expire: float | None = None
    #: with ``expire``: the scan saw loose objects that old, which the repack leaves loose
    prune: bool = False


@dataclass(frozen=True)
class CommitGraph:
    split: Split
    changed_paths: bool


@dataclass(frozen=True)
class NoArgs:
    """pack_refs (``--all --prune``) and write_midx need nothing more."""


Args = StaleFiles | PruneWorktrees | Repack | CommitGraph | NoArgs
_ARGS: dict[str, type] = {
    "remove_stale_files": StaleFiles, "prune_worktrees": PruneWorktrees, "pack_refs": NoArgs,
    "incremental_repack": Repack, "geometric_repack": Repack, "full_repack": Repack,
    "write_midx": NoArgs, "write_commit_graph": CommitGraph,
}  # fmt: skip


@dataclass(frozen=True)
class Task:
    kind: TaskKind
    reason: str  # for people, with the numbers that decided it
    args: Args = field(default_factory=NoArgs)

    def __post_init__(self) -> None:
        if not isinstance(self.args, _ARGS[self.kind]) or not self.reason:
            raise ValueError(f"a {self.kind} task needs {_ARGS[self.kind].__name__} and a reason")

    @property
    def drops_unreachable(self) -> bool:
        """Whether the task may delete an object (unreachable, past the expiration)."""
        return isinstance(self.args, Repack) and self.args.expire is not None


@dataclass(frozen=True)
class RepoHistory:
    """What the history database knows of one repository's maintenance (times: epoch s)."""

    last_full_repack: float | None = None  # custode's last successful full repack
    first_seen: float | None = None  # custode's first maintenance of it on record
    last_success: float | None = None  # its last maintenance in which nothing failed
    fingerprint: str = ""  # the repository's fingerprint right after that maintenance
    #: why the repository is in doubt (its last recorded check was not clean), else ""
    doubt: str = ""


@dataclass(frozen=True)
class Plan:
    """What one repository needs, in execution order; ``skipped_reason`` iff no task."""

    path: str
    tasks: tuple[Task, ...] = ()
    skipped_reason: str | None = None
    notes: tuple[str, ...] = ()  # what was deliberately not done, and why
    in_doubt: bool = False  # skipped because its last check was not clean


def plan(
    state: RepoState,
    policy: MaintenancePolicy,
    git: GitVersion,
    now: float,
    history: RepoHistory | None = None,
    *,
    unsure_borrowers: str = "",
) -> Plan:
    """The maintenance ``state`` needs under ``policy`` with ``git``, at time ``now``.

    ``unsure_borrowers`` says why custode cannot be sure it knows every repository
    borrowing from this one (see ``maintenance.borrowers``): then, as with a known
    borrower, no unreachable object expires.

    ``history`` skips a repository unchanged since its last successful maintenance (for
    ``policy.revisit_after``) and paces full repacks; with none on record, the age of the
    largest pack stands for the time since the last one (a full repack, gc or clone wrote
    it), so a repository fresh from a push or clone is not rewritten whole at first sight.
    """
    if state.problems:
        return Plan(state.path, skipped_reason="left untouched: " + "; ".join(state.problems))
    h = history or RepoHistory()
    if h.doubt:  # not even cleanup: a repository in doubt is left as the check found it
        return Plan(state.path, skipped_reason=f"in doubt: {h.doubt}", in_doubt=True)
    # may become stale with no change (only git's own leftovers: other files never do)
    timed = any(stale_kind(t.path) for t in state.temp_files) or state.prunable_worktrees
    if h.last_success is not None and h.fingerprint == state.fingerprint and not timed:
        age = now - h.last_success
        if 0 <= age <= policy.revisit_after:
            why = f"unchanged since its last maintenance {_age(age)} ago"
            return Plan(state.path, skipped_reason=f"nothing to do: {why}")
    notes: list[str] = []
    if state.borrowed_by:
        notes.append(f"objects borrowed by {_names(state.borrowed_by)}: never pruned")
    elif unsure_borrowers:
        notes.append(f"unreachable objects are kept: {unsure_borrowers}")
    notes += _bitmap_notes(state, policy, git)
    found = needs(state, policy, git, now, last_full=h.last_full_repack,
                  first_seen=h.first_seen, unsure=unsure_borrowers)  # fmt: skip
    notes += found.held
    tasks = [_task(n, found, state, policy, git, unsure=unsure_borrowers) for n in found.needs]
    if tasks:
        return Plan(state.path, tuple(tasks), None, tuple(notes))
    has_objects = state.packs > 0 or state.loose_objects > 0
    why = "already optimised" if state.refs > 0 or has_objects else "empty repository"
    return Plan(state.path, (), f"nothing to do: {why}", tuple(notes))


def _task(
    need: Need, found: Needs, s: RepoState, p: MaintenancePolicy, git: GitVersion, *, unsure: str
) -> Task:
    """The task that meets ``need``, with its arguments."""
    if need.kind == "full_repack":
        return _full(s, p, git, need, unsure)
    expire = expiration(s, p, unsure)
    if need.kind == "incremental_repack" and need.prune and expire is not None:
        why = f"{need.why}; unreachable loose objects older than {_dur(expire)} are pruned"
        return Task(need.kind, why, Repack(expire=expire, prune=True))
    keeps = need.kind in {"geometric_repack", "incremental_repack"}
    why = f"{need.why}; nothing is dropped" if keeps else need.why
    return Task(need.kind, why, _args(need, found, s, p, git))


def _args(need: Need, found: Needs, s: RepoState, p: MaintenancePolicy, git: GitVersion) -> Args:
    match need.kind:
        case "remove_stale_files":
            return StaleFiles(found.stale)
        case "prune_worktrees":
            return PruneWorktrees(p.worktree_prune_age)
        case "geometric_repack":
            midx = writes_midx(s, p, git)
            return Repack(bitmaps(s, p, git, midx) and midx, midx, p.geometric_factor)
        case "incremental_repack":
            return Repack()
        case "write_commit_graph":
            split: Split = "replace" if need.replace else "incremental"
            return CommitGraph(split if has(git, "commit-graph-split") else "none",
                               changed_paths(p, git))  # fmt: skip
    return NoArgs()  # pack_refs, write_midx


def _full(s: RepoState, p: MaintenancePolicy, git: GitVersion, need: Need, unsure: str) -> Task:
    why, prune = need.why, need.prune
    unreachable: Unreachable = "cruft" if has(git, "cruft-packs") else "keep"
    expire = expiration(s, p, unsure)
    if s.borrowed_by:
        unreachable = "keep"
        fate = f"unreachable objects are kept: {_names(s.borrowed_by)} borrow from it"
    elif unsure:
        unreachable = "keep"
        fate = f"unreachable objects are kept: {unsure}"
    elif expire is None:
        fate = "unreachable objects are kept (cruft expiration is off)"
    elif unreachable == "cruft":
        fate = f"unreachable objects go to a cruft pack, dropped after {_dur(expire)}"
        fate += " (loose ones that old are pruned)" if prune else ""
    else:
        unreachable = "loosen"
        fate = f"unreachable objects are loosened, pruned after {_dur(expire)} (git {git})"
    # one pack needs no multi-pack-index (the executor removes an old one first), and gets
    # its own bitmap
    args = Repack(wants_bitmaps(s, p), False, None, unreachable, expire, prune)
    return Task("full_repack", f"{why}; {fate}", args)


def _bitmap_notes(s: RepoState, p: MaintenancePolicy, git: GitVersion) -> list[str]:
    if s.alternates and s.kind == "bare" and p.write_bitmaps:
        return ["borrows objects from an alternate: no bitmaps (git cannot cover them)"]
    midx = writes_midx(s, p, git)
    fixed = FEATURES[MIDX_BITMAP_SAFE]
    if midx and wants_bitmaps(s, p) and not bitmaps(s, p, git, midx):
        return [f"no multi-pack bitmap: with git {git} a clone during a repack can fail "
                f"(git {fixed} and later write one)"]  # fmt: skip
    if p.multi_pack_index and not midx and wants_bitmaps(s, p) and has(git, "repack-write-midx"):
        return [f"no multi-pack-index: with git {git} it would delete the pack's bitmap, and "
                f"a multi-pack bitmap can fail a clone during a repack (git {fixed} and later "
                "write one)"]  # fmt: skip
    return []


def _names(relatives: tuple[str, ...], shown: int = 3) -> str:
    more = len(relatives) - shown
    return ", ".join(relatives[:shown]) + (f" and {more} more" if more > 0 else "")
