"""A repository's health verdict and the reasons for it: a pure function of its state.

``broken``: git cannot read the repository as it is (missing HEAD, corrupt packed-refs,
missing alternate; a partial clone, as custode never fetches what it lacks);
``attention``: maintenance would help, by the thresholds of the ``[maintenance]`` section
that ``custode maintain`` plans with; ``ok``: nothing to do. ``info`` reasons explain
without judging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from custode.base.units import counted, format_bytes, format_duration
from custode.config.maintenance import MaintenancePolicy
from custode.git.leftovers import stale_age
from custode.scan.repostate import RepoState

Verdict = Literal["ok", "attention", "broken"]
Severity = Literal["info", "attention", "broken"]
_RANK = {"ok": 0, "info": 0, "attention": 1, "broken": 2}


@dataclass(frozen=True)
class Reason:
    severity: Severity
    text: str


@dataclass(frozen=True)
class Health:
    verdict: Verdict
    reasons: tuple[Reason, ...]


def assess(state: RepoState, policy: MaintenancePolicy, now: float) -> Health:
    reasons: list[Reason] = [Reason("broken", p) for p in state.problems]

    def attention(text: str) -> None:
        reasons.append(Reason("attention", text))

    for text in _needs_maintenance(state, policy):
        attention(text)
    stale = [t for t in state.temp_files if now - t.mtime > stale_age(policy, t.path)]
    if stale:
        oldest = max(now - t.mtime for t in stale)
        attention(
            f"{counted(len(stale), 'stale lock/temporary file')} (oldest {format_duration(oldest)})"
        )
    if state.garbage_files:
        attention(
            f"{counted(state.garbage_files, 'garbage file')} in the object store "
            f"({format_bytes(state.garbage_bytes)})"
        )
    if state.prunable_worktrees:
        attention(f"{counted(state.prunable_worktrees, 'dead worktree')}")
    if state.gc_log:
        attention("gc.log present: git's last automatic gc failed")
    if state.borrowed_by:
        borrowers = counted(len(state.borrowed_by), "repository", "repositories")
        reasons.append(Reason("info", f"objects borrowed by {borrowers}"))
    if state.alternates:
        reasons.append(
            Reason("info", f"borrows objects from {counted(len(state.alternates), 'alternate')}")
        )
    if state.refs == 0 and not state.problems:
        reasons.append(Reason("info", "empty repository"))
    worst = max((_RANK[r.severity] for r in reasons), default=0)
    verdict: Verdict = ("ok", "attention", "broken")[worst]
    return Health(verdict, tuple(reasons))


def _needs_maintenance(state: RepoState, policy: MaintenancePolicy) -> list[str]:
    """What in the object store and refs crosses the ``[maintenance]`` thresholds."""
    found: list[str] = []
    if state.loose_objects > policy.loose_objects:
        found.append(f"{counted(state.loose_objects, 'loose object')} (> {policy.loose_objects:,})")
    if state.multi_pack_index:
        packs, where = state.packs - state.midx_packs, " outside the multi-pack-index"
        limit = policy.untracked_pack_limit(state.pack_bytes)
    else:
        packs, where = state.packs - state.cruft_packs - state.kept_packs, ""
        limit = policy.pack_limit(state.pack_bytes)
    if packs > limit:
        found.append(
            f"{counted(packs, 'pack')}{where} (> {limit:,} for {format_bytes(state.pack_bytes)})"
        )
    loose_refs = state.loose_refs - state.symbolic_refs
    if loose_refs > (limit := policy.loose_ref_limit(state.packed_refs)):
        found.append(f"{counted(loose_refs, 'loose ref')} (> {limit:,})")
    has_objects = state.packs > 0 or state.loose_objects > 0
    if has_objects and state.refs > 0 and not state.commit_graph:
        found.append("no commit-graph")
    if state.commit_graph_chain > policy.commit_graph_chain:
        found.append(
            f"commit-graph chain of {state.commit_graph_chain} layers "
            f"(> {policy.commit_graph_chain})"
        )
    return found
