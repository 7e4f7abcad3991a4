"""A repository's health verdict and the reasons for it: a pure function of its state.

``broken``: git cannot read the repository as it is (missing HEAD, corrupt packed-refs,
missing alternate; a partial clone, as custode never fetches what it lacks);
``attention``: ``custode maintain`` has work here: each of its needs (``integrity.needs``,
the rules the planner plans by) is a reason; ``ok``: nothing to do. ``info`` reasons explain
without judging: what maintenance leaves alone (a dead worktree younger than git's expiry,
garbage that is not git's own leftover, a failed automatic gc's log, work a running git
holds).

Without the git maintain runs with, a need counts only when every git custode supports
has it (``needs.every_git``): "attention" then means work for maintain whatever its git.
Like a first maintenance, the verdict has no history: the largest pack's age stands for
the time since the last full repack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from custode.base.units import counted, format_age, format_bytes
from custode.config.maintenance import MaintenancePolicy
from custode.git.runner import GitVersion
from custode.maintenance.needs import Need, Needs, every_git, needs
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


def assess(
    state: RepoState, policy: MaintenancePolicy, now: float, git: GitVersion | None = None
) -> Health:
    """``state``'s verdict under ``policy`` at ``now``, as maintain with ``git`` would plan
    (without one: as every supported git would)."""
    reasons: list[Reason] = [Reason("broken", p) for p in state.problems]

    def info(text: str) -> None:
        reasons.append(Reason("info", text))

    found = _needs(state, policy, now, git)
    reasons += (Reason("attention", _text(n, found, now)) for n in found.needs)
    for held in found.held:
        info(held)
    if state.prunable_worktrees and not any(n.kind == "prune_worktrees" for n in found.needs):
        info(counted(state.prunable_worktrees, "dead worktree"))
    if state.garbage_files:
        info(
            f"{counted(state.garbage_files, 'garbage file')} in the object store "
            f"({format_bytes(state.garbage_bytes)})"
        )
    if state.gc_log:
        info("gc.log present: git's last automatic gc failed")
    if state.borrowed_by:
        info(f"objects borrowed by {counted(len(state.borrowed_by), 'repository', 'repositories')}")
    if state.alternates:
        info(f"borrows objects from {counted(len(state.alternates), 'alternate')}")
    if state.refs == 0 and not state.problems:
        info("empty repository")
    worst = max((_RANK[r.severity] for r in reasons), default=0)
    verdict: Verdict = ("ok", "attention", "broken")[worst]
    return Health(verdict, tuple(reasons))


def _needs(s: RepoState, p: MaintenancePolicy, now: float, git: GitVersion | None) -> Needs:
    if git is not None:
        return needs(s, p, git, now)
    return every_git(lambda version: needs(s, p, version, now))


def _text(need: Need, found: Needs, now: float) -> str:
    if need.kind == "remove_stale_files":
        oldest = max(now - t.mtime for t in found.stale)
        return (
            f"{counted(len(found.stale), 'stale lock/temporary file')} "
            f"(oldest {format_age(oldest)})"
        )
    return need.why
