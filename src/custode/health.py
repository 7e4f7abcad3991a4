"""A repository's health verdict and the reasons for it: a pure function of its state.

``broken``: git cannot read the repository as it is (missing HEAD, corrupt packed-refs,
missing alternate); ``attention``: maintenance would help (thresholds come from the
``[health]`` config); ``ok``: nothing to do. ``info`` reasons explain without judging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from custode.config import HealthConfig
from custode.repostate import RepoState
from custode.units import counted, format_bytes, format_duration

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


def assess(state: RepoState, policy: HealthConfig, now: float) -> Health:
    reasons: list[Reason] = [Reason("broken", p) for p in state.problems]

    def attention(text: str) -> None:
        reasons.append(Reason("attention", text))

    if state.loose_objects > policy.loose_objects:
        attention(f"{counted(state.loose_objects, 'loose object')} (> {policy.loose_objects:,})")
    if state.packs > policy.packs:
        attention(f"{counted(state.packs, 'pack')} (> {policy.packs:,})")
    if state.loose_refs > policy.loose_refs:
        attention(f"{counted(state.loose_refs, 'loose ref')} (> {policy.loose_refs:,})")
    has_objects = state.packs > 0 or state.loose_objects > 0
    if has_objects and state.refs > 0 and not state.commit_graph:
        attention("no commit-graph")
    if state.commit_graph_chain > policy.commit_graph_chain:
        attention(
            f"commit-graph chain of {state.commit_graph_chain} layers "
            f"(> {policy.commit_graph_chain})"
        )
    stale = [t for t in state.temp_files if now - t.mtime > policy.stale_file_age]
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
