"""``custode status``: one row per repository with its health verdict and reasons."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from custode.base.units import counted, format_bytes
from custode.errors import EXIT_CODES_SEE, RepositoryError

if TYPE_CHECKING:  # the rest is imported where used: --help imports none of it
    from rich.table import Table

    from custode.cli.app import App
    from custode.maintenance.health import Health
    from custode.scan.repostate import RepoState

_STYLE = {"ok": "green", "attention": "yellow", "broken": "bold red"}


def _row_json(state: RepoState, health: Health) -> dict[str, Any]:
    data = state.to_json()
    data["verdict"] = health.verdict
    data["reasons"] = [{"severity": r.severity, "text": r.text} for r in health.reasons]
    return data


def _table(rows: list[tuple[RepoState, Health]]) -> Table:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    table.add_column("repository", overflow="fold")
    table.add_column("health")
    table.add_column("size", justify="right")
    table.add_column("loose", justify="right")
    table.add_column("packs", justify="right")
    table.add_column("refs", justify="right")
    table.add_column("reasons", overflow="fold")
    for state, health in rows:
        table.add_row(
            state.relative,
            f"[{_STYLE[health.verdict]}]{health.verdict}[/]",
            format_bytes(state.size_bytes),
            f"{state.loose_objects:,}",
            f"{state.packs:,}",
            f"{state.refs:,}",
            "; ".join(r.text for r in health.reasons),
        )
    return table


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--problems-only", is_flag=True, help="Only repositories that are not ok.")
@click.option(
    "--rescan",
    is_flag=True,
    help="Read every repository afresh instead of reusing what is unchanged since last time.",
)
@click.pass_obj
def status(
    app: App, roots: tuple[Path, ...], as_json: bool, problems_only: bool, rescan: bool
) -> None:
    """Show the health of every repository under ROOTS (default: roots from config).

    Repositories whose directories are unchanged since the previous run are not read
    again (their state is kept in the state directory); --rescan reads them all.
    """
    from custode.cli.scanning import scan_progress, show_problems
    from custode.jobs.scan import scan

    app.stop_on_signals()
    root_paths = app.roots(roots)
    with scan_progress(app) as progress:
        result = scan(root_paths, app.config, app.state_dir(), rescan=rescan, progress=progress)
    show_problems(app, root_paths, result.problems, found=bool(result.repositories))
    rows = list(result.repositories)
    counts = {v: result.count(v) for v in ("ok", "attention", "broken")}
    shown = [(s, h) for s, h in rows if h.verdict != "ok"] if problems_only else rows
    if as_json:
        app.print_json(
            {
                "version": 1,
                "generated_at": result.assessed_at,
                "roots": [str(r) for r in root_paths],
                "seconds": round(result.seconds, 3),
                "summary": {"repositories": len(rows), **counts},
                "repositories": [_row_json(s, h) for s, h in shown],
                "problems": [{"path": str(p.path), "message": p.message} for p in result.problems],
            }
        )
    else:
        if shown:
            app.out.print(_table(shown))
        app.out.print(
            f"{counted(len(rows), 'repository', 'repositories')}: "
            f"{counts['ok']:,} ok, {counts['attention']:,} need attention, "
            f"{counts['broken']:,} broken ({result.seconds:.1f}s)"
        )
    if counts["broken"] or result.problems:
        parts = []
        if counts["broken"]:
            parts.append(counted(counts["broken"], "broken repository", "broken repositories"))
        if result.problems:
            parts.append(counted(len(result.problems), "unreadable path"))
        raise RepositoryError(
            f"{' and '.join(parts)}; see the reasons above and repair or exclude them"
        )
