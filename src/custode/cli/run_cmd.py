"""``custode run``: one unattended cycle — check, maintain, back up, verify (quick, plus a
restore drill of a few repositories), forget, report — and one verdict. The check comes
first so that maintenance touches only repositories it has just found sound.

Each stage is the command of the same name, run in this process with ``--json``; its
summary is collected and its messages still go to stderr. A stage that fails does not stop
the next (a failed maintenance is no reason to skip the backup), except that nothing is
verified or forgotten in a store the backup could not reach. The exit status is the worst
stage's; the history database gets one ``run`` row with every stage's outcome. Before the
report, the fleet's health as the night left it is recorded (``custode.jobs.scan``, as
``custode status`` does), so the report's verdicts are current; at the end, history older
than ``state.keep_history`` is forgotten (``custode.jobs.record``).

The history database is the one input every stage shares, so its failures (busy past
``state.busy_timeout``, damaged, unsafe) are counted against what needed it, never against
the backup: maintenance is not run when the check's verdicts did not reach the history
(it acts only on repositories the check just found sound, and reads that from there), a
report that cannot read the history fails on its own, and every stage whose results were
not recorded is named in a last ``record`` stage. Exit 7 then says "custode's own state",
and the last line names the stages that failed.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from custode import interrupts
from custode.cli.app import App
from custode.errors import (
    EXIT_CODES_HELP,
    CustodeError,
    ExitCode,
    PathNotFoundError,
    outcome,
    worst,
)
from custode.jobs import record
from custode.jobs.forget import policy as retention_policy
from custode.records import problems as stateproblems
from custode.records.state import StateDB


@dataclass
class Stage:
    name: str
    code: int = 0
    seconds: float = 0.0
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    interrupted: bool = False
    history: list[str] = field(default_factory=list)  # failures of the records it met

    @property
    def outcome(self) -> str:  # an exit status's outcome, or "skipped"
        if self.interrupted:
            return outcome(ExitCode.INTERRUPTED)
        if self.skipped:
            return "skipped"
        return outcome(self.code)


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--drill",
    "drill",
    type=click.IntRange(0),
    default=None,
    help="Repositories restored in the restore drill [default: run.drill_sample].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary of every stage.")
@click.pass_context
def run(ctx: click.Context, roots: tuple[Path, ...], drill: int | None, as_json: bool) -> None:
    """One nightly cycle on every repository under ROOTS: check, maintain (only what the
    check found sound), back up, verify (quick, and a restore drill of a few
    repositories), forget old snapshots, report.

    Works with no config at all: history under $XDG_STATE_HOME/custode, backups under
    $XDG_DATA_HOME/custode/backups, and an age key created at first use in
    $XDG_CONFIG_HOME/custode (keep a copy elsewhere).
    """
    app: App = ctx.obj
    started = time.monotonic()
    root_paths = tuple(app.roots(roots))  # fail early, once, when no root is known
    for root in root_paths:
        if not root.is_dir():
            raise PathNotFoundError(f"root {root} is not a directory; check the path")
    cfg = app.config.run
    sample = cfg.drill_sample if drill is None else drill
    keeps = retention_policy(app.config.backup)  # the one forget applies
    app.stop_on_signals()  # SIGINT, SIGTERM: the current stage ends cleanly, no later one runs
    stages: list[Stage] = []

    def go(name: str, target: str, *, skip: str = "", **params: Any) -> Stage:
        if interrupts.requested() or (stages and stages[-1].interrupted):
            skip = "the run was interrupted"
        mark = stateproblems.problem_mark()
        stage = _stage(ctx, name, target, skip=skip, **params)
        stage.history = stateproblems.problems_since(mark)
        stages.append(stage)
        return stage

    # check first: maintain reads the verdicts it records, and a repository found corrupt
    # or not checkable gets no task (a repack can turn a repairable store into a lost one)
    check = go("check", "custode.cli.check_cmd:check", roots=root_paths)
    if check.history and not check.interrupted:
        stages.append(_not_run("maintain", "the check's verdicts are not in the history, "
                               f"and maintenance acts only on what they found sound: "
                               f"{check.history[0]}"))  # fmt: skip
    else:
        go("maintain", "custode.cli.maintain_cmd:maintain", roots=root_paths)
    backup = go("backup", "custode.cli.backup_cmd:backup", roots=root_paths)
    why = "" if backup.summary.get("snapshot") is not None else "the backup reached no store"
    go("verify", "custode.cli.verify_cmd:verify_cmd", skip=why, level="quick")
    if sample:
        go("drill", "custode.cli.verify_cmd:verify_cmd", skip=why, level="drill", sample=sample)
    go("forget", "custode.cli.forget_cmd:forget", do_prune=True,
       skip=why or ("no retention policy in backup.keep_*" if keeps.empty() else ""))  # fmt: skip
    own: list[str] = []  # failures of the run's own records: its observations, its row
    if not stages[-1].interrupted and not interrupts.requested():
        mark = stateproblems.problem_mark()
        _observe(app, root_paths)
        own = stateproblems.problems_since(mark)
    if not stages[-1].interrupted and not interrupts.requested():
        mark = stateproblems.problem_mark()
        stages += _report_stage(ctx, cfg.report_directory or app.state_dir() / "reports")
        stages[-1].history = stateproblems.problems_since(mark)
    seconds = time.monotonic() - started
    lost = _records_lost(stages)
    mark = stateproblems.problem_mark()
    _record(app, [*stages, *lost], _worst([*stages, *lost]), seconds)
    if not lost:  # the run's own records may be the first ones lost
        own += stateproblems.problems_since(mark)
        lost = _records_lost([*stages, Stage("run", history=own)])
    stages += lost
    code = _worst(stages)
    _show(app, stages, code, seconds, as_json=as_json)
    if code:
        raise click.exceptions.Exit(code)


def _not_run(name: str, why: str) -> Stage:
    """A stage that could not run for want of the history database: a failure of state."""
    click.echo(f"custode: {name}: not run: {why}", err=True)
    return Stage(name, code=int(ExitCode.STATE), message=f"not run: {why}")


def _records_lost(stages: list[Stage]) -> list[Stage]:
    """The ``record`` stage naming every stage whose records failed (history, audit log)
    (its warnings said so one by one; this is what the exit status and summary count)."""
    failed = [s for s in stages if s.history]
    if not failed:
        return []
    names = ", ".join(s.name for s in failed)
    why = f"{names} could not use custode's records: {failed[0].history[0]}"
    click.echo(f"custode: record: {why}", err=True)
    return [Stage("record", code=int(ExitCode.STATE), message=why)]


def _stage(ctx: click.Context, name: str, target: str, *, skip: str = "", **params: Any) -> Stage:
    """Run one command with --json in this process; its JSON becomes the stage's summary."""
    stage = Stage(name, skipped=skip)
    if skip:
        return stage
    import importlib

    module, attr = target.split(":")
    command: click.Command = getattr(importlib.import_module(module), attr)
    if "as_json" in {p.name for p in command.params}:
        params["as_json"] = True
    out = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out):
            ctx.invoke(command, **params)
    except interrupts.Interrupted as exc:
        stage.code, stage.interrupted = int(ExitCode.INTERRUPTED), True
        stage.message = f"{exc.message}; later stages skipped"
        click.echo(f"custode: {name}: {stage.message}", err=True)
    except CustodeError as exc:
        stage.code, stage.message = int(exc.exit_code), exc.message
        click.echo(f"custode: {name}: {exc.message}", err=True)
    except click.exceptions.Exit as exc:
        stage.code = exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        stage.code, stage.interrupted = int(ExitCode.INTERRUPTED), True
        stage.message = "interrupted (SIGTERM or SIGINT); later stages skipped"
    stage.seconds = time.monotonic() - started
    with contextlib.suppress(ValueError):
        parsed = json.loads(out.getvalue() or "{}")
        summary = parsed.get("summary", parsed) if isinstance(parsed, dict) else {}
        stage.summary = summary if isinstance(summary, dict) else {}
    return stage


