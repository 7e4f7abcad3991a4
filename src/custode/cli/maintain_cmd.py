"""``custode maintain``: plan and run what each repository needs. The maintenance itself
is the core's (``custode.jobs.maintain``); here are its options and what it shows: the
plan of a dry run (a table, or JSON), the results (a table of every repository worked on
with each task's outcome and time and the space freed, then the summary line; or JSON),
the progress bars, and the error it ends with."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from custode import interrupts
from custode.base.units import counted, format_bytes
from custode.cli.params import DURATION, JOBS
from custode.errors import EXIT_CODES_SEE

if TYPE_CHECKING:  # the rest is imported where used: --help imports none of it
    from custode.cli.app import App
    from custode.jobs.maintain import Maintenance, RepositoryMaintenance


def _predicted(m: RepositoryMaintenance, kind: str) -> dict[str, Any]:
    """A task's predicted cost (and on what it is based), for ``--json``."""
    p = m.prediction(kind)
    return {"predicted": p.to_json()} if p is not None else {}


def _plan_json(m: RepositoryMaintenance) -> dict[str, Any]:
    return {
        "path": m.state.path,
        "relative": m.state.relative,
        "in_doubt": m.in_doubt,
        "skipped_reason": m.skipped_reason,
        "notes": list(m.plan.notes),
        "tasks": [{"kind": t.kind, "reason": t.reason, **_predicted(m, t.kind)} for t in m.tasks],
    }


def _result_json(m: RepositoryMaintenance) -> dict[str, Any]:
    data = _plan_json(m)
    r = m.result
    if r is None:
        return data
    data.update(
        outcome=r.outcome,
        message=r.message,
        reclaimed_bytes=r.reclaimed,
        seconds=round(r.duration, 3),
        tasks=[
            {
                "kind": t.kind,
                "reason": t.reason,
                "outcome": t.outcome,
                "message": t.message,
                # to 0.1 ms, as the prediction: a commit-graph takes 4-8 ms, where whole
                # milliseconds would misstate the prediction's error by up to +-10%
                "seconds": round(t.duration, 4),
                **({"memory_bytes": t.memory_bytes} if t.memory_bytes is not None else {}),
                **({"cpu_seconds": round(t.cpu_seconds, 3)} if t.cpu_seconds is not None else {}),
                **_predicted(m, t.kind),
            }
            for t in r.tasks
        ],
    )
    return data


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show the plan (each task and why); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--quiet", "-q", is_flag=True, help="Print only the summary line, not the table of results."
)
@click.option(
    "--jobs", type=JOBS, default=None,
    help="Repositories maintained at the same time, 0 = one per CPU [default: maintenance.jobs].",
)  # fmt: skip
@click.option(
    "--budget",
    type=DURATION,
    default=None,
    help="Start no repository after this long (e.g. 30m); the rest are reported.",
)
@click.option(
    "--window",
    type=DURATION,
    default=None,
    help="Plan the night to end within this long (e.g. 10m) from predicted costs; full "
    "repacks that do not fit wait for a later night [default: maintenance.window, none].",
)
@click.option(
    "--cpu-share",
    type=click.FloatRange(0.05, 1.0),
    default=None,
    help="Start no further repository while the host's CPU use is above this share "
    "[default: maintenance.cpu_share, 0.7].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Plan every repository, also those unchanged since their last successful maintenance.",
)
@click.pass_obj
def maintain(  # noqa: PLR0917  (click passes every option positionally by name)
    app: App,
    roots: tuple[Path, ...],
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    jobs: int | None,
    budget: float | None,
    window: float | None,
    cpu_share: float | None,
    force: bool,
) -> None:
    """Clean up and optimise every repository under ROOTS that needs it.

    Each repository gets only the tasks its state calls for (stale locks and temporary
    files, dead worktrees, loose refs, repacks, commit-graph), each with its reason.
    Broken repositories are reported and left untouched. Every action goes to the audit
    log, every result to the history database.
    """
    from custode.cli.progress import progress_bar
    from custode.git.runner import Git
    from custode.jobs.maintain import MaintainJob
    from custode.jobs.maintain import maintain as maintain_job

    app.stop_on_signals()
    job = MaintainJob(
        roots=tuple(app.roots(roots)),
        config=app.config,
        state_dir=app.state_dir(),
        git=Git.from_config(app.config.git),
        dry_run=dry_run,
        force=force,
        jobs=jobs,
        budget=budget,
        cpu_share=cpu_share,
        window=window,
    )
    done = maintain_job(job, notice=app.say, warn=app.warn, bar=partial(progress_bar, app))
    broken, doubted = len(done.broken), len(done.in_doubt)
    if done.dry_run:
        _show_plans(app, done, as_json)
        _raise_for(0, broken, len(done.repositories), doubted)
        return
    _show_results(app, done, as_json=as_json, quiet=quiet)
    if done.interrupted:
        failed = done.count("failed")
        line = interrupts.summary("maintain", len(done.ran) - failed, done.stopped,
                                   len(done.not_started))  # fmt: skip
        raise interrupts.Interrupted(line)
    for state in done.not_started:
        app.err.print(f"custode: {state.relative}: not started, the budget ran out", markup=False)
    _raise_for(done.count("failed"), broken, len(done.ran), doubted)


