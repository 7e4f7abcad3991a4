"""``custode check``: verify the integrity of every repository; one verdict per repository.
The check itself is the core's (``custode.jobs.check``); here are its options and what it
shows: the table or JSON, the summary lines, the progress bars and the error it ends with.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from custode import interrupts
from custode.base.units import counted
from custode.cli.params import JOBS
from custode.errors import EXIT_CODES_SEE

if TYPE_CHECKING:  # the rest is imported where used: --help imports none of it
    from rich.table import Table

    from custode.cli.app import App
    from custode.jobs.check import FleetCheck, RepositoryCheck

_STYLE = {"ok": "green", "corrupt": "bold red", "error": "yellow"}


def _table(done: tuple[RepositoryCheck, ...]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    table.add_column("repository", overflow="fold")
    table.add_column("verdict")
    table.add_column("time", justify="right")
    table.add_column("findings", overflow="fold")
    for c in done:
        note = c.warnings.summary()
        table.add_row(
            c.state.relative,
            f"[{_STYLE[c.verdict]}]{c.verdict}[/]",
            f"{c.seconds:.1f}s",
            "\n".join([*c.findings, *([f"[dim]note: {escape(note)}[/]"] if note else [])]),
        )
    return table


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--full",
    is_flag=True,
    help="Also parse and hash every object (full fsck) and verify the commit-graph and "
    "multi-pack-index. A pack verified by an earlier check and unchanged since is not read "
    "again (see --no-incremental).",
)
@click.option(
    "--no-incremental", "whole", is_flag=True,
    help="Read everything, as if no check had run before: every pack, the whole history.",
)  # fmt: skip
@click.option(
    "--jobs", type=JOBS, default=0, show_default=True,
    help="Repositories checked at the same time, 0 = one per CPU (the CPU governor still "
    "holds the host below maintenance.cpu_share).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def check(  # noqa: PLR0917
    app: App, roots: tuple[Path, ...], full: bool, whole: bool, jobs: int, as_json: bool
) -> None:
    """Verify the integrity of every repository under ROOTS (default: roots from config).

    By default checks connectivity: every object the refs need is present and readable.
    Incremental: what an earlier sound check verified and is unchanged since is not read
    again; only new packs, loose objects and new ref tips are (--json says what was read).
    Changes nothing: a corrupt repository is reported, never repaired. Exits 3 when any
    repository is corrupt or could not be checked. Format warnings (objects that old tools
    wrote oddly, e.g. a bad time zone; git's message ids) are reported, not counted as
    damage.
    """
    from custode.cli.progress import progress_bar
    from custode.git.runner import Git
    from custode.jobs.check import CheckJob
    from custode.jobs.check import check as check_job

    app.stop_on_signals()
    job = CheckJob(tuple(app.roots(roots)), app.config, app.state_dir(),
                   Git.from_config(app.config.git), full=full, jobs=jobs,
                   incremental=not whole)  # fmt: skip
    result = check_job(job, notice=app.say, warn=app.warn, bar=partial(progress_bar, app))
    if result.interrupted:
        done, cancelled = len(result.repositories), result.cancelled
        line = interrupts.summary("check", done, result.stopped, cancelled)
        raise interrupts.Interrupted(line)
    if as_json:
        _print_json(app, result)
    else:
        _print_text(app, result)
    _raise_for(result)


def _print_json(app: App, result: FleetCheck) -> None:
    repos = [_json(c) for c in result.repositories]
    app.print_json({"summary": result.summary(), "repositories": repos})


def _print_text(app: App, result: FleetCheck) -> None:
    counts, done = result.counts, result.repositories
    if done:
        app.out.print(_table(done))
    app.out.print(
        f"{counted(len(done), 'repository', 'repositories')} checked"
        f"{' in full' if result.full else ''}: {counts['ok']:,} ok, {counts['corrupt']:,} "
        f"corrupt, {counts['error']:,} could not be checked ({result.seconds:.1f}s)"
    )
    if result.incremental:
        app.out.print(
            f"{counted(result.incremental, 'repository', 'repositories')} read only what "
            "changed since the last sound check (--no-incremental reads everything)"
        )
    if result.with_warnings:
        app.out.print(
            f"{counted(result.with_warnings, 'repository', 'repositories')} with format "
            "warnings in historical objects: information, not damage (see docs/operations.md)"
        )


def _raise_for(result: FleetCheck) -> None:
    """Exit status 3 when any repository is corrupt or could not be checked, or a path
    could not be read."""
    from custode.jobs.check import failure

    error = failure(result)
    if error is not None:
        raise error


def _json(c: RepositoryCheck) -> dict[str, Any]:
    return {
        "path": c.state.path,
        "relative": c.state.relative,
        "verdict": c.verdict,
        "findings": list(c.findings),
        "warnings": c.warnings.to_json(),
        "read": c.read,
        "seconds": round(c.seconds, 3),
    }
