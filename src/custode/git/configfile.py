"""Read a few keys from a repository's git config file without running git.

custode needs three or four facts per repository on the fast path (bare or not, the
object format, the repository format version) for ten thousand repositories in
seconds, so a git process per repository is out. This reader understands the syntax
git writes (sections, subsections, quoted values, comments, continuation lines) and
ignores what it cannot parse; ``include`` directives are not followed (``include_paths``
lists them for ``gitfiles``, which checks what they name) (git reads
``core.bare`` and ``extensions.*`` from this file alone; a promisor remote in an included
file is missed, which the git runner makes harmless). Keys are returned lower-cased as
``section.key`` or ``section.subsection.key`` (subsection case kept).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

CONFIG_MAX = 16 << 20  # bytes: a config with thousands of remotes is still far smaller

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


def entries(text: str) -> Iterator[tuple[str, str]]:
    """Every ``(key, value)`` in file order (keys as in the module docstring)."""
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
            yield (
                f"{section}.{m.group(1).lower()}",
                "true" if m.group(2) is None else _value(m.group(2)),
            )


def parse(text: str) -> dict[str, str]:
    """Last value wins, as for git's single-valued keys. A bare key means ``true``."""
    return dict(entries(text))


def include_paths(text: str) -> list[str]:
    """The files a config includes: every ``include.path`` and ``includeIf.<cond>.path``
    (conditions not evaluated), in order."""
    return [
        value
        for key, value in entries(text)
        if value and key.startswith(("include.", "includeif.")) and key.endswith(".path")
    ]


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"true", "yes", "on", "1"}
