"""What one repository's backup does, decided from facts alone: the one rule that both the
backup (``backup/engine.py``, which carries it out) and ``custode backup --dry-run`` (which
prints it) follow, so that the plan says what happens.

No git runs and no store is read here: the caller gathers the facts (the parent manifest,
resolved; whether refs, kept files, LFS objects and the ``shallow`` file are the same as
in it) and the policy (``backup.full_every``, ``backup.full_after``). The decision:

* ``unchanged``: same refs, files and LFS objects as the parent → no new file; the parent
  stands as the latest backup.
* ``in-place``: same refs, but kept files or LFS objects changed → a manifest in the
  parent's place (the chain grows only when refs change).
* ``incremental``: refs changed → a bundle of what is new on the parent.
* ``new-chain``: no usable parent (none, ``--full``, another object format or kind), the
  ``shallow`` file changed, or the chain is ``full_every`` links long or its first bundle
  ``full_after`` old. It builds on the base repository it shares history with when there
  is one (``backup/plan.py``, or the base its current chain builds on), else it is a full
  bundle. Whether that base's backup is usable after all is checked by the caller (it
  reads the store and runs git), which then drops the base (``without_base``).

Every reason carries its numbers ("chain of 30 links ≥ full_every 30").

``predict_pack`` tells, from the scan's counts only, whether a full bundle will likely be
copied from the repository's one pack or generated (``backup/bundle.py`` decides for sure,
with a walk of the refs, when the bundle is made).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from custode.backup.manifest import RepoManifest, id_time, repo_prefix
from custode.backup.plan import Sharing
from custode.scan.repostate import RepoState

Action = Literal["unchanged", "in-place", "incremental", "new-chain"]
NO_PARENT = "no earlier backup in the store"


@dataclass(frozen=True)
class Facts:
    """What is known of one repository when its backup is decided."""

    parent: RepoManifest | None  # its latest usable backup, resolved; None: there is none
    no_parent: str = NO_PARENT  # why there is none ("--full", another object format...)
    same_refs: bool = False  # refs and shallow file as the parent's (its refs digest)
    same_files: bool = False  # kept files (config, hooks, info) as the parent's
    same_lfs: bool = False  # the same set of LFS objects
    same_shallow: bool = False
    shallow: bool = False  # the repository is shallow now: a new chain builds on nothing


@dataclass(frozen=True)
class Policy:
    full_every: int = 30  # links in a chain before a new one starts
    full_after: float = 30 * 86400.0  # seconds since the chain's first bundle


@dataclass(frozen=True)
class Decision:
    """What the backup of one repository does, on what, and why (with numbers)."""

    action: Action
    parent: str = ""  # the backup id it stands on, takes the place of, or follows ("" none)
    base: Sharing | None = None  # new chain: the repository whose latest backup it builds on
    why: str = ""

    @property
    def full(self) -> bool:
        """A full bundle: a new chain built on nothing."""
        return self.action == "new-chain" and self.base is None

    @property
    def on(self) -> str:
        """What it is built on, as the plan prints it."""
        if self.action == "new-chain":
            return f"{self.base.base} (base)" if self.base else ""
        return f"backup {self.parent}" if self.parent else ""

    def without_base(self, why: str) -> Decision:
        """The base's backup turned out unusable: a full bundle instead."""
        if self.base is None:
            return self
        name = self.base.base or "its chain's base"
        return replace(self, base=None, why=f"{self.why}; a full bundle, not on {name}: {why}")


def decide(facts: Facts, policy: Policy, now: datetime, base: Sharing | None = None) -> Decision:
    """The decision for one repository. ``base``: the repository a new chain of this one
    would build on (the fleet plan's, else the one its current chain builds on) with the
    key of that one's latest backup; ignored unless a new chain starts."""
    parent = facts.parent
    if parent is None:
        return _new_chain(facts.no_parent or NO_PARENT, facts, base)
    ident = parent.backup_id
    if facts.same_refs and facts.same_files and facts.same_lfs:
        return Decision(
            "unchanged", ident, None, f"same refs, files and LFS objects as backup {ident}"
        )
    if facts.same_refs:
        what = [w for same, w in ((facts.same_files, "kept files (config, hooks, info)"),
                                  (facts.same_lfs, "LFS objects")) if not same]  # fmt: skip
        why = f"only {' and '.join(what)} changed: in the place of backup {ident}"
        return Decision("in-place", ident, None, why)
    if not facts.same_shallow:
        return _new_chain(f"shallow file changed since backup {ident}", facts, base)
    long = chain_too_long(parent, policy, now)
    if long:
        return _new_chain(long, facts, base)
    links, age = chain_length(parent), _age(parent, now)
    return Decision("incremental", ident, None, (
        f"refs changed since backup {ident}; chain of {links} link{'s' * (links != 1)} "
        f"< full_every {policy.full_every}, first bundle {_span(age)} old "
        f"< full_after {_span(policy.full_after)}"))  # fmt: skip


