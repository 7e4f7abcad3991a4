"""``custode maintain``: plan and run what each repository needs.

The history database feeds the planner (when each repository was last fully repacked,
first maintained, and its fingerprint after its last successful maintenance, so an
unchanged repository is skipped) and receives every task's result plus one ``maintain``
row per repository maintained.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from custode import interrupts
from custode.base.units import format_bytes
from custode.cli.app import App
from custode.cli.params import DURATION
from custode.cli.progress import progress_bar
from custode.cli.scanning import scan_fleet
from custode.errors import EXIT_CODES_HELP, CustodeError, RepositoryError, StateUnusableError
from custode.git.runner import Git
from custode.jobs import record
from custode.maintenance import borrowers
from custode.maintenance.doubt import TASKS as CHECK_TASKS
from custode.maintenance.doubt import doubts
from custode.maintenance.executor import ExecutionResult, PackLimits
from custode.maintenance.fleetrun import FleetRun, Governor, run_fleet
from custode.maintenance.planner import Plan, RepoHistory, plan
from custode.records.audit import AuditLog
from custode.records.state import RepositoryResult, StateDB
from custode.scan.repostate import RepoState


def _plan_json(state: RepoState, p: Plan) -> dict[str, Any]:
    return {
        "path": state.path,
        "relative": state.relative,
        "in_doubt": p.in_doubt,
        "skipped_reason": p.skipped_reason,
        "notes": list(p.notes),
        "tasks": [{"kind": t.kind, "reason": t.reason} for t in p.tasks],
    }


def _result_json(state: RepoState, p: Plan, r: ExecutionResult) -> dict[str, Any]:
    data = _plan_json(state, p)
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
                "seconds": round(t.duration, 3),
            }
            for t in r.tasks
        ],
    )
    return data


def _record(app: App, pairs: list[tuple[RepoState, ExecutionResult]], failed: int) -> None:
    rows = []
    for s, r in pairs:
        started = datetime.fromtimestamp(r.started, UTC).isoformat()
        rows += [
            RepositoryResult(
                s.relative,
                s.root,
                t.kind,
                t.outcome,
                started,
                t.duration,
                {"reason": t.reason, "message": t.message},
            )
            for t in r.tasks
        ]
        if r.tasks:  # the repository's own row: the fingerprint skip reads it
            details = {"message": r.message, "fingerprint": r.fingerprint,
                       "reclaimed_bytes": r.reclaimed}  # fmt: skip
            rows.append(RepositoryResult(
                s.relative, s.root, "maintain", r.outcome, started, r.duration, details
            ))  # fmt: skip
    reclaimed = sum(r.reclaimed for _, r in pairs)
    summary = {"repositories": len(pairs), "failed": failed, "reclaimed_bytes": reclaimed}
    status = "partial" if failed else "ok"
    record.results(app.state_dir(), "maintain", rows, status, summary, app.warn)


def _history(
    app: App, states: list[RepoState], use_fingerprints: bool, *, dry_run: bool
) -> dict[str, RepoHistory]:
    """What the planner needs from the history database, per repository path.

    Without it custode cannot know which repositories the last check found in doubt, so
    it maintains none (exit 7); a dry run plans every repository afresh, with a warning.
    """
    try:
        with StateDB.open(app.state_dir() / "state.db") as db:
            full = db.last_task_times("full_repack")
            runs = db.task_history("maintain")
            checks = doubts(db.latest_results(CHECK_TASKS))
    except CustodeError as exc:
        if not dry_run:
            raise StateUnusableError(
                f"not maintaining anything: the last check's verdicts cannot be read, so "
                f"a repository it found in doubt could be repacked: {exc}"
            ) from exc
        app.warn(f"history unreadable, planning every repository afresh: {exc}")
        return {}
    history: dict[str, RepoHistory] = {}
    for s in states:
        key = (s.root, s.relative)
        seen = runs.get(key)
        ok = seen is not None and seen.outcome == "ok" and use_fingerprints
        history[s.path] = RepoHistory(
            last_full_repack=full.get(key),
            first_seen=seen.first if seen else None,
            last_success=seen.latest if seen and ok else None,
            fingerprint=str(seen.details.get("fingerprint", "")) if seen and ok else "",
            doubt=checks.get(os.path.normpath(s.path), ""),
        )
    return history


def _borrowers(
    app: App, roots: list[Path], states: list[RepoState], *, record: bool
) -> list[tuple[RepoState, str]]:
    """Each state with every borrower custode can find (``maintenance.borrowers``: the
    given and the configured roots swept, excluded directories too, and the borrowers
    remembered), and why custode cannot be sure it knows them all ('' when it can)."""
    if app.config.maintenance.cruft_expiration is None:
        return [(s, "") for s in states]  # nothing ever expires: nothing to be sure of
    swept = list(dict.fromkeys([*roots, *app.config.roots]))
    doubt = ""
    try:
        with StateDB.open(app.state_dir() / "state.db") as db:
            remembered = db.remembered_borrowers()
    except CustodeError as exc:
        remembered, doubt = set(), f"the borrowers on record could not be read ({exc})"
    found = borrowers.find(swept, remembered)
    if doubt:
        found.everywhere.append(doubt)
    if record and (found.seen or found.gone):
        try:
            with StateDB.open(app.state_dir() / "state.db") as db:
                db.remember_borrowers(found.seen)
                db.forget_borrowers(found.gone)
        except CustodeError as exc:
            app.warn(f"borrowers not recorded in history: {exc}")
    names = {os.path.realpath(s.git_dir): s.relative for s in states}
    return [borrowers.apply(s, found, names) for s in states]


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show the plan (each task and why); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--jobs", type=click.IntRange(1, 64), default=None,
    help="Repositories maintained at the same time [default: maintenance.jobs, 0 = one per CPU].",
)  # fmt: skip
@click.option(
    "--budget",
    type=DURATION,
    default=None,
    help="Start no repository after this long (e.g. 30m); the rest are reported.",
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
    jobs: int | None,
    budget: float | None,
    cpu_share: float | None,
    force: bool,
) -> None:
    """Clean up and optimise every repository under ROOTS that needs it.

    Each repository gets only the tasks its state calls for (stale locks and temporary
    files, dead worktrees, loose refs, repacks, commit-graph), each with its reason.
    Broken repositories are reported and left untouched. Every action goes to the audit
    log, every result to the history database.
    """
    app.stop_on_signals()
    started = time.monotonic()
    root_paths = app.roots(roots)
    git = Git.from_config(app.config.git)
    git.lower_own_priority()  # custode too yields to the clients, before any thread starts
    version = git.check_version()
    found = scan_fleet(app, root_paths)
    now = time.time()
    history = _history(app, found.states, use_fingerprints=not force, dry_run=dry_run)
    policy = app.config.maintenance
    lent = _borrowers(app, root_paths, found.states, record=not dry_run)
    plans = [
        (s, plan(s, policy, version, now, history.get(s.path), unsure_borrowers=unsure))
        for s, unsure in lent
    ]
    broken = [(s, p) for s, p in plans if s.problems]
    doubted = [(s, p) for s, p in plans if p.in_doubt]
    for state, p in broken + doubted:
        app.err.print(f"custode: {state.relative}: {p.skipped_reason}", markup=False)
    if dry_run:
        _show_plans(app, plans, as_json)
        _raise_for(0, len(broken), len(plans), len(doubted))
        return
    audit = AuditLog(app.state_dir() / "audit.jsonl")
    governor = Governor(cpu_share or policy.cpu_share)
    jobs = jobs or policy.jobs or os.cpu_count() or 1
    outcome = _run(app, plans, git, audit, jobs=jobs, budget=budget, governor=governor,
                   limits=PackLimits.of(policy))  # fmt: skip
    pairs = [(s, r) for s, _, r in outcome.results]
    failed = sum(1 for _, r in pairs if r.outcome == "failed")
    _record(app, pairs, failed)
    _show_results(app, outcome, as_json, time.monotonic() - started)
    if outcome.interrupted:
        stopped = sum(1 for _, r in pairs if r.outcome == "failed" and "interrupted" in r.message)
        line = interrupts.summary("maintain", len(pairs) - failed, stopped,
                                   len(outcome.not_started))  # fmt: skip
        raise interrupts.Interrupted(line)
    for state in outcome.not_started:
        app.err.print(f"custode: {state.relative}: not started, the budget ran out", markup=False)
    _raise_for(failed, len(broken), len(pairs), len(doubted))


def _run(
    app: App, plans: list[tuple[RepoState, Plan]], git: Git, audit: AuditLog, *, jobs: int,
    budget: float | None, governor: Governor, limits: PackLimits,
) -> FleetRun:  # fmt: skip
    go = partial(
        run_fleet, plans, git, audit, jobs=jobs, budget=budget, governor=governor, limits=limits
    )
    with progress_bar(app, "maintaining") as tick:
        return go(progress=tick)


def _raise_for(failed: int, broken: int, total: int, doubted: int = 0) -> None:
    """Exit status 3 when any repository failed, or was left untouched as broken or in
    doubt (its last check was not clean)."""
    parts = []
    if failed:
        parts.append(f"maintenance failed in {failed} of {total} repositories")
    if broken:
        parts.append(f"{broken} broken repositories were left untouched")
    if doubted:
        parts.append(f"{doubted} repositories in doubt (last check not clean) were left untouched")
    if parts:
        raise RepositoryError(
            f"{' and '.join(parts)}; see the messages above (custode repaired or removed "
            "nothing there)"
        )


def _show_plans(app: App, plans: list[tuple[RepoState, Plan]], as_json: bool) -> None:
    busy = [(s, p) for s, p in plans if p.tasks]
    if as_json:
        app.print_json({"dry_run": True, "repositories": [_plan_json(s, p) for s, p in plans]})
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("repository", "task", "why"):
        table.add_column(column, overflow="fold")
    for state, p in busy:
        for i, task in enumerate(p.tasks):
            table.add_row(state.relative if i == 0 else "", task.kind, task.reason)
    if busy:
        app.out.print(table)
    tasks = sum(len(p.tasks) for _, p in busy)
    app.out.print(f"plan: {tasks} tasks in {len(busy)} of {len(plans)} repositories (dry run)")


def _show_results(app: App, outcome: FleetRun, as_json: bool, seconds: float) -> None:
    results = outcome.results
    counts = {o: sum(1 for *_, r in results if r.outcome == o) for o in ("ok", "skipped", "failed")}
    reclaimed = sum(r.reclaimed for *_, r in results)
    summary = {
        "maintained": counts["ok"], "skipped": counts["skipped"], "failed": counts["failed"],
        "not_started": [s.relative for s in outcome.not_started],
        "in_doubt": [s.relative for s, p, _ in results if p.in_doubt],
        "reclaimed_bytes": reclaimed, "seconds": round(seconds, 3),
    }  # fmt: skip
    for _, _, result in results:  # on stderr in every mode: the final error points here
        if result.outcome == "failed":
            app.err.print(f"custode: {result.path}: {result.message}", markup=False)
    if as_json:
        repos = [_result_json(s, p, r) for s, p, r in results]
        app.print_json({"dry_run": False, "summary": summary, "repositories": repos})
        return
    left = f", {len(outcome.not_started)} not started (budget)" if outcome.not_started else ""
    doubted = sum(1 for _, p, _ in results if p.in_doubt)
    left += f", {doubted} in doubt (last check not clean)" if doubted else ""
    app.out.print(
        f"{counts['ok']} maintained, {counts['skipped']} skipped, {counts['failed']} failed"
        f"{left}; {format_bytes(max(reclaimed, 0))} reclaimed in {seconds:.1f}s"
    )