def _raise_for(failed: int, broken: int, total: int, doubted: int = 0) -> None:
    """Exit status 3 when any repository failed, or was left untouched as broken or in
    doubt (its last check was not clean)."""
    from custode.jobs.maintain import failure

    error = failure(failed, broken, total, doubted)
    if error is not None:
        raise error


def _show_plans(app: App, done: Maintenance, as_json: bool) -> None:
    if as_json:
        repos = [_plan_json(m) for m in done.repositories]
        deferred = [d.to_json() for d in done.deferred]
        app.print_json({"dry_run": True, "repositories": repos, "deferred": deferred})
        return
    from rich.markup import escape
    from rich.table import Table

    from custode.cli.tables import table_width

    busy = done.planned
    table = Table(show_edge=False, pad_edge=False)
    for column in ("repository", "task", "why"):
        table.add_column(column, overflow="fold")
    table.add_column("predicted", justify="right", no_wrap=True)
    for m in busy:
        for i, task in enumerate(m.tasks):
            table.add_row(escape(m.state.relative) if i == 0 else "", task.kind,
                          escape(task.reason), _cost(m, task.kind))  # fmt: skip
    if busy:
        app.out.print(table, width=table_width(app))
    _show_deferred(app, done)
    tasks = sum(len(m.tasks) for m in busy)
    app.out.print(
        f"plan: {counted(tasks, 'task')} in {len(busy)} of "
        f"{counted(len(done.repositories), 'repository', 'repositories')} (dry run)",
        markup=False,
        highlight=False,
    )


def _show_deferred(app: App, done: Maintenance) -> None:
    """One line per repository whose work waits for a later night: what, why, when due."""
    for d in done.deferred:
        due = d.to_json()["due"]
        app.out.print(f"deferred: {d.state.relative}: {', '.join(d.tasks)} due {due} ({d.why})",
                      markup=False, highlight=False)  # fmt: skip


def _cost(m: RepositoryMaintenance, kind: str) -> str:
    """A task's predicted time and peak memory, as the plan's table shows them."""
    p = m.prediction(kind)
    return f"{p.seconds:.1f}s {format_bytes(p.memory_bytes)}" if p is not None else ""


def _freed(reclaimed: int) -> str:
    """Space freed; a repository that grew (a repack can) says so rather than a negative."""
    return format_bytes(reclaimed) if reclaimed >= 0 else f"none (grew {format_bytes(-reclaimed)})"


def _show_table(app: App, done: Maintenance) -> None:
    """One row per repository worked on (every one with a task, every failure): its
    outcome, time and space freed, and each task with its outcome and time."""
    from rich.markup import escape
    from rich.table import Table

    from custode.cli.tables import table_width

    worked = [(m, m.result) for m in done.ran if m.result is not None]
    worked = [(m, r) for m, r in worked if m.tasks or r.outcome == "failed"]
    if not worked:
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("repository", overflow="fold")
    table.add_column("outcome")
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("freed", justify="right")
    table.add_column("tasks", overflow="fold")
    for m, r in worked:
        tasks = [f"{t.kind} {t.outcome} {t.duration:.1f}s" for t in r.tasks]
        if r.outcome == "failed" or not tasks:
            tasks.append(r.message)
        table.add_row(escape(m.state.relative), r.outcome, f"{r.duration:.1f}s",
                      _freed(r.reclaimed), escape("\n".join(tasks)))  # fmt: skip
    app.out.print(table, width=table_width(app))


def _show_results(app: App, done: Maintenance, *, as_json: bool, quiet: bool) -> None:
    counts = {o: done.count(o) for o in ("ok", "skipped", "failed")}
    for m in done.ran:  # on stderr in every mode: the final error points here
        if m.result is not None and m.result.outcome == "failed":
            app.err.print(f"custode: {m.result.path}: {m.result.message}", markup=False)
    if as_json:
        repos = [_result_json(m) for m in done.ran]
        deferred = [d.to_json() for d in done.deferred]  # as a dry run's (and the summary's)
        app.print_json({"dry_run": False, "summary": done.summary(), "repositories": repos,
                        "deferred": deferred})  # fmt: skip
        return
    if not quiet:
        _show_table(app, done)
        _show_deferred(app, done)
    left = f", {len(done.not_started)} not started (budget)" if done.not_started else ""
    left += f", {len(done.deferred)} deferred (window)" if done.deferred else ""
    doubted = sum(1 for m in done.ran if m.in_doubt)
    left += f", {doubted} in doubt (last check not clean)" if doubted else ""
    app.out.print(
        f"{counts['ok']} maintained, {counts['skipped']} skipped, {counts['failed']} failed"
        f"{left}; {format_bytes(max(done.reclaimed, 0))} reclaimed in {done.seconds:.1f}s",
        markup=False,
        highlight=False,
    )
