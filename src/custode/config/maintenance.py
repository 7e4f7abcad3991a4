"""The ``[maintenance]`` config section: every threshold and age the planner uses, with
its source, and the fleet runner's settings.

Defaults follow Gitaly's housekeeping (it looks after GitLab's git servers) where its
server-side choice differs from git's client-side ``gc --auto``, and git where custode
has nothing better; docs/maintenance-heuristics.md gives the sources and says where
custode differs. ``custode status`` judges repositories by the same numbers, so
"attention" there means "custode maintain has work here". Durations are seconds.

Size-scaled limits grow with the logarithm of the repository: ``max(min, log(x) /
log(growth))``, so a large repository tolerates a few more packs or loose refs before
paying for the (larger) rewrite.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BeforeValidator, Field

from custode.config.types import Duration, Section

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR
MIB = 1024 * 1024


def _never(value: object) -> object:
    return None if value == "never" else value


class MaintenancePolicy(Section):
    """Thresholds ("more than N triggers"), ages ("older than N is stale"), runner settings."""

    loose_objects: int = Field(
        1024,
        ge=0,
        description=(
            "Loose objects before they are packed. Gitaly: 1,024; git's gc.auto is 6,700, a "
            "client-side default: servers are kept better packed."
        ),
    )
    untracked_packs_min: int = Field(
        2,
        ge=1,
        description=(
            "Packs outside the multi-pack-index before a geometric repack, scaled by pack size: "
            "2 below 10 MiB, 3 at 10 MiB, 7 at 100 MiB, 11 at 1 GiB, 19 at 100 GiB (Gitaly)."
        ),
    )
    untracked_packs_growth: float = Field(
        1.8, gt=1, allow_inf_nan=False, description=("The growth base of that scaling.")
    )
    packs_min: int = Field(
        5,
        ge=1,
        description=(
            "Without geometric repacking (git < 2.32): packs before a full repack even inside the "
            "cooldown: 5 below 10 MiB, 17 at 100 MiB, 26 at 1 GiB (Gitaly before geometric "
            "repacks; git's gc.autoPackLimit is a flat 50)."
        ),
    )
    packs_growth: float = Field(
        1.3, gt=1, allow_inf_nan=False, description=("The growth base of that scaling.")
    )
    geometric_factor: int = Field(
        2,
        ge=2,
        description=(
            "git repack --geometric=<factor>: each pack at least factor times the next (Gitaly)."
        ),
    )
    full_repack_cooldown: Duration = Field(
        5 * DAY,
        description=(
            "A large repository's full repack (for a missing bitmap, expiring cruft, or packs "
            "that serve clones badly) runs at most this often "
            "(Gitaly: 5 days); with none on record, the age of the largest pack stands for the "
            "last one. Age alone calls for none: see small_repository."
        ),
    )
    cruft_expiration: Annotated[Duration | None, BeforeValidator(_never)] = Field(
        14 * DAY,
        description=(
            "Unreachable objects older than this are dropped by a full repack (git's "
            'gc.pruneExpire, 2 weeks; Gitaly: 10 days); "never" keeps them forever.'
        ),
    )
    loose_refs_min: int = Field(
        16,
        ge=0,
        description=(
            "Loose refs before git pack-refs, scaled by packed refs: 16 up to 10 packed refs, "
            "32 at 100, 49 at 1,000, 65 at 10,000 (Gitaly scales by packed-refs bytes / 100)."
        ),
    )
    loose_refs_growth: float = Field(
        1.15, gt=1, allow_inf_nan=False, description=("The growth base of that scaling.")
    )
    commit_graph_chain: int = Field(
        20, ge=1, description=("Split commit-graph layers before the chain is rewritten as one.")
    )
    changed_paths: bool = Field(
        True,
        description=(
            "Write changed-path Bloom filters into the commit-graph (git 2.27+; Gitaly does): "
            "git log -- <path> and blame skip commits that do not touch the path."
        ),
    )
    write_bitmaps: bool = Field(
        True,
        description=(
            "Reachability bitmaps (for clones and fetches) in bare repositories without "
            "alternates: git's repack.writeBitmaps default for bare repositories, and Gitaly."
        ),
    )
    multi_pack_index: bool = Field(
        True,
        description=(
            "Keep a multi-pack-index over the packs (Gitaly; git maintenance's incremental-repack)."
        ),
    )
    stale_lock_age: Duration = Field(
        HOUR,
        description=(
            "A lock file older than this is stale (Gitaly: 1 h for ref and packed-refs locks)."
        ),
    )
    stale_temp_age: Duration = Field(
        DAY,
        description=(
            "Temporary object files (tmp_pack_*, tmp_obj_*, ...) older than this are stale "
            "(Gitaly: 24 h)."
        ),
    )
    stale_gc_pid_age: Duration = Field(
        12 * HOUR,
        description=("gc.pid older than this belongs to no running gc (git gc's own limit: 12 h)."),
    )
    worktree_prune_age: Duration = Field(
        90 * DAY,
        description=(
            "Dead worktrees unused for longer than this are pruned (git's "
            "gc.worktreePruneExpire): their HEAD and index may hold the only reference to "
            "some commits."
        ),
    )
    revisit_after: Duration = Field(
        7 * DAY,
        description=(
            "A repository unchanged since its last successful maintenance is skipped, until "
            "this long has passed (then stale files and expired cruft are looked at again)."
        ),
    )
    jobs: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Repositories maintained at the same time; 0: one per CPU (the governor still "
            "holds the CPU below cpu_share)."
        ),
    )
    cpu_share: float = Field(
        0.7,
        ge=0.05,
        le=1.0,
        description=("Start no further repository while the host's CPU use is above this share."),
    )
    window: Duration | None = Field(
        None,
        description=(
            "The nightly window (e.g. 10m): the night's work is planned from predicted costs "
            "to end within it, full repacks that do not fit wait for a later night (those "
            "waiting first), and no repository starts that would overrun it. Unset: no window."
        ),
    )
    memory_share: float = Field(
        0.25,
        gt=0,
        le=1.0,
        description=(
            "The share of the host's memory that every repack running at the same time may "
            "use together: each of the jobs gets memory_share * memory / jobs, split into "
            "pack-objects' delta window (per thread) and delta cache (git gc sets no bound)."
        ),
    )
    pack_window_memory: int = Field(
        0,
        ge=0,
        description=(
            "A cap on the delta-window memory per pack-objects thread, in bytes "
            "(--window-memory); 0: chosen from the repository's size and memory_share."
        ),
    )
    pack_threads: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "A cap on pack-objects threads per repack; 0: half the CPUs, at most 4, fewer when "
            "memory_share leaves too little memory for each."
        ),
    )
    small_repository: int = Field(
        16 * MIB,
        ge=0,
        description=(
            "Packs and loose objects below this many bytes are repacked whole whenever any "
            "repack is due: it costs what a geometric repack costs (a few tens of ms)."
        ),
    )

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
