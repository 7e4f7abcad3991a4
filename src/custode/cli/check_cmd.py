"""``custode check``: verify the integrity of every repository; one verdict per repository.

Serial: git's own fsck already uses the disk hard, and a check changes nothing, so there
is no lock to take and nothing for the audit log. Results go to the history database.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from custode import interrupts
from custode.base.units import counted
from custode.cli.app import App
from custode.cli.progress import progress_bar
from custode.cli.scanning import scan_fleet
from custode.errors import EXIT_CODES_HELP, RepositoryError
from custode.git.runner import Git
from custode.integrity import check as integrity
from custode.integrity.check import CheckResult
from custode.jobs import record
from custode.records.state import RepositoryResult
from custode.scan.repostate import RepoState

_STYLE = {"ok": "green", "corrupt": "bold red", "error": "yellow"}
FIX = (
    "see the findings above; restore the repository from a backup or investigate — "
    "custode never repairs by deleting"
)
#: nothing corrupt: each finding says why the check could not run and its own fix (a git
#: too old for the repository's extension, a FIFO git waited on), no backup helps
FIX_ERROR = "see the findings above: each names why and the fix"

Pair = tuple[RepoState, CheckResult, float]  # with the wall-clock start


def _check_all(app: App, states: list[RepoState], git: Git, full: bool) -> tuple[list[Pair], int]:
    """Check one repository after another; on SIGINT or SIGTERM stop (the pairs so far, and
    1 when a check was stopped mid-way: its result proves nothing and is not kept)."""
    pairs: list[Pair] = []
    with progress_bar(app, "checking repositories") as tick:
        for state in states:
            if interrupts.requested():
                return pairs, 0
            began = time.time()
            try:
                result = integrity.check(state, git, full=full)
            except interrupts.Interrupted:
                return pairs, 1
            if interrupts.requested():
                return pairs, 1
            pairs.append((state, result, began))
            tick(len(pairs), len(states))
    return pairs, 0


def _record(app: App, pairs: list[Pair], full: bool, bad: int) -> None:
    task = "check-full" if full else "check"
    rows = [
        RepositoryResult(
            repository=s.relative,
            root=s.root,
            task=task,
            outcome="ok" if r.ok else "failed",
            started_at=datetime.fromtimestamp(started, UTC).isoformat(),
            duration_s=r.duration,
            details=_details(r),
        )
        for s, r, started in pairs
    ]
    summary = {"repositories": len(pairs), "failed": bad, "full": full}
    record.results(app.state_dir(), "check", rows, "partial" if bad else "ok", summary, app.warn)


def _table(pairs: list[Pair]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("repository", overflow="fold")
    table.add_column("verdict")
    table.add_column("time", justify="right")
    table.add_column("findings", overflow="fold")
    for state, result, _ in pairs:
        note = result.warnings.summary()
        table.add_row(
            state.relative,
            f"[{_STYLE[result.verdict]}]{result.verdict}[/]",
            f"{result.duration:.1f}s",
            "\n".join([*result.findings, *([f"[dim]note: {escape(note)}[/]"] if note else [])]),
        )
    return table


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--full",
    is_flag=True,
    help="Also parse and hash every object (full fsck) and verify the commit-graph and "
    "multi-pack-index. Slower: reads every pack in full.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def check(app: App, roots: tuple[Path, ...], full: bool, as_json: bool) -> None:
    """Verify the integrity of every repository under ROOTS (default: roots from config).

    By default checks connectivity: every object the refs need is present and readable.
    Changes nothing: a corrupt repository is reported, never repaired. Exits 3 when any
    repository is corrupt or could not be checked. Format warnings (objects that old tools
    wrote oddly, e.g. a bad time zone; git's message ids) are reported, not counted as
    damage.
    """
    app.stop_on_signals()
    started = time.monotonic()
    root_paths = app.roots(roots)
    git = Git.from_config(app.config.git)
    git.lower_own_priority()  # custode too yields to the clients, before any thread starts
    git.check_version()
    found = scan_fleet(app, root_paths)
    pairs, stopped = _check_all(app, found.states, git, full)
    counts = {v: sum(1 for _, r, _ in pairs if r.verdict == v) for v in ("ok", "corrupt", "error")}
    bad = counts["corrupt"] + counts["error"]
    warned = sum(1 for _, r, _ in pairs if r.warnings.total)
    if pairs:
        _record(app, pairs, full, bad)
    if interrupts.requested():
        cancelled = len(found.states) - len(pairs) - stopped
        raise interrupts.Interrupted(interrupts.summary("check", len(pairs), stopped, cancelled))
    seconds = time.monotonic() - started
    if as_json:
        summary = {"repositories": len(pairs), **counts, "with_format_warnings": warned,
                   "full": full, "seconds": round(seconds, 3)}  # fmt: skip
        app.print_json({"summary": summary, "repositories": [_json(s, r) for s, r, _ in pairs]})
    else:
        if pairs:
            app.out.print(_table(pairs))
        app.out.print(
            f"{counted(len(pairs), 'repository', 'repositories')} checked"
            f"{' in full' if full else ''}: {counts['ok']:,} ok, {counts['corrupt']:,} corrupt, "
            f"{counts['error']:,} could not be checked ({seconds:.1f}s)"
        )
        if warned:
            app.out.print(
                f"{counted(warned, 'repository', 'repositories')} with format warnings in "
                "historical objects: information, not damage (see docs/operations.md)"
            )
    if bad or found.problems:
        parts = []
        if counts["corrupt"]:
            parts.append(f"{counts['corrupt']} corrupt")
        if counts["error"]:
            parts.append(f"{counts['error']} could not be checked")
        if found.problems:
            parts.append(f"{len(found.problems)} unreadable paths")
        raise RepositoryError(
            f"{bad} of {len(pairs)} repositories failed the integrity check "
            f"({', '.join(parts)}); {FIX if counts['corrupt'] else FIX_ERROR}"
        )


def _json(state: RepoState, result: CheckResult) -> dict[str, Any]:
    return {
        "path": state.path,
        "relative": state.relative,
        "verdict": result.verdict,
        "findings": list(result.findings),
        "warnings": result.warnings.to_json(),
        "seconds": round(result.duration, 3),
    }


def _details(result: CheckResult) -> dict[str, Any]:
    """The history record: the verdict and findings, and format warnings if there are any
    (``ok`` outcome and verdict still mean sound)."""
    details: dict[str, Any] = {"verdict": result.verdict, "findings": list(result.findings)}
    if result.warnings.total:
        details["warnings"] = result.warnings.to_json()
    return details
