"""Reading the records of a store — snapshots, manifests, locks, decrypted refs — as
hostile input, within bounds of size, nesting and number.

A store may be damaged or forged (DESIGN.md, threat model), so a record is read whole only
up to the cap of its kind (refused by its size before it is read, ``Store.get_bytes``) and
parsed only within bounds: nesting no deeper than ``MAX_DEPTH`` (checked on the text
before parsing, since Python's decoder recurses and a 200,000-deep array ends in
RecursionError), integers of at most ``MAX_DIGITS`` digits (the decoder's own limit is
4,300, and a 4,000-digit one is already absurd), no NaN or Infinity. Each refusal is an
``IntegrityError`` naming the record, so a caller reports it against that one record.
Fields are then validated by type and range by their reader (``manifest._Reader``).

The caps are generous on purpose: a record custode wrote must always read back.
"""

from __future__ import annotations

import json
from typing import Any

from custode.backup.store import Store
from custode.base.jsondepth import too_deep
from custode.errors import IntegrityError

# ~60 bytes a repository: a snapshot of two million repositories
SNAPSHOT_LIMIT = 128 << 20
# ~200 bytes a chain link or LFS object: over a million of them in one manifest
MANIFEST_LIMIT = 256 << 20
LOCK_LIMIT = 64 << 10  # a few hundred bytes are written
# stored (encrypted) refs and kept files, held in memory when restored: ~100 bytes a ref
# (ten million refs); hooks and config are at most 16 MiB each (``extras.MAX_FILE``)
REFS_LIMIT = 1 << 30
FILES_LIMIT = 1 << 30
MAX_DEPTH = 16  # custode's records nest 4 deep
MAX_DIGITS = 20  # 2**64 has 20 digits; no count or size of custode's comes near it


class _Refused(Exception):
    """A value the decoder met that no record holds (raised from its hooks)."""


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        raise _Refused(f"holds a number of {digits} digits")
    return int(text)


def _constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not JSON")


def load_json(data: bytes, what: str) -> Any:
    """``data`` parsed as JSON within the bounds above; ``what`` names it in errors
    ("snapshot hosts/h/snapshots/x.json")."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError(
            f"{what} is not UTF-8 (at byte {exc.start}); the file is damaged"
        ) from None
    if too_deep(data, MAX_DEPTH):
        raise IntegrityError(
            f"{what} nests deeper than {MAX_DEPTH} levels, which no record does; "
            "the file is damaged or forged"
        )
    try:
        return json.loads(text, parse_int=_int, parse_constant=_constant)
    except _Refused as exc:
        raise IntegrityError(f"{what} {exc}; the file is damaged or forged") from None
    except RecursionError:  # unbalanced brackets, opened too deep; never a traceback
        raise IntegrityError(
            f"{what} nests deeper than {MAX_DEPTH} levels, which no record does; "
            "the file is damaged or forged"
        ) from None
    except ValueError as exc:  # JSONDecodeError, and any other conversion the decoder makes
        raise IntegrityError(f"{what} is not valid JSON ({exc}); the file is damaged") from None


def load_object(data: bytes, what: str) -> dict[str, Any]:
    """``load_json`` of a record that must be a JSON object."""
    body = load_json(data, what)
    if not isinstance(body, dict):
        raise IntegrityError(f"{what} is not a JSON object; the file is damaged")
    return body


def read_object(store: Store, key: str, limit: int, what: str) -> dict[str, Any]:
    """The record at ``key``, at most ``limit`` bytes, parsed as a JSON object."""
    return load_object(store.get_bytes(key, limit), what)