def chain_length(parent: RepoManifest) -> int:
    """The links of a chain, counted as a new chain's rule counts them: bundles, or
    manifests each adding a refs delta, whichever is more — the repository's own only: a
    fork's restore reads its base's chain (bounded by the base's own rule) and its own."""
    own = repo_prefix(parent.host, parent.repository)
    links = sum(1 for link in parent.chain if link.bundle.key.startswith(own))
    return max(links, sum(1 for a in parent.ancestors if a.key.startswith(own)) + 1)


def chain_too_long(parent: RepoManifest, policy: Policy, now: datetime) -> str:
    """Why a new chain starts instead of a link on ``parent``'s ("" when it need not):
    ``full_every`` links long, or its first bundle ``full_after`` old; restores stay
    bounded."""
    if not parent.chain:
        return f"the chain of backup {parent.backup_id} holds no bundle"
    links = chain_length(parent)
    if links >= policy.full_every:
        return f"chain of {links} links ≥ full_every {policy.full_every}"
    age = _age(parent, now)
    if age >= policy.full_after:
        return f"first bundle {_span(age)} old ≥ full_after {_span(policy.full_after)}"
    return ""


def _new_chain(why: str, facts: Facts, base: Sharing | None) -> Decision:
    if base is None or not base.key:
        return Decision("new-chain", "", None, f"{why}: a full bundle")
    if facts.shallow:  # excluding a base's tips would exclude history a shallow one lacks
        return Decision("new-chain", "", None, f"{why}: a full bundle (a shallow repository "
                        f"builds on no base, not on {base.base})")  # fmt: skip
    return Decision("new-chain", "", base, f"{why}: on {base.base}'s backup ({base.why})")


def _age(parent: RepoManifest, now: datetime) -> float:
    """How old the chain's first bundle of the repository's own is (a fork's chain
    starts on its base's, whose age is the base's concern)."""
    own = repo_prefix(parent.host, parent.repository)
    first = next((link for link in parent.chain if link.bundle.key.startswith(own)),
                 parent.chain[0])  # fmt: skip
    return (now - id_time(first.backup_id)).total_seconds()


def _span(seconds: float) -> str:
    """A duration as the reasons print it: days, else hours, else seconds."""
    for unit, size in (("day", 86400.0), ("hour", 3600.0)):
        if abs(seconds) >= size:
            n = f"{seconds / size:.1f}".removesuffix(".0")
            return f"{n} {unit}{'s' * (n != '1')}"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class Prediction:
    """How a new bundle's pack will likely be made: "copy", "generate" or "" (no bundle)."""

    method: str
    why: str


def predict_pack(decision: Decision, state: RepoState) -> Prediction:
    """A prediction, from the scan's counts only (``backup/bundle.py``'s rule without its
    walk): only a full bundle can be copied, and only from a repository whose objects are
    all in one pack; whether that pack holds exactly what the refs reach is known when the
    bundle is made."""
    if decision.action in ("unchanged", "in-place"):
        return Prediction("", "no new bundle")
    if not state.packs and not state.loose_objects:
        return Prediction("", "no object at all: no bundle")
    if not decision.full:
        on = "its base's backup" if decision.action == "new-chain" else "the parent"
        return Prediction("generate", f"only the objects new since {on}")
    why = _not_one_pack(state)
    if why:
        return Prediction("generate", why)
    return Prediction("copy", f"if its one pack ({state.packed_objects:,} objects, 0 loose) "
                      "is exactly the refs' closure, else generate")  # fmt: skip


def _not_one_pack(state: RepoState) -> str:
    """Why the repository's objects are not all in one plain pack ("" when they are), as
    ``backup/bundle.py`` says it when it looks."""
    if state.alternates:
        return "objects/info/alternates borrows objects from another repository"
    packs, cruft, loose = state.packs, state.cruft_packs, state.loose_objects
    if loose or packs != 1:
        parts = [f"{packs} pack{'s' * (packs != 1)}"]
        parts += [f"{cruft} cruft"] if cruft else []
        parts += [f"{loose:,} loose object{'s' * (loose != 1)}"] if loose else []
        return " and ".join(parts)
    return "its one pack is a cruft pack" if cruft else ""
