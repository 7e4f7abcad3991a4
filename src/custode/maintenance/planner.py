"""The maintenance planner: ``plan(RepoState, MaintenancePolicy, git version, now) → Plan``.

Pure: it reads the state it is given and runs nothing, so the plan is the dry run. Each
task says why, with its numbers ("3,040 loose objects > 1,024"). Tasks run in order:
cleanup (stale files, dead worktrees), refs, objects, and the commit-graph last, so it is
written from the packs the repack leaves.

Never lose data: a broken repository, or one in doubt (its last check was not clean),
gets no task; a repository that others borrow objects from, or may (custode cannot be
sure), never gets a repack that can drop an unreachable object; stale files are only
git's own leftovers older than the policy's ages (a running git may own a younger one), listed
with the mtime seen so the executor can leave any file touched since. A repository with
alternates gets no bitmaps: git disables them when it cannot pack every object (``-l``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from custode.base.units import format_duration as _dur
from custode.config.maintenance import MIB, MaintenancePolicy
from custode.git.leftovers import stale_age, stale_kind
from custode.git.runner import FEATURES, GitVersion
from custode.scan.objectstore import TempFile
from custode.scan.repostate import RepoState

TaskKind = Literal[
    "remove_stale_files", "prune_worktrees", "pack_refs", "incremental_repack",
    "geometric_repack", "full_repack", "write_midx", "write_commit_graph",
]  # fmt: skip
#: What a full repack does with unreachable objects: a cruft pack (git 2.37+), kept in the
#: new pack (``--keep-unreachable``), or loosened for ``git prune`` (older git).
Unreachable = Literal["cruft", "keep", "loosen"]
#: The feature that lets a repack write a multi-pack bitmap (docs/maintenance-heuristics.md).
MIDX_BITMAP_SAFE = "midx-bitmap-concurrent-repack"


@dataclass(frozen=True)
class StaleFiles:
    """remove_stale_files: paths relative to the git dir, with the mtime the plan saw."""

    files: tuple[TempFile, ...]


@dataclass(frozen=True)
class PruneWorktrees:
    expire: float  # seconds: only worktrees unused for longer are pruned


@dataclass(frozen=True)
class Repack:
    """The repack tasks; a repack drops objects only when ``expire`` is set."""

    write_bitmaps: bool = False
    write_midx: bool = False
    geometric_factor: int | None = None  # geometric_repack
    unreachable: Unreachable = "keep"  # full_repack
    expire: float | None = None  # full_repack: drop unreachable objects older (seconds)


@dataclass(frozen=True)
class CommitGraph:
    split: Literal["incremental", "replace", "none"]  # none: git without --split
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
            why = f"unchanged since its last maintenance {_dur(age)} ago"
            return Plan(state.path, skipped_reason=f"nothing to do: {why}")
    notes: list[str] = []
    if state.borrowed_by:
        notes.append(f"objects borrowed by {_names(state.borrowed_by)}: never pruned")
    elif unsure_borrowers:
        notes.append(f"unreachable objects are kept: {unsure_borrowers}")
    notes += _bitmap_notes(state, policy, git)
    tasks = _cleanup(state, policy, now)
    held = _held(state, "packed-refs.lock", policy.stale_lock_age, now)
    refs = _refs(state, policy)
    if refs and held:
        notes.append(f"packed-refs.lock is held ({held} old): refs are left to its owner")
    else:
        tasks += refs
    gc = _held(state, "gc.pid", policy.stale_gc_pid_age, now)
    objects = _objects(state, policy, git, now, h, unsure=unsure_borrowers)
    graph = _commit_graph(state, policy, git, objects)
    if gc and (objects or graph):
        notes.append(f"git gc is running (gc.pid {gc} old): objects are left to it")
    else:
        tasks += objects + graph
    if tasks:
        return Plan(state.path, tuple(tasks), None, tuple(notes))
    has_objects = state.packs > 0 or state.loose_objects > 0
    why = "already optimised" if state.refs > 0 or has_objects else "empty repository"
    return Plan(state.path, (), f"nothing to do: {why}", tuple(notes))


def _cleanup(s: RepoState, p: MaintenancePolicy, now: float) -> list[Task]:
    tasks: list[Task] = []
    # only what git and Gitaly leave behind (policy.stale_kind): any other *.lock is content
    stale = [t for t in s.temp_files if stale_kind(t.path) and now - t.mtime > stale_age(p, t.path)]
    if stale:
        counts = Counter(stale_kind(t.path) or "" for t in stale)
        ages = {stale_kind(t.path) or "": stale_age(p, t.path) for t in stale}
        parts = [f"{_n(n, c)} older than {_dur(ages[c])}" for c, n in sorted(counts.items())]
        oldest = _dur(max(now - t.mtime for t in stale))
        reason = f"stale: {', '.join(parts)} (oldest {oldest}), too old for a running git to own"
        tasks.append(Task("remove_stale_files", reason, StaleFiles(tuple(stale))))
    idle = now - s.dead_worktree_mtime
    if s.prunable_worktrees > 0 and idle > p.worktree_prune_age:
        reason = (
            f"{_n(s.prunable_worktrees, 'dead worktree')} (directory gone), one unused for "
            f"{_dur(idle)} > {_dur(p.worktree_prune_age)}"
        )
        tasks.append(Task("prune_worktrees", reason, PruneWorktrees(p.worktree_prune_age)))
    return tasks


def _refs(s: RepoState, p: MaintenancePolicy) -> list[Task]:
    loose = s.loose_refs - s.symbolic_refs  # symbolic refs cannot be packed
    limit = p.loose_ref_limit(s.packed_refs)
    if loose <= limit:
        return []
    why = (
        f"{_n(loose, 'loose ref')} > {limit:,} (the limit beside {_n(s.packed_refs, 'packed ref')})"
    )
    return [Task("pack_refs", why)]


def _objects(
    s: RepoState, p: MaintenancePolicy, git: GitVersion, now: float, h: RepoHistory, *, unsure: str
) -> list[Task]:
    if s.packs <= 0 and s.loose_objects <= 0:
        return []
    repackable = s.packs - s.cruft_packs - s.kept_packs  # a repack can merge only these
    geometric = _has(git, "repack-geometric")
    midx = _writes_midx(s, p, git)  # written while repacking
    bitmaps = _bitmaps(s, p, git, midx)
    no_bitmap = bitmaps and repackable > 0 and s.pack_bitmaps <= 0 and not s.midx_bitmap
    loose = s.loose_objects > p.loose_objects
    loose_why = f"{s.loose_objects:,} loose objects > {p.loose_objects:,}"
    age, since = _since_full_repack(s, h, now)
    due = age > p.full_repack_cooldown
    cruft_age = now - s.oldest_cruft_mtime if s.cruft_packs > 0 < s.oldest_cruft_mtime else 0.0
    expire = p.cruft_expiration is not None and not s.borrowed_by and not unsure
    cruft_due = expire and cruft_age > (p.cruft_expiration or 0.0) and due
    size = f"{s.pack_bytes / MIB:,.1f} MiB of packs"
    untracked = s.packs - s.midx_packs if s.multi_pack_index else repackable
    ulimit, limit = p.untracked_pack_limit(s.pack_bytes), p.pack_limit(s.pack_bytes)
    out = f"{untracked} packs" + (" outside the multi-pack-index" if s.multi_pack_index else "")
    old, packs = not geometric, f"{repackable} packs"
    no_midx = midx and repackable > 1 and not s.multi_pack_index
    cooldown = f"{since} (cooldown {_dur(p.full_repack_cooldown)})"
    rules: list[tuple[bool, str, str]] = [  # the first that applies decides
        (s.packs <= 0 and loose, "full", f"{loose_why} and no pack yet"),
        (repackable > 1 and due, "full", f"{packs}, {cooldown}"),
        (cruft_due, "full", f"cruft pack {_dur(cruft_age)} old: its expired objects go"),
        (old and repackable > limit, "full", f"{packs} > {limit} for {size} (git {git})"),
        (old and no_bitmap and due, "full", f"no reachability bitmap, {since}"),
        (no_midx, "geometric", f"{packs} and no multi-pack-index"),
        (not old and untracked > ulimit, "geometric", f"{out} > {ulimit} for {size}"),
        (midx and no_bitmap, "geometric", "no reachability bitmap"),
        (loose, "incremental", f"{loose_why}: packed into a new pack"),
    ]  # fmt: skip
    mode, why = next(((m, w) for hit, m, w in rules if hit), ("", ""))
    if mode in ("geometric", "incremental") and due:
        # it would leave two packs or more and so call for a full repack next time: the
        # fleet converges in one run instead of two
        mode, why = "full", f"{why}; a full repack is due anyway ({since})"
    tasks: list[Task] = []
    if mode == "full":
        tasks.append(_full(s, p, git, why, unsure))
    elif mode == "geometric":
        args = Repack(bitmaps and midx, midx, p.geometric_factor)
        tasks.append(Task("geometric_repack", f"{why}; nothing is dropped", args))
    elif mode == "incremental":
        tasks.append(Task("incremental_repack", f"{why}; nothing is dropped", Repack()))
    stale_midx = not s.multi_pack_index or untracked > ulimit
    rewrites_midx = any(isinstance(t.args, Repack) and t.args.write_midx for t in tasks)
    if p.multi_pack_index and not midx and mode != "full" and repackable > 1 and stale_midx:
        why = f"{out}; git {git} cannot write the multi-pack-index while repacking"
        tasks.append(Task("write_midx", why))
    elif midx and s.midx_bitmap and not rewrites_midx and not _has(git, MIDX_BITMAP_SAFE):
        # one written before (or by another tool) would be trusted, and copied by every
        # later bitmap: a multi-pack-index written without --bitmap deletes it
        why = f"a multi-pack bitmap, which git {git} cannot keep safe: dropped"
        tasks.append(Task("write_midx", why))
    return tasks


def _since_full_repack(s: RepoState, h: RepoHistory, now: float) -> tuple[float, str]:
    """How long since the last full repack, and how that is known."""
    if h.last_full_repack is not None:
        age = now - h.last_full_repack
        return age, f"last full repack {_dur(age)} ago"
    # a fresh push or clone is one well-packed pack: time to full repack is measured from
    # it, or from custode's first visit if earlier (git freshens a pack's mtime on writes)
    known = [(t, what) for t, what in ((s.base_pack_mtime, "largest pack written"),
             (h.first_seen or 0.0, "first maintained")) if t > 0]  # fmt: skip
    if not known:
        return math.inf, "no full repack on record"
    base, what = min(known)
    return now - base, f"no full repack on record, {what} {_dur(max(now - base, 0))} ago"


def _full(s: RepoState, p: MaintenancePolicy, git: GitVersion, why: str, unsure: str) -> Task:
    unreachable: Unreachable = "cruft" if _has(git, "cruft-packs") else "keep"
    expire = None if s.borrowed_by or unsure else p.cruft_expiration
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
    else:
        unreachable = "loosen"
        fate = f"unreachable objects are loosened, pruned after {_dur(expire)} (git {git})"
    midx = _writes_midx(s, p, git)
    args = Repack(_bitmaps(s, p, git, midx), midx, None, unreachable, expire)
    return Task("full_repack", f"{why}; {fate}", args)


def _commit_graph(
    s: RepoState, p: MaintenancePolicy, git: GitVersion, objects: list[Task]
) -> list[Task]:
    if s.refs <= 0 or (s.packs <= 0 and s.loose_objects <= 0):
        return []  # nothing reachable to index
    bloom = p.changed_paths and _has(git, "commit-graph-changed-paths")
    replace: list[str] = []
    if not s.commit_graph:
        replace.append("no commit-graph")
    if s.commit_graph_chain > p.commit_graph_chain:
        replace.append(f"a chain of {s.commit_graph_chain} layers > {p.commit_graph_chain}")
    if s.commit_graph and bloom and not s.commit_graph_changed_paths:
        replace.append("no changed-path Bloom filters")
    if s.commit_graph and any(t.drops_unreachable for t in objects):
        replace.append("the full repack may drop commits it lists")
    if replace:
        why = "; ".join(replace)
    elif repack := next((t.kind for t in objects if isinstance(t.args, Repack)), ""):
        why = f"index the new commits after the {repack.replace('_', ' ')}"
    else:
        return []
    split: Literal["incremental", "replace", "none"] = "replace" if replace else "incremental"
    if not _has(git, "commit-graph-split"):
        split = "none"
    return [Task("write_commit_graph", why, CommitGraph(split, bloom))]


def _wants_bitmaps(s: RepoState, p: MaintenancePolicy) -> bool:
    """Bitmaps serve clones and fetches (bare repositories), and need every object local."""
    return p.write_bitmaps and s.kind == "bare" and not s.alternates


def _bitmap_notes(s: RepoState, p: MaintenancePolicy, git: GitVersion) -> list[str]:
    if s.alternates and s.kind == "bare" and p.write_bitmaps:
        return ["borrows objects from an alternate: no bitmaps (git cannot cover them)"]
    midx = _writes_midx(s, p, git)
    if midx and _wants_bitmaps(s, p) and not _bitmaps(s, p, git, midx):
        fixed = FEATURES[MIDX_BITMAP_SAFE]
        return [f"no multi-pack bitmap: with git {git} a clone during a repack can fail "
                f"(git {fixed} and later write one)"]  # fmt: skip
    return []


def _writes_midx(s: RepoState, p: MaintenancePolicy, git: GitVersion) -> bool:
    """Whether repacks write the multi-pack-index: by policy, and always over one already
    there. A repack that deletes packs must rewrite it: it runs with DISTRUST_DERIVED, so
    git does not see the old one to remove it, and a multi-pack-index (with its bitmap)
    naming deleted packs makes git 2.39 fail every clone."""
    return (p.multi_pack_index or s.multi_pack_index) and _has(git, "repack-write-midx")


def _bitmaps(s: RepoState, p: MaintenancePolicy, git: GitVersion, midx: bool) -> bool:
    """Whether the repack writes bitmaps: into the multi-pack-index (``midx``) only with a
    git whose clones survive a concurrent repack deleting a pack (the maintenance doc)."""
    return _wants_bitmaps(s, p) and (not midx or _has(git, MIDX_BITMAP_SAFE))


def _held(s: RepoState, path: str, age: float, now: float) -> str:
    """How old ``path`` is if it exists and is not stale (a running git holds it), else ''."""
    ages = [now - t.mtime for t in s.temp_files if t.path == path and not now - t.mtime > age]
    return _dur(max(0.0, min(ages))) if ages else ""


def _has(git: GitVersion, feature: str) -> bool:
    return git >= FEATURES[feature]


def _names(relatives: tuple[str, ...], shown: int = 3) -> str:
    more = len(relatives) - shown
    return ", ".join(relatives[:shown]) + (f" and {more} more" if more > 0 else "")


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"
