"""Which repositories are in doubt: their last recorded ``custode check`` was not clean.

A repository ``custode check`` found corrupt (or could not check) gets no maintenance
task until a check passes again: a repack or a prune on a damaged object store can turn
a repairable repository into a lost one. A failed full check (``check --full``) is
cleared only by a passing full check, which looks at more; a failed connectivity check by
a passing check of either kind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime

from custode.records.state import LatestResult

CHECK = "check"
FULL = "check-full"
TASKS = (CHECK, FULL)


def doubts(results: Iterable[LatestResult]) -> dict[str, str]:
    """Repository path → why it is in doubt, from the latest check results on record.

    A result names its repository by root and relative path; the same repository may be
    recorded under several roots (``custode check /srv/git`` and ``custode check
    /srv/git/a.git``), so results are matched by path, the newest of each kind winning.
    """
    latest: dict[str, dict[str, LatestResult]] = {}
    for result in results:
        if result.task not in TASKS:
            continue
        for path in _paths(result.root, result.repository):
            known = latest.setdefault(path, {})
            if result.task not in known or result.at > known[result.task].at:
                known[result.task] = result
    out: dict[str, str] = {}
    for path, kinds in latest.items():
        full, quick = kinds.get(FULL), kinds.get(CHECK)
        cleared = full is not None and quick is not None and full.at > quick.at
        if full is not None and full.outcome == "failed":
            out[path] = _why(full)
        elif quick is not None and quick.outcome == "failed" and not cleared:
            out[path] = _why(quick)
    return out


def _paths(root: str, repository: str) -> list[str]:
    """The repository's path: ``root/relative``, or the root itself when a root is the
    repository (discovery names it by the root's last component then)."""
    paths = [os.path.normpath(os.path.join(root, repository))]
    if os.path.basename(os.path.normpath(root)) == repository:
        paths.append(os.path.normpath(root))
    return paths


def _why(result: LatestResult) -> str:
    verdict = str(result.details.get("verdict") or "not clean")
    findings = [str(f) for f in result.details.get("findings") or ()]
    when = datetime.fromtimestamp(result.at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "custode check --full" if result.task == FULL else "custode check"
    first = f": {findings[0]}" if findings else ""
    return (
        f"{command} found it {verdict} at {when}{first}; no task runs until a check passes "
        f"again (repair it, then run {command})"
    )
