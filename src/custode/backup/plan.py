"""Which repositories of a fleet share history, so that it is stored once.

A fork (or a repository borrowing from another's objects through alternates: a GitLab
object pool's member) shares most of its history with another repository of the fleet.
Its backup then builds on that repository's latest backup instead of starting a chain of
its own: the shared objects are prerequisites, only its own objects are stored
(``backup/engine.py``). This module only decides who builds on whom, from what is known
before any pack is made; it runs no git and reads no store.

The rule, for a repository that starts a chain tonight (its first backup into the store,
or every one with ``backup --full``; a fork whose chain grew too long starts the next one
on the same base, ``backup/engine.py``):

* it borrows from a repository of the fleet (``objects/info/alternates`` names that
  repository's object directory) → it builds on that one;
* else the fleet repository with which it shares the most tips (object ids of refs: a
  shared commit means its whole history is shared), if they share at least ``MIN_SHARED``
  tips and at least ``MIN_FRACTION`` of its own → it builds on that one.

A base never builds on another (depth one: a restore reads at most two chains, each
bounded by ``backup.full_every``). Repositories that already have a chain of their own
are bases as they are; those starting a chain are taken upstream first (borrowers last,
then the one most others could build on, then most tips shared with others, then fewest
of their own, then by name), each building
on the base it shares most tips with, or becoming a base itself. So the repository forks
were made from is their base, and a base stays one from night to night.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MIN_SHARED = 1
MIN_FRACTION = 0.5


@dataclass(frozen=True)
class Known:
    """What the plan knows of one repository of the fleet."""

    repository: str
    tips: frozenset[str]
    borrows: str = ""  # the fleet repository whose objects it borrows, if any
    starts_chain: bool = False  # its next backup starts a chain (a base would help)
    is_fork: bool = False  # its current chain builds on another repository's


@dataclass(frozen=True)
class Sharing:
    base: str  # the repository built on
    why: str  # with numbers: "borrows its objects" / "shares 9 of its 10 tips"
    key: str = ""  # the manifest key of its latest backup (set once it is known)


def share(fleet: Mapping[str, Known]) -> dict[str, Sharing]:
    """For each repository that starts a chain and shares history with another of the
    fleet: the repository it builds on, and why.

    Repositories with a chain of their own (not a fork's) are bases already; those
    starting a chain are taken most tips first: each builds on the base it shares most
    with, or becomes a base itself."""
    bases = {r for r, k in fleet.items() if not k.starts_chain and not k.is_fork}
    by_tip: dict[str, set[str]] = {}
    for r in bases:
        for tip in fleet[r].tips:
            by_tip.setdefault(tip, set()).add(r)
    holders: dict[str, set[str]] = {}
    for k in fleet.values():
        for tip in k.tips:
            holders.setdefault(tip, set()).add(k.repository)
    chosen: dict[str, Sharing] = {}
    starters = [k for k in fleet.values() if k.starts_chain]
    for k in sorted(starters, key=lambda k: _upstream_first(k, fleet, holders)):
        found = _best(k, bases, by_tip)
        if found is not None:
            chosen[k.repository] = found
            continue
        bases.add(k.repository)
        for tip in k.tips:
            by_tip.setdefault(tip, set()).add(k.repository)
    return chosen


def _upstream_first(
    k: Known, fleet: Mapping[str, Known], holders: dict[str, set[str]]
) -> tuple[bool, int, int, int, str]:
    """The order starters are taken in: borrowers after what they borrow from; then the
    one most others could build on (an upstream mirror with hundreds of refs of its own
    still serves every fork made from it); then most tips shared with others, then fewest
    of its own (the upstream a fork was made from has nothing the forks lack)."""
    together: dict[str, int] = {}
    for tip in k.tips:
        for other in holders[tip]:
            if other != k.repository:
                together[other] = together.get(other, 0) + 1
    serves = sum(1 for other, n in together.items() if _enough(n, fleet[other]))
    shared = sum(1 for tip in k.tips if len(holders[tip]) > 1)
    return (bool(k.borrows), -serves, -shared, len(k.tips) - shared, k.repository)


def _enough(shared: int, k: Known) -> bool:
    """Whether ``k`` shares enough of its tips to build on another."""
    return shared >= MIN_SHARED and shared >= MIN_FRACTION * len(k.tips)


def _best(k: Known, bases: set[str], by_tip: dict[str, set[str]]) -> Sharing | None:
    if k.borrows and k.borrows in bases:
        return Sharing(k.borrows, "borrows its objects (alternates)")
    counts: dict[str, int] = {}
    for tip in k.tips:
        for other in by_tip.get(tip, ()):
            counts[other] = counts.get(other, 0) + 1
    if not counts:
        return None
    other, shared = max(counts.items(), key=lambda kv: (kv[1], [-ord(c) for c in kv[0]]))
    if not _enough(shared, k):
        return None
    return Sharing(other, f"shares {shared} of its {len(k.tips)} tips")
