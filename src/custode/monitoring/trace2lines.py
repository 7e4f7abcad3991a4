"""One trace2 line, within bounds: cut from a connection's byte stream, then parsed.

Anything that can connect to the socket can write to it, so a line is hostile input:

* ``Framer`` cuts a connection's bytes into lines of at most ``max_line`` bytes without
  ever holding more than that of one line: the rest of a longer line is read and thrown
  away up to its newline. A line that was still incomplete when the connection closed is
  truncated (git was killed mid-write).
* ``parse_event`` accepts UTF-8 JSON objects only (``json.loads`` on bytes would guess
  UTF-16 or UTF-32), of at most ``MAX_DEPTH`` levels of nesting, checked before parsing:
  the C parser recurses once per level and a 200,000-deep line ended in ``RecursionError``,
  which killed the old parser thread (and with a raised recursion limit it would overflow
  a thread's C stack). ``RecursionError`` is still caught, as a last guard.

Every refusal is a ``Rejected`` with one of ``REASONS``, counted by the listener.
"""

from __future__ import annotations

import json
from typing import Any

from custode.base.jsondepth import too_deep

__all__ = ["MAX_DEPTH", "REASONS", "Framer", "Rejected", "parse_event", "too_deep"]

#: Why a line was not used (the ``reason`` label of custode_trace2_lines_rejected_total).
REASONS = ("too_long", "truncated", "encoding", "json", "depth", "type", "field", "error")

#: git's events nest two levels (an object holding argv); data_json values nest more but
#: are skipped unparsed. Sixteen is far beyond what custode reads.
MAX_DEPTH = 16


class Rejected(ValueError):
    """A line that is not a usable trace2 event; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Framer:
    """The lines of one connection, each at most ``max_line`` bytes (newline excluded)."""

    __slots__ = ("max_line", "partial", "skipping")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.partial = bytearray()  # the start of a line whose newline has not come yet
        self.skipping = False  # inside a line that was refused: drop up to its newline

    def feed(self, data: bytes, room: int) -> tuple[list[bytes], int, int]:
        """The complete lines in ``data``, and how many lines were too long and how many
        were dropped because their incomplete start would hold more than ``room`` bytes
        (the share of the listener's memory bound left to this connection)."""
        pieces = data.split(b"\n")
        tail = pieces.pop()
        lines: list[bytes] = []
        too_long = dropped = 0
        for i, piece in enumerate(pieces):
            if i == 0 and self.skipping:
                self.skipping = False  # the end of the refused line
            elif i == 0 and self.partial:
                if len(self.partial) + len(piece) > self.max_line:
                    too_long += 1
                else:
                    self.partial += piece
                    lines.append(bytes(self.partial))
                self.partial = bytearray()
            elif len(piece) > self.max_line:
                too_long += 1
            else:
                lines.append(piece)
        if tail and not self.skipping:
            if len(self.partial) + len(tail) > self.max_line:
                too_long += 1
            elif len(self.partial) + len(tail) > room:
                dropped += 1
            else:
                self.partial += tail
                return lines, too_long, dropped
            self.partial, self.skipping = bytearray(), True
        return lines, too_long, dropped

    def close(self) -> bool:
        """Forget the connection's incomplete line; whether there was one (truncated)."""
        truncated = bool(self.partial)
        self.partial = bytearray()
        return truncated


def parse_event(line: bytes) -> dict[str, Any]:
    """The JSON object of one line; Rejected (encoding, depth, json, type) if it is not."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("encoding", f"not UTF-8 at byte {exc.start}") from None
    if too_deep(line, MAX_DEPTH):
        raise Rejected("depth", f"nested more than {MAX_DEPTH} levels")
    try:
        event = json.loads(text)
    except RecursionError:
        raise Rejected("depth", "nested too deeply to parse") from None
    except ValueError as exc:
        raise Rejected("json", f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(event, dict):
        raise Rejected("type", f"a JSON {type(event).__name__}, not an object")
    return event
