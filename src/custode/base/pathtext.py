"""File names that are not UTF-8, carried losslessly and shown escaped.

Paths are bytes on Linux; Python decodes them with ``surrogateescape`` (``os.fsdecode``), so
an undecodable byte 0xE9 of ``café.git`` written in Latin-1 is the lone surrogate U+DCE9 in a
``str``. That ``str`` round-trips to the exact bytes through every ``os`` call, but a strict
UTF-8 encode of it fails: a JSON file, SQLite, the Prometheus text format and a terminal that
is not in the C locale all raised ``UnicodeEncodeError`` and stopped the whole fleet.

One convention everywhere, so nothing is lost and nothing is guessed:

- stored and machine-read (JSON files and output, manifests, the history database): the
  surrogate itself, as JSON's ``\\udce9`` escape or a SQLite BLOB of the raw bytes; reading
  gives back the same ``str``, hence the same bytes on disk;
- shown to a person (tables, messages, logs, metric labels): ``caf\\xe9.git``, the byte
  backslash-escaped as ``ls -b`` does (not reversible when a name holds a backslash: it is
  for reading, never for finding the file again).
"""

from __future__ import annotations

import codecs
import os
import sys

__all__ = [
    "DISPLAY_ERRORS",
    "display",
    "escape_streams",
    "is_path_text",
    "json_bytes",
    "sql_value",
]

#: The codec error handler that writes an undecodable byte as ``\xe9`` (for text streams).
DISPLAY_ERRORS = "custode-display"
_JSON_ERRORS = "custode-json"


def _escaped_bytes(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    out = []
    for char in bad:
        code = ord(char)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
    return "".join(out), exc.end


def _json_escape(exc: UnicodeError) -> tuple[str, int]:
    """Inside a JSON string a lone surrogate is written as its ``\\uXXXX`` escape, which JSON
    allows; only those ``os.fsdecode`` makes (U+DC80..U+DCFF) are accepted, any other is not
    a file name and stays an error."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    if not all(0xDC80 <= ord(char) <= 0xDCFF for char in bad):
        raise exc
    return "".join(f"\\u{ord(char):04x}" for char in bad), exc.end


codecs.register_error(DISPLAY_ERRORS, _escaped_bytes)
codecs.register_error(_JSON_ERRORS, _json_escape)


def display(text: str) -> str:
    """``text`` for a person: each byte that is not UTF-8 shown as ``\\xNN``."""
    if text.isascii():
        return text
    return text.encode("utf-8", DISPLAY_ERRORS).decode("utf-8")


def is_path_text(text: str) -> bool:
    """True if ``text`` is some file name's bytes as ``os.fsdecode`` gives them."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def json_bytes(document: str) -> bytes:
    """UTF-8 of a JSON document made with ``ensure_ascii=False``: a non-UTF-8 file name's
    bytes become ``\\udcNN`` escapes, so ``json.loads`` gives the same ``str`` back and a
    document without such a name is byte for byte what a strict encode gives."""
    return document.encode("utf-8", _JSON_ERRORS)


def sql_value(text: str) -> str | bytes:
    """The SQLite parameter for ``text``: itself, or the raw bytes (a BLOB) when it carries
    bytes that are not UTF-8, which SQLite's TEXT cannot hold. Every name that was stored
    before keeps its TEXT form, so its history is found again."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text) if is_path_text(text) else text.encode("utf-8", "replace")
    return text


def sql_row(_cursor: object, row: tuple[object, ...]) -> tuple[object, ...]:
    """A row factory: a BLOB (only ever a name stored by ``sql_value``) back to its ``str``."""
    if not any(isinstance(value, bytes) for value in row):
        return row
    return tuple(os.fsdecode(v) if isinstance(v, bytes) else v for v in row)


def escape_streams() -> None:
    """Make stdout and stderr show non-UTF-8 bytes escaped rather than fail (or write raw
    bytes a terminal shows as '?')."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:  # a replaced stream (a test's capture) is left alone
            reconfigure(errors=DISPLAY_ERRORS)
