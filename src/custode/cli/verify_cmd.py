"""``custode verify``: check the store at a chosen depth (quick, full, drill). The check
is the core's (``custode.jobs.verify``); here are its options and what it shows: each
problem and failed drill on stderr, the summary (text or JSON), the progress bar and the
error."""

from __future__ import annotations

from pathlib import Path

import click

from custode import interrupts
from custode.base.units import counted, format_bytes
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.cli.progress import progress_bar
from custode.errors import EXIT_CODES_SEE
from custode.git.runner import Git
from custode.jobs import backupsetup
from custode.jobs.verify import LEVELS, VerifyJob, VerifyResult
from custode.jobs.verify import verify as verify_job


@click.command("verify", epilog=EXIT_CODES_SEE)
@bc.store_option
@bc.host_option
@bc.identity_option
@click.option(
    "--level",
    type=click.Choice(LEVELS),
    default="quick",
    show_default=True,
    help="quick: manifests and file sizes (no key needed); full: read, decrypt and "
    "check every file and bundle; drill: restore, fsck and compare refs.",
)
@click.option(
    "--sample",
    type=click.IntRange(1),
    default=None,
    help="drill: restore this many repositories of the latest snapshot, chosen at "
    "random [default: all].",
)
@click.option(
    "--accept-rollback",
    is_flag=True,
    help="The store was put back from an older copy on purpose: remember its present "
    "state as this host's latest instead of reporting that it went back in time.",
)
@bc.json_option
@click.pass_obj
def verify_cmd(  # noqa: PLR0917
    app: App,
    store_url: str | None,
    host_name: str | None,
    identity_path: Path | None,
    level: str,
    sample: int | None,
    as_json: bool,
    accept_rollback: bool = False,
) -> None:
    """Check that the backups in the store are whole and restorable, and that the store
    still holds the last snapshot this host wrote (it did not go back in time)."""
    app.stop_on_signals()
    keys = bc.identities(app, identity_path) if level != "quick" else []
    store = bc.open_app_store(app, store_url, create=False)
    host = bc.host(app, host_name)
    job = VerifyJob(
        store=store,
        host=host,
        state_dir=app.state_dir(),
        git=Git.from_config(app.config.git),
        scratch=backupsetup.scratch_base(app.config.backup, app.state_dir()),
        level=level,
        identities=keys,
        identity_file=bc.identity_path(app, identity_path),
        sample=sample,
        own_host=host == bc.host(app, None),
        accept_rollback=accept_rollback,
    )
    with progress_bar(app, f"verifying ({level})") as tick:
        result = verify_job(job, warn=app.warn, progress=tick)
    if result.interrupted:
        raise interrupts.Interrupted(result.interrupted)
    _show(app, result, as_json=as_json)
    error = result.failure()
    if error is not None:
        raise error


def _show(app: App, result: VerifyResult, *, as_json: bool) -> None:
    for line in result.findings():
        app.say(line)
    if as_json:
        app.print_json(
            {
                "summary": result.summary(),
                "problems": [p.to_json() for p in result.problems],
                "drills": [
                    {
                        "repository": d.repository,
                        "snapshot": d.snapshot,
                        "ok": d.ok,
                        "seconds": round(d.seconds, 3),
                        "message": d.message,
                    }
                    for d in result.drills
                ],
            }
        )
        return
    report = result.report
    drills = ""
    failed_drills = len(report.drills) - report.restored
    if report.drills:  # what the drills read is in bytes_read: the restores read it
        slowest = max(d.seconds for d in report.drills)
        drills = (
            f", {counted(len(report.drills), 'restore drill')}: "
            f"{counted(report.restored, 'repository', 'repositories')} restored and checked"
            + (f", {failed_drills} failed" if failed_drills else "")
            + f" (slowest {slowest:.1f}s)"
        )
    verdict = (
        "ok"
        if report.ok
        else counted(len(report.problems), "problem")
        if report.problems
        else counted(failed_drills, "failed restore drill")
    )
    app.out.print(
        f"verify {report.level}: {verdict}: {counted(report.snapshots, 'snapshot')}, "
        f"{counted(report.manifests, 'manifest')}, {counted(report.files, 'file')}"
        + ("" if report.level == "quick" else f", {format_bytes(report.bytes_read)} read")
        + f"{drills} in {result.seconds:.1f}s",
        markup=False,
        highlight=False,
    )
