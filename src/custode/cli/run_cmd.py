"""``custode run``: one unattended cycle — check, maintain, back up, verify (quick, plus a
restore drill of a few repositories), forget, report — and one verdict. The cycle itself
is the core's (``custode.jobs.cycle``: the stages, their order and rules, the records);
here are its options, the stages' messages on stderr, the table or JSON of every stage's
outcome, where things are (report, history, store: whole paths, below the table), what to
do next when something needs a person, and the exit status (the worst stage's).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from custode.base.units import counted
from custode.errors import EXIT_CODES_SEE, PathNotFoundError

if TYPE_CHECKING:  # the rest is imported where used: --help imports none of it
    from custode.cli.app import App
    from custode.jobs.cycle import Stage


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--drill",
    "drill",
    type=click.IntRange(0),
    default=None,
    help="Repositories restored in the restore drill [default: run.drill_sample].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary of every stage.")
@click.pass_obj
def run(app: App, roots: tuple[Path, ...], drill: int | None, as_json: bool) -> None:
    """One nightly cycle on every repository under ROOTS: check, maintain (only what the
    check found sound), back up, verify (quick, and a restore drill of a few
    repositories), forget old snapshots, report.

    Works with no config at all: history under $XDG_STATE_HOME/custode, backups under
    $XDG_DATA_HOME/custode/backups, and an age key created at first use in
    $XDG_CONFIG_HOME/custode (keep a copy elsewhere).
    """
    from custode.cli.progress import progress_bar
    from custode.jobs.cycle import CycleJob, cycle

    root_paths = tuple(app.roots(roots))  # fail early, once, when no root is known
    for root in root_paths:
        if not root.is_dir():
            raise PathNotFoundError(f"root {root} is not a directory; check the path")
    cfg = app.config.run
    job = CycleJob(
        roots=root_paths,
        config=app.config,
        state_dir=app.state_dir(),
        drill=cfg.drill_sample if drill is None else drill,
        report_directory=cfg.report_directory or app.state_dir() / "reports",
    )
    app.stop_on_signals()  # SIGINT, SIGTERM: the current stage ends cleanly, no later one runs
    done = cycle(job, notice=app.say, warn=app.warn, echo=partial(_echo, app),
                 bar=partial(progress_bar, app))  # fmt: skip
    stages = list(done.stages)
    _show(app, stages, done.code, done.seconds, as_json=as_json)
    if not as_json:
        for line in _next_steps(stages, root_paths):
            app.out.print(f"next: {line}", markup=False, highlight=False)
    if done.code:
        raise click.exceptions.Exit(done.code)


def _echo(app: App, line: str) -> None:
    app.err.print(line, markup=False, highlight=False)


_FACTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "maintain": lambda s: (
        f"{s.get('maintained', 0)} maintained, {s.get('failed', 0)} failed"
        + (f", {len(s['deferred'])} deferred (window)" if s.get("deferred") else "")
    ),
    "check": lambda s: (
        f"{s.get('repositories', 0)} checked, {s.get('corrupt', 0)} corrupt, "
        f"{s.get('error', 0)} not checkable"
    ),
    "backup": lambda s: (
        f"snapshot {s.get('snapshot')}: {s.get('new', 0)} new, "
        f"{s.get('unchanged', 0)} unchanged, {s.get('failed', 0)} failed"
    ),
    "verify": lambda s: (
        f"{counted(s.get('problems', 0), 'problem')} in {counted(s.get('files', 0), 'file')}"
    ),
    "drill": lambda s: (
        f"{s.get('drills', 0)} restored, {s.get('drills_failed', 0)} failed, "
        f"slowest {s.get('drill_seconds_max', 0)}s"
    ),
    "forget": lambda s: (
        f"{counted(len(s.get('removed', [])), 'snapshot')} removed, "
        f"{counted(s.get('pruned_files', 0), 'file')} pruned"
    ),
    "report": lambda s: "written (path below)" if s.get("file") else "",
}


def _show(app: App, stages: list[Stage], code: int, seconds: float, *, as_json: bool) -> None:
    if as_json:
        rows = [{**s.row(), "summary": s.summary} for s in stages]
        app.print_json({"code": code, "seconds": round(seconds, 3), "stages": rows})
        return
    from rich.markup import escape
    from rich.table import Table

    from custode.cli.tables import table_width

    table = Table(show_edge=False, pad_edge=False)
    table.add_column("stage")
    table.add_column("outcome")
    table.add_column("seconds", justify="right")
    table.add_column("what happened", overflow="fold")  # messages name paths: never cut
    for s in stages:
        facts = s.skipped or s.message or (_FACTS[s.name](s.summary) if s.summary else "")
        table.add_row(s.name, s.outcome, f"{s.seconds:.1f}", escape(facts))
    app.out.print(table, width=table_width(app))
    report = next((s.summary.get("file") for s in stages if s.name == "report"), None)
    if report:  # whole, on a line of its own: the terminal wraps it, nothing cuts it
        app.out.print(f"report: {report}", markup=False, highlight=False)
    failed = [s.name for s in stages if s.outcome == "failed"]
    verdict = (
        "ok" if code == 0 else f"exit {code}" + (f" ({', '.join(failed)} failed)" if failed else "")
    )
    where = [f"history in {app.state_dir()}"]
    store = next((s.summary.get("store") for s in stages if s.name == "backup"), None)
    if store:
        where.append(f"backups in {store}")
    app.out.print(f"run: {verdict} in {seconds:.1f}s; {'; '.join(where)}", markup=False,
                  highlight=False)  # fmt: skip


def _next_steps(stages: list[Stage], roots: tuple[Path, ...]) -> list[str]:
    """What a person must do after this run, one line each: look at the repositories the
    check found damaged or could not check, and copy the backup key made by this run."""
    import shlex

    from custode.jobs.check import FleetCheck

    steps = []
    check = next((s.result for s in stages if s.name == "check"), None)
    if isinstance(check, FleetCheck):
        bad = [c for c in check.repositories if c.verdict != "ok"]
        if bad:
            names = ", ".join(f"{c.state.relative} ({_VERDICT.get(c.verdict, c.verdict)})"
                              for c in bad)  # fmt: skip
            command = shlex.join(["custode", "check", *map(str, roots)])
            steps.append(f"{command} shows what is wrong with {names}; "
                         "custode maintained nothing there")  # fmt: skip
    key = next((s.summary.get("key_created") for s in stages if s.name == "backup"), None)
    if key:
        steps.append(f"copy the backup key {key} to a safe place off this machine: "
                     "without it no backup can be restored")  # fmt: skip
    return steps


_VERDICT = {"corrupt": "corrupt", "error": "not checkable"}
