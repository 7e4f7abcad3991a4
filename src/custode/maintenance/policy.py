"""The maintenance policy: every threshold and age the planner uses, with its source.

Defaults follow Gitaly's housekeeping (it looks after GitLab's git servers) where its
server-side choice differs from git's client-side ``gc --auto``, and git where custode
has nothing better; docs/maintenance-heuristics.md gives the sources and says where
custode differs. Durations are seconds. Later loaded from the ``[maintenance]`` section.

Size-scaled limits grow with the logarithm of the repository: ``max(min, log(x) /
log(growth))``, so a large repository tolerates a few more packs or loose refs before
paying for the (larger) rewrite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR
MIB = 1024 * 1024


@dataclass(frozen=True)
class MaintenancePolicy:
    """Thresholds ("more than N triggers") and ages ("older than N is stale")."""

    #: Loose objects before they are packed. Gitaly: 1,024 (LooseObjectLimit); git's
    #: gc.auto is 6,700, a client-side default: servers are kept better packed.
    loose_objects: int = 1024
    #: Packs outside the multi-pack-index before a geometric repack, scaled by pack size:
    #: 2 below 10 MiB, 3 at 10 MiB, 7 at 100 MiB, 11 at 1 GiB, 19 at 100 GiB (Gitaly).
    untracked_packs_min: int = 2
    untracked_packs_growth: float = 1.8
    #: Without geometric repacking (git < 2.32): packs before a full repack even inside the
    #: cooldown: 5 below 10 MiB, 17 at 100 MiB, 26 at 1 GiB (Gitaly before geometric repacks;
    #: git's gc.autoPackLimit is a flat 50).
    packs_min: int = 5
    packs_growth: float = 1.3
    #: ``git repack --geometric=<factor>``: each pack at least factor times the next (Gitaly).
    geometric_factor: int = 2
    #: A repository with more than one pack gets a full repack (gathering unreachable objects
    #: into a cruft pack, refreshing deltas) at most this often. Gitaly: 5 days.
    full_repack_cooldown: float = 5 * DAY
    #: Unreachable objects older than this are dropped by a full repack (git's gc.pruneExpire,
    #: 2 weeks; Gitaly uses 10 days). None: never drop anything.
    cruft_expiration: float | None = 14 * DAY
    #: Loose refs before ``git pack-refs``, scaled by packed refs: 16 up to 10 packed refs,
    #: 32 at 100, 49 at 1,000, 65 at 10,000 (Gitaly, which scales by packed-refs bytes / 100).
    loose_refs_min: int = 16
    loose_refs_growth: float = 1.15
    #: Split commit-graph layers before the chain is rewritten as one (as ``[health]``).
    commit_graph_chain: int = 20
    #: Write changed-path Bloom filters into the commit-graph (git 2.27+; Gitaly always does):
    #: they make ``git log -- <path>`` and blame skip commits that do not touch the path.
    changed_paths: bool = True
    #: Reachability bitmaps (for clones and fetches) in bare repositories without
    #: alternates: git's repack.writeBitmaps default for bare repositories, and Gitaly.
    write_bitmaps: bool = True
    #: Keep a multi-pack-index over the packs (Gitaly; git maintenance's incremental-repack).
    multi_pack_index: bool = True
    #: A lock file older than this is stale. Gitaly: 1 h for ref and packed-refs locks.
    stale_lock_age: float = HOUR
    #: Temporary object files and directories (tmp_pack_*, tmp_obj_*, incoming-*, ...) older
    #: than this are stale. Gitaly: 24 h (7 days before 16.x); git prune: gc.pruneExpire.
    stale_temp_age: float = DAY
    #: gc.pid older than this belongs to no running gc: git gc's own limit is 12 h.
    stale_gc_pid_age: float = 12 * HOUR
    #: Dead worktrees unused for longer than this are pruned: git's gc.worktreePruneExpire
    #: (3 months). Their HEAD and index may hold the only reference to some commits.
    worktree_prune_age: float = 90 * DAY

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or value is None:
                continue
            if f.name.endswith("_growth"):
                ok, want = math.isfinite(value) and value > 1, "a finite number above 1"
            elif f.name == "geometric_factor":
                ok, want = value >= 2, "at least 2"
            elif f.name in ("untracked_packs_min", "packs_min", "commit_graph_chain"):
                ok, want = value >= 1, "at least 1"
            else:
                ok, want = math.isfinite(value) and value >= 0, "a finite number, 0 or more"
            if not ok:
                raise ValueError(f"maintenance.{f.name} is {value!r}: it must be {want}")

    def untracked_pack_limit(self, pack_bytes: int) -> int:
        """Packs outside the multi-pack-index tolerated for ``pack_bytes`` of packs."""
        return _scaled(self.untracked_packs_min, pack_bytes / MIB, self.untracked_packs_growth)

    def pack_limit(self, pack_bytes: int) -> int:
        """Packs tolerated without geometric repacking, for ``pack_bytes`` of packs."""
        return _scaled(self.packs_min, pack_bytes / MIB, self.packs_growth)

    def loose_ref_limit(self, packed_refs: int) -> int:
        """Loose refs tolerated beside ``packed_refs`` packed ones."""
        return _scaled(self.loose_refs_min, packed_refs, self.loose_refs_growth)


def _scaled(minimum: int, value: float, growth: float) -> int:
    """``max(minimum, floor(log(value) / log(growth)))``; the minimum for value <= 1."""
    if not value > 1 or not math.isfinite(value):
        return minimum
    return max(minimum, int(math.log(value) / math.log(growth)))
