"""The content of a stored (encrypted) refs file: every ref, or only what changed.

A chain's first backup stores the repository's refs whole: ``{"head", "refs", "symrefs"}``
(name -> object id; symbolic refs with their targets; HEAD). A later backup whose parent's
refs this machine still knows exactly (``backup/refscache.py``) stores only the change:
``{"delta": 1, "head", "symrefs", "set": {name: oid}, "delete": [name]}`` — refs added or
moved, refs deleted; HEAD and the symbolic refs whole (a handful). One commit pushed to a
10,000-ref repository then stores one name, not ten thousand. A restore applies the deltas
in chain order on top of the last whole refs file (``apply``).

Decrypted refs are read as hostile as any store file: bounded (``records``), every name a
valid ref name, every id well formed, HEAD a ref or an id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from custode.backup.bundle import Refs
from custode.backup.manifest import canonical
from custode.backup.records import load_object
from custode.backup.roots import valid_ref_name
from custode.errors import IntegrityError
from custode.git.refsnapshot import SYMREF_PREFIX

_OID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass(frozen=True)
class RefsDelta:
    """What changed in a repository's refs since its parent backup."""

    head: str
    symrefs: dict[str, str]
    set: dict[str, str] = field(default_factory=dict)  # added or moved: name -> object id
    delete: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"delta": 1, "head": self.head, "symrefs": self.symrefs, "set": self.set,
                "delete": list(self.delete)}  # fmt: skip


def diff(old: Refs, new: Refs) -> RefsDelta:
    """The delta that turns ``old`` into ``new``."""
    moved = {name: oid for name, oid in new.refs.items() if old.refs.get(name) != oid}
    gone = tuple(sorted(name for name in old.refs if name not in new.refs))
    return RefsDelta(new.head, dict(new.symrefs), moved, gone)


def apply(base: Refs, delta: RefsDelta) -> Refs:
    refs = {name: oid for name, oid in base.refs.items() if name not in set(delta.delete)}
    refs.update(delta.set)
    return Refs(delta.head, refs, dict(delta.symrefs))


def changed(old: Refs, new: Refs) -> dict[str, str]:
    """The refs ``new`` adds or moves: what an incremental bundle's header lists."""
    return {name: oid for name, oid in new.refs.items() if old.refs.get(name) != oid}


def encode(content: Refs | RefsDelta) -> bytes:
    return canonical(content.to_json()) + b"\n"


def decode(data: bytes, key: str) -> Refs | RefsDelta:
    """The decrypted refs file ``key``: whole refs or a delta, every field validated."""
    body = load_object(data, f"{key} (decrypted)")
    if body.get("delta") is None:
        refs = Refs.from_json(body)
        _check(key, refs.head, [*refs.refs, *refs.symrefs, *refs.symrefs.values()],
               refs.refs.values())  # fmt: skip
        return refs
    head, symrefs, moved, gone = (body.get(k) for k in ("head", "symrefs", "set", "delete"))
    if (
        body.get("delta") != 1
        or not isinstance(head, str)
        or not isinstance(symrefs, dict)
        or not isinstance(moved, dict)
        or not isinstance(gone, list)
        or not all(isinstance(v, str) for v in [*symrefs.values(), *moved.values(), *gone])
    ):
        raise IntegrityError(f"{key}: the refs delta is malformed (head, symrefs, set, delete)")
    delta = RefsDelta(head, {str(k): v for k, v in symrefs.items()},
                      {str(k): v for k, v in moved.items()}, tuple(gone))  # fmt: skip
    _check(key, head, [*moved, *gone, *symrefs, *symrefs.values()], moved.values())
    return delta


def _check(key: str, head: str, names: list[str], oids: Iterable[str]) -> None:
    if head.startswith(SYMREF_PREFIX):
        names = [*names, head[len(SYMREF_PREFIX) :]]
    elif head and not _OID.match(head):
        raise IntegrityError(f"{key}: HEAD is neither a ref nor an object id")
    bad = [n for n in names if not valid_ref_name(n)]
    if bad:
        raise IntegrityError(f"{key}: refs hold an invalid name: {bad[0]!r}")
    if any(not _OID.match(oid) for oid in oids):
        raise IntegrityError(f"{key}: refs hold a malformed object id")
