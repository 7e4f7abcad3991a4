"""Every borrower of a repository, before anything in it expires.

Alternates point from the borrower to the pool, so a pool cannot tell who borrows from it;
the fleet scan sees only the repositories it was asked to. Before unreachable objects
expire anywhere, custode therefore looks wider and remembers:

* **the sweep** (``discovery.sweep_alternates``) reads the alternates of every git
  directory under every root given or configured, excluded directories and all;
* **memory**: every (borrower, lender) pair a sweep saw is kept in the history database;
  a remembered borrower out of this sweep's sight is read again where it lives. If it
  still borrows, it is a borrower; if it is gone (no such directory) or borrows elsewhere,
  it is forgotten; if it cannot be read, custode cannot be sure;
* **when custode cannot be sure** (a directory or alternates file the sweep could not
  read, a configured root that is missing, a remembered borrower that cannot be read),
  the repositories concerned keep every unreachable object, and the plan says why.

A borrower outside every root that no sweep ever saw stays invisible: that is the limit,
stated in docs/maintenance-heuristics.md.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from custode.scan.discovery import AlternatesSweep, read_alternates, sweep_alternates
from custode.scan.repostate import RepoState


@dataclass
class Borrowers:
    """Who borrows from whom (lender object directory → borrower git dirs), and doubts."""

    of: dict[str, set[str]] = field(default_factory=dict)
    everywhere: list[str] = field(default_factory=list)  # doubts about every repository
    unsure_of: dict[str, list[str]] = field(default_factory=dict)  # doubts about one lender
    seen: set[tuple[str, str]] = field(default_factory=set)  # (borrower, lender) to remember
    gone: set[tuple[str, str]] = field(default_factory=set)  # (borrower, lender) to forget

    def add(self, borrower: str, lender: str) -> None:
        self.of.setdefault(lender, set()).add(borrower)


def find(roots: Iterable[Path], remembered: set[tuple[str, str]]) -> Borrowers:
    """Sweep ``roots`` (each checked to exist) and settle every ``remembered`` pair."""
    out = Borrowers()
    present = []
    for root in roots:
        if root.is_dir():
            present.append(root)
        else:
            out.everywhere.append(f"root {root} is missing, a borrower may live there")
    sweep: AlternatesSweep = sweep_alternates(present)
    out.everywhere += sweep.unsure
    for borrower, lender in sweep.links:
        out.add(borrower, lender)
    out.seen = set(sweep.links)
    for borrower, lender in sorted(remembered - sweep.links):
        _settle(out, borrower, lender)
    return out


def _settle(out: Borrowers, borrower: str, lender: str) -> None:
    """A remembered borrower the sweep did not see: read it where it lives."""
    try:
        os.stat(os.path.join(borrower, "objects"))
        lenders = read_alternates(borrower)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            out.gone.add((borrower, lender))  # deleted (or moved outside every root)
            return
        why = f"remembered borrower {borrower} cannot be read ({exc.strerror})"
        out.unsure_of.setdefault(lender, []).append(why)
        return
    if lender in lenders:
        out.add(borrower, lender)  # out of this sweep's sight, still borrowing
        out.seen.add((borrower, lender))
    else:
        out.gone.add((borrower, lender))


def apply(state: RepoState, borrowers: Borrowers, names: dict[str, str]) -> tuple[RepoState, str]:
    """``state`` with every borrower found (``names``: resolved git dir → relative name of
    the repositories scanned; others are named by path), and why its unreachable objects
    must be kept though no borrower is known ('' when custode is sure)."""
    lender = os.path.realpath(os.path.join(state.git_dir, "objects"))
    found = borrowers.of.get(lender, set()) - {os.path.realpath(state.git_dir)}
    everyone = set(state.borrowed_by) | {names.get(b, b) for b in found}
    if everyone != set(state.borrowed_by):
        state = replace(state, borrowed_by=tuple(sorted(everyone)))
    doubts = borrowers.unsure_of.get(lender, []) + borrowers.everywhere
    if not doubts:
        return state, ""
    more = f" (and {len(doubts) - 1} more)" if len(doubts) > 1 else ""
    return state, f"custode cannot be sure it knows every borrower: {doubts[0]}{more}"
