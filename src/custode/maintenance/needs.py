"""What maintenance a repository needs, and why: the ``[maintenance]`` policy's rules
applied to its state, once, for both of their readers. The planner turns each need into a
task (with its arguments); the health verdict reports each as a reason for "attention", so
"attention" in ``custode status`` means "``custode maintain`` has work here".

Pure (but for whether a killed repack's pid still runs: ``stale_files``), and in the
order the tasks run: cleanup (stale files, dead worktrees), refs, objects, and the
commit-graph last, so it is written from the packs the repack leaves. The first object
rule that applies decides the repack. Work a running git holds (a fresh
``packed-refs.lock``, ``gc.pid`` or temporary pack of a running ``git repack``) is left
to it, and said so.

The history the planner also weighs comes in as ``last_full`` and ``first_seen`` (when
custode last ran a full repack, and first maintained the repository); without them the
age of the largest pack stands for the time since the last full repack.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from custode.base.units import format_age as _age
from custode.base.units import format_duration as _dur
from custode.config.maintenance import MIB, MaintenancePolicy
from custode.git.leftovers import REPACK_TEMP, orphaned, stale_age, stale_kind
from custode.git.runner import FEATURES, MINIMUM_VERSION, GitVersion
from custode.scan.objectstore import TempFile
from custode.scan.repostate import RepoState

#: Every maintenance task, in the order tasks run. Its one list: the executor, the history
#: and the task-freshness metric take the names from here (``typing.get_args``).
TaskKind = Literal[
    "remove_stale_files", "prune_worktrees", "pack_refs", "incremental_repack",
    "geometric_repack", "full_repack", "write_midx", "write_commit_graph",
]  # fmt: skip
Mode = Literal["full", "geometric", "incremental"]
#: The feature that lets a repack write a multi-pack bitmap (docs/maintenance-heuristics.md).
MIDX_BITMAP_SAFE = "midx-bitmap-concurrent-repack"
#: The git features these rules depend on: a rule asking for another fails (KeyError).
_USED = ("commit-graph-split", "commit-graph-changed-paths", "repack-geometric",
         "repack-write-midx", "cruft-packs", MIDX_BITMAP_SAFE)  # fmt: skip
_FEATURES = {name: FEATURES[name] for name in _USED}
#: The supported git versions at which the needs of a state can differ: the oldest custode
#: supports, and each release that brought a feature the rules use.
GIT_LEVELS = tuple(
    sorted({MINIMUM_VERSION, *(v for v in _FEATURES.values() if v > MINIMUM_VERSION)})
)
_REPACKS: dict[str, TaskKind] = {
    "full": "full_repack", "geometric": "geometric_repack", "incremental": "incremental_repack",
}  # fmt: skip


@dataclass(frozen=True)
class Need:
    kind: TaskKind
    why: str  # the rule that decided it, for people, with its numbers
    #: write_commit_graph: rewrite it whole (missing, chain too long, stale), not add a layer
    replace: bool = False
    #: a repack: then ``git prune`` the loose objects older than the cruft expiration
    prune: bool = False


@dataclass(frozen=True)
class Needs:
    """A repository's needs in execution order, the work a running git holds (and why), and
    the stale files found (what remove_stale_files removes)."""

    needs: tuple[Need, ...] = ()
    held: tuple[str, ...] = ()
    stale: tuple[TempFile, ...] = ()


def needs(
    s: RepoState,
    p: MaintenancePolicy,
    git: GitVersion,
    now: float,
    *,
    last_full: float | None = None,
    first_seen: float | None = None,
    unsure: str = "",
) -> Needs:
    """What ``s`` needs under ``p`` with ``git`` at ``now``; ``unsure`` says why custode
    cannot be sure it knows every borrower (then, as with a known one, nothing expires)."""
    found: list[Need] = []
    held: list[str] = []
    stale = stale_files(s, p, now)
    if stale:
        found.append(Need("remove_stale_files", _stale_why(stale, p, now)))
    idle = now - s.dead_worktree_mtime
    if s.prunable_worktrees > 0 and idle > p.worktree_prune_age:
        why = (
            f"{_n(s.prunable_worktrees, 'dead worktree')} (directory gone), one unused for "
            f"{_dur(idle)} > {_dur(p.worktree_prune_age)}"
        )
        found.append(Need("prune_worktrees", why))
    refs = _refs(s, p)
    if refs and (lock := held_for(s, "packed-refs.lock", p.stale_lock_age, now)):
        held.append(f"packed-refs.lock is held ({lock} old): refs are left to its owner")
    else:
        found += refs
    since = since_full_repack(s, last_full, first_seen, now)
    objects = _objects(s, p, git, now, since, unsure=unsure)
    graph = _commit_graph(s, p, git, objects, unsure)
    if (objects or graph) and (gc := held_for(s, "gc.pid", p.stale_gc_pid_age, now)):
        held.append(f"git gc is running (gc.pid {gc} old): objects are left to it")
    elif (objects or graph) and (repack := repack_at_work(s, stale, now)):
        held.append(f"a git repack is at work ({repack}): objects are left to it")
    else:
        found += objects + graph
    return Needs(tuple(found), tuple(held), tuple(stale))


def stale_files(s: RepoState, p: MaintenancePolicy, now: float) -> list[TempFile]:
    """git's own leftovers older than their stale age (policy), and a killed repack's
    temporary packs (``leftovers.orphaned``: the one thing here that looks beyond the
    state, at this host's processes); any other *.lock is content."""
    return [t for t in s.temp_files if stale_kind(t.path) and (
        now - t.mtime > stale_age(p, t.path) or orphaned(t.path))]  # fmt: skip


def repack_at_work(s: RepoState, stale: list[TempFile], now: float) -> str:
    """The youngest temporary pack of a ``git repack`` still running (not among ``stale``:
    ``stale_files``' verdict, so each pid is looked at once), said for people; '' when
    there is none."""
    live = [t for t in s.temp_files if REPACK_TEMP.fullmatch(t.path) and t not in stale]
    if not live:
        return ""
    t = max(live, key=lambda t: t.mtime)
    return f"{t.path}, {_dur(max(0.0, now - t.mtime))} old"


def _stale_why(stale: list[TempFile], p: MaintenancePolicy, now: float) -> str:
    aged = [t for t in stale if now - t.mtime > stale_age(p, t.path)]
    dead = [t for t in stale if not now - t.mtime > stale_age(p, t.path)]
    said = []
    if aged:
        counts = Counter(stale_kind(t.path) or "" for t in aged)
        ages = {stale_kind(t.path) or "": stale_age(p, t.path) for t in aged}
        parts = [f"{_n(n, c)} older than {_dur(ages[c])}" for c, n in sorted(counts.items())]
        oldest = _age(max(now - t.mtime for t in aged))
        said.append(f"{', '.join(parts)} (oldest {oldest}), too old for a running git to own")
    if dead:
        pids = sorted({m["pid"] for t in dead if (m := REPACK_TEMP.fullmatch(t.path))})
        said.append(f"{_n(len(dead), 'temporary pack file')} of a git repack no longer "
                    f"running (pid {', '.join(pids)})")  # fmt: skip
    return f"stale: {'; '.join(said)}"


def _refs(s: RepoState, p: MaintenancePolicy) -> list[Need]:
    loose = s.loose_refs - s.symbolic_refs  # symbolic refs cannot be packed
    limit = p.loose_ref_limit(s.packed_refs)
    if loose <= limit:
        return []
    why = (
        f"{_n(loose, 'loose ref')} > {limit:,} (the limit beside {_n(s.packed_refs, 'packed ref')})"
    )
    return [Need("pack_refs", why)]


def _objects(
    s: RepoState, p: MaintenancePolicy, git: GitVersion, now: float, since: tuple[float, str],
    *, unsure: str,
) -> list[Need]:  # fmt: skip
    """The repack (at most one) and multi-pack-index work, each rule with its numbers.

    A full repack is chosen for what it buys, not for a pack's age (the maintenance doc's
    "git 2.39 strategy"): a small repository is repacked whole whenever any repack is due
    (it costs what a geometric one costs); a large one keeps its well-formed largest pack,
    with geometric or incremental repacks on top, and is rewritten whole only to expire
    unreachable objects, when its packs serve clones badly, or for a missing bitmap where
    git cannot write a multi-pack one safely.
    """
    if s.packs <= 0 and s.loose_objects <= 0:
        return []
    repackable = s.packs - s.cruft_packs - s.kept_packs  # a repack can merge only these
    geometric = has(git, "repack-geometric")
    midx = writes_midx(s, p, git)  # written by geometric repacks
    safe = has(git, MIDX_BITMAP_SAFE)
    unbitmapped = (
        wants_bitmaps(s, p) and repackable > 0 and s.pack_bitmaps <= 0 and not s.midx_bitmap
    )
    loose = s.loose_objects > p.loose_objects
    loose_why = f"{s.loose_objects:,} loose objects > {p.loose_objects:,}"
    age, since_why = since
    due = age > p.full_repack_cooldown
    expire = expiration(s, p, unsure)
    cruft_age = now - s.oldest_cruft_mtime if s.cruft_packs > 0 < s.oldest_cruft_mtime else 0.0
    cruft_due = expire is not None and cruft_age > expire and due
    loose_age = now - s.oldest_loose_mtime if s.loose_objects > 0 < s.oldest_loose_mtime else 0.0
    stray = expire is not None and loose_age > expire  # git prune's: a repack leaves them
    stray_why = (
        f"loose objects up to {_age(loose_age)} old > the {_dur(expire or 0.0)} expiration: "
        "the reachable ones are packed"
    )
    size = f"{s.pack_bytes / MIB:,.1f} MiB of packs"
    total = s.pack_bytes + s.loose_objects_bytes
    small = total < p.small_repository
    live = s.pack_bytes - s.cruft_pack_bytes  # what a full repack rewrites
    # paced by the cooldown: a repository whose full repack leaves several packs (git's
    # pack.packSizeLimit) must not be rewritten every night
    spread = repackable > 1 and 2 * s.base_pack_bytes < live and due
    spread_why = (
        f"the largest of {repackable} packs holds {s.base_pack_bytes / MIB:,.1f} of "
        f"{live / MIB:,.1f} MiB (< half): they serve clones badly, {since_why}"
    )
    untracked = s.packs - s.midx_packs if s.multi_pack_index else repackable
    ulimit, limit = p.untracked_pack_limit(s.pack_bytes), p.pack_limit(s.pack_bytes)
    out = f"{untracked} packs" + (" outside the multi-pack-index" if s.multi_pack_index else "")
    old, packs = not geometric, f"{repackable} packs"
    no_midx = midx and repackable > 1 and not s.multi_pack_index
    first_why = loose_why if loose else stray_why
    rules: list[tuple[bool, Mode, str]] = [  # the first that applies decides
        (s.packs <= 0 and (loose or stray), "full", f"{first_why} and no pack yet"),
        (cruft_due, "full", f"cruft pack {_age(cruft_age)} old: its expired objects go"),
        (old and repackable > limit, "full", f"{packs} > {limit} for {size} (git {git})"),
        (spread, "full", spread_why),
        (unbitmapped and not safe and due, "full",
         f"no reachability bitmap (git {git} writes none into a multi-pack-index), {since_why}"),
        (stray, "incremental", stray_why),
        (no_midx, "geometric", f"{packs} and no multi-pack-index"),
        (not old and untracked > ulimit, "geometric", f"{out} > {ulimit} for {size}"),
        (midx and unbitmapped and safe, "geometric", "no reachability bitmap"),
        (loose, "incremental", f"{loose_why}: packed into a new pack"),
    ]  # fmt: skip
    mode, why = next(((m, w) for hit, m, w in rules if hit), (None, ""))
    if mode in ("geometric", "incremental") and small:
        # a repack of a small repository costs the same few tens of ms whole or in part:
        # whole, it leaves one pack (and its expired objects go)
        mode, why = (
            "full",
            f"{why}; {total / MIB:,.1f} MiB < {p.small_repository / MIB:,.0f} MiB: repacked whole",
        )
    found = [Need(_REPACKS[mode], why, prune=stray)] if mode else []
    stale_midx = not s.multi_pack_index or untracked > ulimit
    old_midx = not has(git, "repack-write-midx")  # git writes none while repacking
    if p.multi_pack_index and old_midx and mode != "full" and repackable > 1 and stale_midx:
        why = f"{out}; git {git} cannot write the multi-pack-index while repacking"
        found.append(Need("write_midx", why))
    elif midx and s.midx_bitmap and mode in (None, "incremental") and not safe:
        # one written before (or by another tool) would be trusted, and copied by every
        # later bitmap: a multi-pack-index written without --bitmap deletes it (a full
        # repack removes it, a geometric one rewrites it)
        why = f"a multi-pack bitmap, which git {git} cannot keep safe: dropped"
        found.append(Need("write_midx", why))
    return found


def since_full_repack(
    s: RepoState, last_full: float | None, first_seen: float | None, now: float
) -> tuple[float, str]:
    """How long since the last full repack, and how that is known."""
    if last_full is not None:
        age = now - last_full
        return age, f"last full repack {_age(age)} ago"
    # a fresh push or clone is one well-packed pack: time to full repack is measured from
    # it, or from custode's first visit if earlier (git freshens a pack's mtime on writes)
    known = [(t, what) for t, what in ((s.base_pack_mtime, "largest pack written"),
             (first_seen or 0.0, "first maintained")) if t > 0]  # fmt: skip
    if not known:
        return math.inf, "no full repack on record"
    base, what = min(known)
    return now - base, f"no full repack on record, {what} {_age(now - base)} ago"


def expiration(s: RepoState, p: MaintenancePolicy, unsure: str) -> float | None:
    """After how long a full repack drops unreachable objects; None: never (borrowed, or
    custode is unsure it knows every borrower, or the policy keeps them)."""
    return None if s.borrowed_by or unsure else p.cruft_expiration


def _commit_graph(
    s: RepoState, p: MaintenancePolicy, git: GitVersion, objects: list[Need], unsure: str
) -> list[Need]:
    if s.refs <= 0 or (s.packs <= 0 and s.loose_objects <= 0):
        return []  # nothing reachable to index
    repack = next((n.kind for n in objects if n.kind in _REPACKS.values()), "")
    replace: list[str] = []
    if not s.commit_graph:
        replace.append("no commit-graph")
    if s.commit_graph_chain > p.commit_graph_chain:
        replace.append(f"a chain of {s.commit_graph_chain} layers > {p.commit_graph_chain}")
    if s.commit_graph and changed_paths(p, git) and not s.commit_graph_changed_paths:
        replace.append("no changed-path Bloom filters")
    drops = repack == "full_repack" or any(n.prune for n in objects)
    if s.commit_graph and drops and expiration(s, p, unsure) is not None:
        replace.append(f"the {_words(repack)} may drop commits it lists")
    if replace:
        return [Need("write_commit_graph", "; ".join(replace), replace=True)]
    if repack:
        return [Need("write_commit_graph", f"index the new commits after the {_words(repack)}")]
    return []


def changed_paths(p: MaintenancePolicy, git: GitVersion) -> bool:
    """Whether the commit-graph carries changed-path Bloom filters."""
    return p.changed_paths and has(git, "commit-graph-changed-paths")


def wants_bitmaps(s: RepoState, p: MaintenancePolicy) -> bool:
    """Bitmaps serve clones and fetches (bare repositories), and need every object local."""
    return p.write_bitmaps and s.kind == "bare" and not s.alternates


def writes_midx(s: RepoState, p: MaintenancePolicy, git: GitVersion) -> bool:
    """Whether geometric repacks write the multi-pack-index: by policy, and always over one
    already there. A repack that deletes packs must rewrite it: it runs with
    DISTRUST_DERIVED, so git does not see the old one to remove it, and a multi-pack-index
    (with its bitmap) naming deleted packs makes git 2.39 fail every clone. (A full repack
    leaves one pack: the executor removes the old one first.)

    Not, by policy, where the repository wants bitmaps and git cannot write a multi-pack
    one safely: git 2.39's ``repack --geometric --write-midx`` deletes the pack bitmaps,
    and a full clone's objects were then enumerated 5x slower (the maintenance doc's
    "git 2.39 strategy"); without it the largest pack keeps its bitmap, which git uses.
    """
    if not has(git, "repack-write-midx"):
        return False
    unsafe = wants_bitmaps(s, p) and not has(git, MIDX_BITMAP_SAFE)
    return s.multi_pack_index or (p.multi_pack_index and not unsafe)


def bitmaps(s: RepoState, p: MaintenancePolicy, git: GitVersion, midx: bool) -> bool:
    """Whether the repack writes bitmaps: into the multi-pack-index (``midx``) only with a
    git whose clones survive a concurrent repack deleting a pack (the maintenance doc)."""
    return wants_bitmaps(s, p) and (not midx or has(git, MIDX_BITMAP_SAFE))


def held_for(s: RepoState, path: str, age: float, now: float) -> str:
    """How old ``path`` is if it exists and is not stale (a running git holds it), else ''."""
    ages = [now - t.mtime for t in s.temp_files if t.path == path and not now - t.mtime > age]
    return _dur(max(0.0, min(ages))) if ages else ""


def has(git: GitVersion, feature: str) -> bool:
    return git >= _FEATURES[feature]


def every_git(judge: Callable[[GitVersion], Needs]) -> Needs:
    """``judge``'s needs with the newest git, if every supported git has some; else none.

    For a reader that does not know which git maintain will run (the health verdict): a
    need then means work for maintain whatever its git."""
    found = Needs()
    for git in GIT_LEVELS:
        found = judge(git)
        if not found.needs:
            return found
    return found


def _words(kind: str) -> str:
    return kind.replace("_", " ")


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"
