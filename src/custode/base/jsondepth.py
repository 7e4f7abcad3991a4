"""How deep a JSON text nests, found on its bytes before it is parsed.

``json.loads`` recurses once per level: a line or a file of 200,000 ``[`` raises
``RecursionError`` (or worse, deep in a C stack). Every reader of hostile JSON (the trace2
socket, backup store records) asks ``too_deep`` first.
"""

from __future__ import annotations

from itertools import accumulate

__all__ = ["too_deep"]

# the structure as bytes: in UTF-8, brackets, quotes and backslashes never occur inside a
# multi-byte character. Openers become +1, closers -1 (as signed bytes).
_DEPTH = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def too_deep(text: bytes, limit: int) -> bool:
    """Whether the arrays and objects of the JSON ``text`` nest more than ``limit`` levels.

    Free for text with few brackets. Otherwise escaped backslashes and quotes are removed
    (JSON reads escapes left to right), strings are cut out (their brackets are text), and
    the deepest point of the running sum of +1/-1 is found: each step a C loop, linear in
    the text, and no recursion. Malformed text may pass this check; json.loads then
    refuses it.
    """
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[0::2])
    steps = outside.translate(_DEPTH, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0) > limit
