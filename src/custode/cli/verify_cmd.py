"""``custode verify``: check the store at a chosen depth (quick, full, drill)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click

from custode import interrupts
from custode.backup.catalog import load
from custode.backup.freshness import future_note
from custode.backup.guard import standing
from custode.backup.verify import Report, add_standing, verify
from custode.base.units import format_bytes
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.cli.progress import progress_bar
from custode.errors import EXIT_CODES_HELP, IntegrityError
from custode.git.runner import Git
from custode.records.state import RepositoryResult


@click.command("verify", epilog=EXIT_CODES_HELP)
@bc.store_option
@bc.host_option
@bc.identity_option
@click.option(
    "--level",
    type=click.Choice(["quick", "full", "drill"]),
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
    started = time.monotonic()
    keys = bc.identities(app, identity_path) if level != "quick" else []
    store = bc.open_app_store(app, store_url, create=False)
    host = bc.host(app, host_name)
    git = Git.from_config(app.config.git)
    catalog = load(store, host)
    if keys and catalog.snapshots and catalog.snapshots[-1].entries:
        bc.check_identity(app, store, catalog.snapshots[-1].entries[0].manifest, keys,
                          identity_path)  # fmt: skip
    with progress_bar(app, f"verifying ({level})") as tick, bc.scratch(app) as scratch:

        def progress(phase: str, done: int, total: int) -> None:
            tick(done, total)
            # between two items: what ran was stopped (its git too), nothing is recorded
            interrupts.check(f"verify ({level}): {phase} {done} of {total} done, the rest")

        report = verify(
            store,
            catalog,
            level,
            git=git,
            identities=keys,
            scratch=scratch,
            sample=sample,
            progress=progress,
        )
    found = standing(app.state_dir(), store.url, host, catalog, own_host=host == bc.host(app, None),
                     warn=app.warn, accept=accept_rollback)  # fmt: skip
    add_standing(report, found, host)
    now = datetime.now(UTC)
    for snap in found.future:
        app.warn(future_note(snap, now))
    seconds = time.monotonic() - started
    _record(app, store.url, host, report, seconds)
    _show(app, report, store.url, host, seconds=seconds, as_json=as_json)
    if not report.ok:
        failed_drills = sum(1 for d in report.drills if not d.ok)
        raise IntegrityError(
            f"verify ({level}) found {len(report.problems)} problems"
            + (f" and {failed_drills} failed restore drills" if failed_drills else "")
            + " in the store; see the messages above"
        )


def _summary(report: Report, store: str, host: str, seconds: float) -> dict[str, object]:
    return {
        "level": report.level,
        "store": store,
        "host": host,
        "ok": report.ok,
        "snapshots": report.snapshots,
        "manifests": report.manifests,
        "files": report.files,
        "bytes_read": report.bytes_read,
        "problems": len(report.problems),
        "drills": len(report.drills),
        "drills_failed": sum(1 for d in report.drills if not d.ok),
        "drill_seconds_max": round(max((d.seconds for d in report.drills), default=0.0), 3),
        "seconds": round(seconds, 3),
    }


def _record(app: App, store: str, host: str, report: Report, seconds: float) -> None:
    summary = _summary(report, store, host, seconds)
    now = datetime.now(UTC).isoformat()
    rows = [
        RepositoryResult(
            d.repository,
            f"{store}#{host}",
            "restore_drill",
            "ok" if d.ok else "failed",
            now,
            d.seconds,
            {"snapshot": d.snapshot, "message": d.message},
        )
        for d in report.drills
    ]
    bc.record(app, "verify", rows, "ok" if report.ok else "failed", summary)
    bc.audit(app, "verify", store, summary)


def _show(
    app: App, report: Report, store: str, host: str, *, seconds: float, as_json: bool
) -> None:
    for p in report.problems:
        affected = ", ".join(sorted(p.repositories)[:5]) or "-"
        snaps = ", ".join(sorted(p.snapshots)[:3]) or "-"
        app.err.print(
            f"custode: {p.key}: {p.message} (snapshots: {snaps}; repositories: {affected})",
            markup=False,
            highlight=False,
        )
    for d in report.drills:
        if not d.ok:
            app.err.print(
                f"custode: drill {d.repository}: {d.message}", markup=False, highlight=False
            )
    if as_json:
        app.print_json(
            {
                "summary": _summary(report, store, host, seconds),
                "problems": [p.to_json() for p in report.problems],
                "drills": [
                    {
                        "repository": d.repository,
                        "snapshot": d.snapshot,
                        "ok": d.ok,
                        "seconds": round(d.seconds, 3),
                        "message": d.message,
                    }
                    for d in report.drills
                ],
            }
        )
        return
    drills = ""
    if report.drills:
        slowest = max(d.seconds for d in report.drills)
        drills = f", {len(report.drills)} restore drills (slowest {slowest:.1f}s)"
    verdict = "ok" if report.ok else f"{len(report.problems)} problems"
    app.out.print(
        f"verify {report.level}: {verdict}: {report.snapshots} snapshots, {report.manifests} "
        f"manifests, {report.files} files ({format_bytes(report.bytes_read)} read){drills} "
        f"in {seconds:.1f}s",
        markup=False,
        highlight=False,
    )
