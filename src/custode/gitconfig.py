"""Read a few keys from a repository's git config file without running git.

custode needs three or four facts per repository on the fast path (bare or not, the
object format, the repository format version) for ten thousand repositories in
seconds, so a git process per repository is out. This reader understands the syntax
git writes (sections, subsections, quoted values, comments, continuation lines) and
ignores what it cannot parse; ``include`` directives are not followed (git reads
``core.bare`` and ``extensions.*`` from this file alone; a promisor remote in an included
file is missed, which the git runner makes harmless). Keys are returned lower-cased as
``section.key`` or ``section.subsection.key`` (subsection case kept).
"""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r'\s*\[\s*([A-Za-z0-9.-]+)(?:\s+"((?:[^"\\]|\\.)*)")?\s*\]\s*(.*)$')
_KEY = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)\s*(?:=\s*(.*))?$")


def _value(raw: str) -> str:
    out: list[str] = []
    quoted = False
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == '"':
            quoted = not quoted
        elif c == "\\" and i + 1 < len(raw):
            i += 1
            out.append({"n": "\n", "t": "\t", "b": "\b"}.get(raw[i], raw[i]))
        elif c in "#;" and not quoted:
            break
        else:
            out.append(c)
        i += 1
    return "".join(out).strip()


def parse(text: str) -> dict[str, str]:
    """Last value wins, as for git's single-valued keys. A bare key means ``true``."""
    values: dict[str, str] = {}
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + lines[i]
        i += 1
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        m = _SECTION.match(line)
        if m:
            name, sub, rest = m.group(1).lower(), m.group(2), m.group(3)
            section = f"{name}.{sub}" if sub is not None else name
            line = rest
            if not line.strip():
                continue
        m = _KEY.match(line)
        if m and section:
            values[f"{section}.{m.group(1).lower()}"] = (
                "true" if m.group(2) is None else _value(m.group(2))
            )
    return values


def read(path: Path) -> dict[str, str]:
    """The config at ``path``; empty when missing or unreadable (callers report that)."""
    try:
        return parse(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"true", "yes", "on", "1"}
