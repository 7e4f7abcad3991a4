"""``custode restore``: repositories back from a snapshot, each at its relative path. The
restore itself is the core's (``custode.jobs.restore``); here are its options and what it
shows: the summary (text or JSON), the progress bar, the notes to the owner of each
restored working copy, and the error lines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from custode import interrupts
from custode.base.pathtext import display
from custode.base.units import counted, format_bytes
from custode.cli import backup_common as bc
from custode.cli.params import JOBS, SNAPSHOT_OR_TIME
from custode.errors import EXIT_CODES_SEE, RepositoryError

if TYPE_CHECKING:  # the rest is imported where used: --help imports none of it
    from custode.backup.restore import Restored
    from custode.cli.app import App
    from custode.jobs.restore import RestoreResult


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("repositories", nargs=-1)
@bc.store_option
@bc.host_option
@bc.identity_option
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path),  # what is wrong with it is said by the restore (exit 4)
    help="Directory to restore into; each repository goes to its path relative to "
    "its root below it.",
)
@click.option(
    "--at",
    "at",
    type=SNAPSHOT_OR_TIME,
    metavar="SNAPSHOT|TIME",
    help="A snapshot id (or prefix), or the latest snapshot at or before a time "
    "such as 2026-11-20 or 2026-11-20T14:00 [default: the latest; required when the "
    "store went back in time].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace repositories that exist at the destination (of a working copy only its "
    ".git: the files beside it are kept).",
)
@click.option(
    "--jobs",
    type=JOBS,
    default=None,
    help="Repositories restored at once, 0 = one per CPU [default: backup.jobs].",
)
@click.option(
    "--borrow",
    is_flag=True,
    help="Restore a pool's members and forks whose base repository is restored with them "
    "as borrowers of it: only their own packs, and objects/info/alternates naming the "
    "base's objects by a relative path [default: every repository complete].",
)
@bc.json_option
@click.pass_obj
def restore(  # noqa: PLR0917
    app: App,
    repositories: tuple[str, ...],
    store_url: str | None,
    host_name: str | None,
    identity_path: Path | None,
    target: Path,
    at: str | None,
    force: bool,
    jobs: int | None,
    borrow: bool,
    as_json: bool,
) -> None:
    """Restore REPOSITORIES (all when none is named) from a snapshot into --to.

    Each repository is assembled beside its destination and moved into place only when
    complete: an error never leaves a half-restored repository behind.
    """
    from custode.cli.progress import progress_bar
    from custode.git.runner import Git
    from custode.jobs.restore import RestoreJob, count
    from custode.jobs.restore import restore as restore_job

    app.stop_on_signals()
    keys = bc.identities(app, identity_path)
    store = bc.open_app_store(app, store_url, create=False)
    job = RestoreJob(
        store=store,
        host=bc.host(app, host_name),
        identities=keys,
        identity_file=bc.identity_path(app, identity_path),
        target=target.absolute(),
        state_dir=app.state_dir(),
        git=Git.from_config(app.config.git),
        at=at,
        repositories=repositories,
        force=force,
        jobs=bc.jobs(app, jobs),
        borrow=borrow,
    )
    with progress_bar(app, "restoring") as tick:
        result = restore_job(job, warn=app.warn, notice=app.say, progress=tick)
    if as_json:
        app.print_json(
            {
                "summary": result.summary(),
                "failed": result.failed,
                "repositories": [
                    {
                        "repository": r.repository,
                        "path": str(r.path),
                        "seconds": round(r.seconds, 3),
                    }
                    | (_borrowing(result, r.repository) if borrow else {})
                    for r in result.restored
                ],
                "already_restored": result.already_restored,
            }
        )
    else:
        kept, lent = len(result.already_restored), len(result.borrowed)
        app.out.print(
            f"restored {count(len(result.restored))} from snapshot {result.snapshot} into "
            f"{result.target} ({format_bytes(result.bytes)} read) in {result.seconds:.1f}s"
            + (f"; {kept} {'was' if kept == 1 else 'were'} already in place" if kept else "")
            + (f"; {counted(lent, 'as borrower', 'as borrowers')}" if lent else ""),
            markup=False,
            highlight=False,
        )
    for name, why in result.complete.items():
        app.say(f"{display(name)}: restored complete: {why}")
    _notes(app, result.restored)
    _raise_if_interrupted(result)
    if result.failed:
        again = (
            "run the same custode restore again to retry them"
            if result.resumable
            else "nothing was left in their place"
        )
        raise RepositoryError(
            f"{len(result.failed)} of {count(result.selected)} "
            f"{'was' if len(result.failed) == 1 else 'were'} not restored; see "
            f"the messages above ({again})"
        )


def _borrowing(result: RestoreResult, repository: str) -> dict[str, object]:
    """``--borrow``'s fields of a restored repository: the base it borrows from and its
    alternates (null when complete), and why it is complete although it has a base."""
    b = result.borrowed.get(repository)
    return {
        "borrows": b.base if b else None,
        "alternates": b.alternates if b else None,
        "complete_because": result.complete.get(repository),
    }


def _raise_if_interrupted(result: RestoreResult) -> None:
    stopped = sum(1 for m in result.failed.values() if m.startswith("interrupted"))
    if interrupts.requested():
        done = len(result.restored)
        cancelled = result.to_do - done - len(result.failed)
        again = (  # the journal in --to lets the same command skip the finished ones
            "run the same custode restore again for the rest (the finished ones are kept)"
            if result.resumable
            else "run the same custode restore again with --force for the rest (the "
            "finished ones are replaced by the same data)"
        )
        raise interrupts.Interrupted(
            interrupts.summary("restore", done, stopped, cancelled, again=again)
        )


def _notes(app: App, done: list[Restored]) -> None:
    """What the owner of each restored working copy still has to do."""
    in_place = [r for r in done if r.in_place]
    if in_place:
        app.err.print(
            f"custode: {counted(len(in_place), 'working copy', 'working copies')} had only "
            f"their .git replaced; their "
            f"files were left as they were: run git reset (not --hard) to rebuild the index, "
            f"e.g. git -C {in_place[0].path} reset",
            markup=False,
            highlight=False,
        )
    worktrees = [r for r in done if not r.bare and not r.in_place]
    if worktrees:
        app.err.print(
            f"custode: {counted(len(worktrees), 'working copy', 'working copies')} "
            f"{'was' if len(worktrees) == 1 else 'were'} restored without checking files "
            f"out (custode never runs a repository's filters); run git reset --hard in each, "
            f"e.g. git -C {worktrees[0].path} reset --hard",
            markup=False,
            highlight=False,
        )