def _report_stage(ctx: click.Context, directory: Path) -> list[Stage]:
    """The report of the last day, as one HTML file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"custode-report-{time.strftime('%Y-%m-%d')}.html"
    stage = _stage(ctx, "report", "custode.cli.report_cmd:report", since=86400.0, fmt="html",
                   output=target)  # fmt: skip
    stage.summary.setdefault("file", str(target))
    return [stage]


def _worst(stages: list[Stage]) -> int:
    codes = {s.code for s in stages}
    if interrupts.requested():  # also when the stage running then had just finished
        codes.add(int(ExitCode.INTERRUPTED))
    return int(worst(codes))


def _observe(app: App, roots: tuple[Path, ...]) -> None:
    """Record the fleet's health as the night left it, so the report's verdicts are
    current: a scan through the cache the backup's scan has just refreshed (a ``stat``
    per repository, after maintenance changed what it changed). The stages have shown
    its unreadable paths already; a failure to record is the run's own."""
    from custode.jobs.scan import scan

    with contextlib.suppress(CustodeError):  # an interrupt: _worst sees it, no report
        scan(list(roots), app.config, app.state_dir())


def _record(app: App, stages: list[Stage], code: int, seconds: float) -> None:
    """The run's row, then history older than state.keep_history forgotten."""
    summary = {"code": code, "seconds": round(seconds, 3),
               "stages": [{"name": s.name, "outcome": s.outcome, "code": s.code,
                           "seconds": round(s.seconds, 3), "message": s.message or s.skipped}
                          for s in stages]}  # fmt: skip
    keep = app.config.state.keep_history

    def write(db: StateDB) -> None:
        record.finished_run(db, "run", outcome(code), summary)
        record.prune(db, keep)

    record.record(app.state_dir(), write, failure="run not recorded in history")


_FACTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "maintain": lambda s: f"{s.get('maintained', 0)} maintained, {s.get('failed', 0)} failed",
    "check": lambda s: (
        f"{s.get('repositories', 0)} checked, {s.get('corrupt', 0)} corrupt, "
        f"{s.get('error', 0)} not checkable"
    ),
    "backup": lambda s: (
        f"snapshot {s.get('snapshot')}: {s.get('new', 0)} new, "
        f"{s.get('unchanged', 0)} unchanged, {s.get('failed', 0)} failed"
    ),
    "verify": lambda s: f"{s.get('problems', 0)} problems in {s.get('files', 0)} files",
    "drill": lambda s: (
        f"{s.get('drills', 0)} restored, {s.get('drills_failed', 0)} failed, "
        f"slowest {s.get('drill_seconds_max', 0)}s"
    ),
    "forget": lambda s: (
        f"{len(s.get('removed', []))} snapshots removed, {s.get('pruned_files', 0)} files pruned"
    ),
    "report": lambda s: str(s.get("file", "")),
}


def _show(app: App, stages: list[Stage], code: int, seconds: float, *, as_json: bool) -> None:
    if as_json:
        rows = [{"name": s.name, "outcome": s.outcome, "code": s.code,
                 "seconds": round(s.seconds, 3), "message": s.message or s.skipped,
                 "summary": s.summary} for s in stages]  # fmt: skip
        app.print_json({"code": code, "seconds": round(seconds, 3), "stages": rows})
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("stage", "outcome", "seconds", "what happened"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for s in stages:
        facts = s.skipped or s.message or (_FACTS[s.name](s.summary) if s.summary else "")
        table.add_row(s.name, s.outcome, f"{s.seconds:.1f}", facts)
    app.out.print(table)
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
