"""The nightly cycle: check, maintain, back up, verify (quick, plus a restore drill of a
few repositories), forget, report — each stage the core job of the same name, one after
another, with one verdict. The check comes first so that maintenance touches only
repositories it has just found sound.

A stage that fails does not stop the next (a failed maintenance is no reason to skip the
backup), except that nothing is verified or forgotten in a store the backup could not
reach, and nothing is forgotten without a retention policy. On SIGINT or SIGTERM the
running stage ends cleanly and no later stage runs. The exit status is the worst stage's;
the history database gets one ``run`` row with every stage's outcome. Before the report,
the fleet's health as the night left it is recorded (``custode.jobs.scan``), so the
report's verdicts are current; at the end, history older than ``state.keep_history`` is
forgotten.

The history database is the one input every stage shares, so its failures (busy past
``state.busy_timeout``, damaged, unsafe) are counted against what needed it, never
against the backup: maintenance is not run when the check's verdicts did not reach the
history (it acts only on repositories the check just found sound, and reads that from
there), a report that cannot read the history fails on its own, and every stage whose
results were not recorded is named in a last ``record`` stage (exit status 7).

Each stage tells what it tells on its own (``notice``: ``<stage>: <why>`` lines, a
repository that failed); the caller shows the result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custode import interrupts
from custode.config.model import Config
from custode.errors import CustodeError, ExitCode, outcome, worst
from custode.git.runner import Git
from custode.jobs import backupsetup, fleet, record
from custode.jobs import forget as forget_job
from custode.jobs import maintain as maintain_job
from custode.jobs import report as report_job
from custode.jobs.backup import BackupJob, BackupResult
from custode.jobs.backup import backup as backup_job
from custode.jobs.check import CheckJob, FleetCheck
from custode.jobs.check import check as check_job
from custode.jobs.check import failure as check_failure
from custode.jobs.fleet import Bar, Say
from custode.jobs.forget import ForgetResult
from custode.jobs.maintain import MaintainJob, Maintenance
from custode.jobs.report import ReportJob, ReportResult
from custode.jobs.scan import scan
from custode.jobs.verify import VerifyJob, VerifyResult
from custode.jobs.verify import verify as verify_job
from custode.records import problems as stateproblems
from custode.records.state import StateDB

#: what a stage's job returned (None: it did not get that far, or was skipped)
StageResult = FleetCheck | Maintenance | BackupResult | VerifyResult | ForgetResult | ReportResult

#: the report's window: the last day
REPORT_WINDOW = 86400.0


@dataclass(frozen=True)
class CycleJob:
    """What one cycle works on, and what it adds to the stages' own settings."""

    roots: tuple[Path, ...]
    config: Config
    state_dir: Path  # the scan cache, the history, the audit log, the store's lineage
    drill: int  # repositories restored in the restore drill; 0: no drill
    report_directory: Path  # where the day's HTML report is written


@dataclass
class Stage:
    """One stage: its exit status and message (a failure's, or why it was skipped), its
    time, its job's typed result and the summary derived from it (as ``--json`` of the
    command of the same name gives it)."""

    name: str
    code: int = 0
    seconds: float = 0.0
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    interrupted: bool = False
    history: list[str] = field(default_factory=list)  # failures of the records it met
    result: StageResult | None = None

    @property
    def outcome(self) -> str:  # an exit status's outcome, or "skipped"
        if self.interrupted:
            return outcome(ExitCode.INTERRUPTED)
        if self.skipped:
            return "skipped"
        return outcome(self.code)

    def row(self) -> dict[str, Any]:
        """The stage as the run's history row and ``--json`` list it."""
        return {
            "name": self.name,
            "outcome": self.outcome,
            "code": self.code,
            "seconds": round(self.seconds, 3),
            "message": self.message or self.skipped,
        }


@dataclass(frozen=True)
class CycleResult:
    """Every stage in the order run (skipped ones too, and the ``record`` stage when the
    records failed), the worst exit status, and how long the stages took."""

    stages: tuple[Stage, ...]
    code: int
    seconds: float

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)


@dataclass(frozen=True)
class _Talk:
    """Where the stages' messages go."""

    notice: Say
    warn: Say
    echo: Say
    bar: Bar


def cycle(
    job: CycleJob,
    *,
    notice: Say = fleet.quiet,
    warn: Say = fleet.quiet,
    echo: Say = fleet.quiet,
    bar: Bar = fleet.no_bar,
) -> CycleResult:
    """Run the cycle on ``job.roots`` and record it. ``notice``: what the stages tell as it
    happens (``<stage>: <message>``, each repository that failed), to be shown as
    ``custode: <line>``; ``warn``: what went wrong beside a stage (history not recorded);
    ``echo``: lines to be shown as they are (the report file written); ``bar``: the
    progress display of each step. The caller installs the signal handlers."""
    started = time.monotonic()
    talk = _Talk(notice, warn, echo, bar)
    keeps = forget_job.policy(job.config.backup)  # the one forget applies
    stages: list[Stage] = []

    def go(name: str, work: Callable[[Stage], None], *, skip: str = "") -> Stage:
        if interrupts.requested() or (stages and stages[-1].interrupted):
            skip = "the run was interrupted"
        mark = stateproblems.problem_mark()
        stage = _run(name, work, talk, skip=skip)
        stage.history = stateproblems.problems_since(mark)
        stages.append(stage)
        return stage

    # check first: maintain reads the verdicts it records, and a repository found corrupt
    # or not checkable gets no task (a repack can turn a repairable store into a lost one)
    check = go("check", lambda s: _check(job, talk, s))
    if check.history and not check.interrupted:
        stages.append(_not_run("maintain", "the check's verdicts are not in the history, "
                               f"and maintenance acts only on what they found sound: "
                               f"{check.history[0]}", talk))  # fmt: skip
    else:
        go("maintain", lambda s: _maintain(job, talk, s))
    backup = go("backup", lambda s: _backup(job, talk, s))
    reached = isinstance(backup.result, BackupResult) and backup.result.snapshot is not None
    why = "" if reached else "the backup reached no store"
    go("verify", lambda s: _verify(job, talk, s, "quick", None), skip=why)
    if job.drill:
        go("drill", lambda s: _verify(job, talk, s, "drill", job.drill), skip=why)
    go("forget", lambda s: _forget(job, talk, s),
       skip=why or ("no retention policy in backup.keep_*" if keeps.empty() else ""))  # fmt: skip
    own: list[str] = []  # failures of the run's own records: its observations, its row
    if not stages[-1].interrupted and not interrupts.requested():
        mark = stateproblems.problem_mark()
        _observe(job)
        own = stateproblems.problems_since(mark)
    if not stages[-1].interrupted and not interrupts.requested():
        go("report", lambda s: _report(job, talk, s))
    seconds = time.monotonic() - started
    lost = _records_lost(stages, talk)
    mark = stateproblems.problem_mark()
    record_run(job.state_dir, job.config.state.keep_history, [*stages, *lost],
               worst_code([*stages, *lost]), seconds)  # fmt: skip
    if not lost:  # the run's own records may be the first ones lost
        own += stateproblems.problems_since(mark)
        lost = _records_lost([*stages, Stage("run", history=own)], talk)
    stages += lost
    return CycleResult(tuple(stages), worst_code(stages), seconds)


def worst_code(stages: list[Stage]) -> int:
    """The worst stage's exit status; 130 once a stop was requested, also when the stage
    running then had just finished."""
    codes = {s.code for s in stages}
    if interrupts.requested():
        codes.add(int(ExitCode.INTERRUPTED))
    return int(worst(codes))


def record_run(
    state_dir: Path, keep_history: float, stages: list[Stage], code: int, seconds: float
) -> None:
    """The run's row, then history older than ``keep_history`` forgotten."""
    summary = {"code": code, "seconds": round(seconds, 3), "stages": [s.row() for s in stages]}

    def write(db: StateDB) -> None:
        record.finished_run(db, "run", outcome(code), summary)
        record.prune(db, keep_history)

    record.record(state_dir, write, failure="run not recorded in history")


def _run(name: str, work: Callable[[Stage], None], talk: _Talk, *, skip: str) -> Stage:
    """One stage: ``work`` sets its result and summary, and raises its failure."""
    stage = Stage(name, skipped=skip)
    if skip:
        return stage
    started = time.monotonic()
    try:
        work(stage)
    except interrupts.Interrupted as exc:
        stage.code, stage.interrupted = int(ExitCode.INTERRUPTED), True
        stage.message = f"{exc.message}; later stages skipped"
        talk.notice(f"{name}: {stage.message}")
    except CustodeError as exc:
        stage.code, stage.message = int(exc.exit_code), exc.message
        talk.notice(f"{name}: {exc.message}")
    except KeyboardInterrupt:
        stage.code, stage.interrupted = int(ExitCode.INTERRUPTED), True
        stage.message = "interrupted (SIGTERM or SIGINT); later stages skipped"
    stage.seconds = time.monotonic() - started
    return stage


def _not_run(name: str, why: str, talk: _Talk) -> Stage:
    """A stage that could not run for want of the history database: a failure of state."""
    talk.notice(f"{name}: not run: {why}")
    return Stage(name, code=int(ExitCode.STATE), message=f"not run: {why}")


def _records_lost(stages: list[Stage], talk: _Talk) -> list[Stage]:
    """The ``record`` stage naming every stage whose records failed (history, audit log)
    (its warnings said so one by one; this is what the exit status and summary count)."""
    failed = [s for s in stages if s.history]
    if not failed:
        return []
    names = ", ".join(s.name for s in failed)
    why = f"{names} could not use custode's records: {failed[0].history[0]}"
    talk.notice(f"record: {why}")
    return [Stage("record", code=int(ExitCode.STATE), message=why)]


def _check(job: CycleJob, talk: _Talk, stage: Stage) -> None:
    git = Git.from_config(job.config.git)
    result = check_job(CheckJob(job.roots, job.config, job.state_dir, git),
                       notice=talk.notice, warn=talk.warn, bar=talk.bar)  # fmt: skip
    stage.result = result
    if result.interrupted:  # what was checked proves little: no summary
        raise interrupts.Interrupted(interrupts.summary(
            "check", len(result.repositories), result.stopped, result.cancelled))  # fmt: skip
    stage.summary = result.summary()
    error = check_failure(result)
    if error is not None:
        raise error


def _maintain(job: CycleJob, talk: _Talk, stage: Stage) -> None:
    git = Git.from_config(job.config.git)
    done = maintain_job.maintain(MaintainJob(job.roots, job.config, job.state_dir, git),
                                 notice=talk.notice, warn=talk.warn, bar=talk.bar)  # fmt: skip
    stage.result, stage.summary = done, done.summary()
    for m in done.ran:  # the final error points here
        if m.result is not None and m.result.outcome == "failed":
            talk.notice(f"{m.result.path}: {m.result.message}")
    failed = done.count("failed")
    if done.interrupted:
        raise interrupts.Interrupted(interrupts.summary(
            "maintain", len(done.ran) - failed, done.stopped, len(done.not_started)))  # fmt: skip
    for state in done.not_started:
        talk.notice(f"{state.relative}: not started, the budget ran out")
    for d in done.deferred:  # not an error: the window was full, it runs on a later night
        due = d.to_json()["due"]
        talk.notice(f"{d.state.relative}: {', '.join(d.tasks)} deferred, due {due}: {d.why}")
    error = maintain_job.failure(failed, len(done.broken), len(done.ran), len(done.in_doubt))
    if error is not None:
        raise error


def _backup(job: CycleJob, talk: _Talk, stage: Stage) -> None:
    started = time.monotonic()
    cfg = job.config.backup
    host = backupsetup.host(cfg)
    git = Git.from_config(job.config.git)
    git.lower_own_priority()
    git.check_version()
    found = fleet.read(job.roots, job.config, job.state_dir, bar=talk.bar, notice=talk.notice)
    key = backupsetup.identity_path(cfg)
    fresh = not cfg.recipients and not key.exists()
    keys = backupsetup.recipients(cfg, notice=talk.notice)  # after the scan: no key for a bad root
    if fresh and key.exists():  # made now: the run's last line says it must be copied
        stage.summary = {"key_created": str(key)}
    run = BackupJob(
        store=backupsetup.open_backup_store(cfg),
        host=host,
        recipients=keys,
        state_dir=job.state_dir,
        git=git,
        scratch=backupsetup.scratch_base(cfg, job.state_dir),
        full_every=cfg.full_every,
        full_after=cfg.full_after,
        jobs=backupsetup.jobs(cfg),
    )
    with talk.bar("backing up") as tick:
        result = backup_job(run, found.states, started=started, warn=talk.warn,
                            notice=talk.notice, progress=tick)  # fmt: skip
    stage.result, stage.summary = result, {**result.summary(), **stage.summary}
    if result.interrupted:
        done = len(result.repositories) - len(result.failed)
        raise interrupts.Interrupted(
            interrupts.summary("backup", done, result.stopped, result.cancelled)
        )
    error = result.failure()
    if error is not None:
        raise error


def _verify(job: CycleJob, talk: _Talk, stage: Stage, level: str, sample: int | None) -> None:
    cfg = job.config.backup
    keys = backupsetup.identities(cfg) if level != "quick" else []
    run = VerifyJob(
        store=backupsetup.open_backup_store(cfg, create=False),
        host=backupsetup.host(cfg),
        state_dir=job.state_dir,
        git=Git.from_config(job.config.git),
        scratch=backupsetup.scratch_base(cfg, job.state_dir),
        level=level,
        identities=keys,
        identity_file=backupsetup.identity_path(cfg),
        sample=sample,
        own_host=True,
    )
    with talk.bar(f"verifying ({level})") as tick:
        result = verify_job(run, warn=talk.warn, progress=tick)
    stage.result = result
    if result.interrupted:
        raise interrupts.Interrupted(result.interrupted)
    for line in result.findings():
        talk.notice(line)
    stage.summary = result.summary()
    error = result.failure()
    if error is not None:
        raise error


def _forget(job: CycleJob, talk: _Talk, stage: Stage) -> None:
    cfg = job.config.backup
    retention = forget_job.require(forget_job.policy(cfg))
    with talk.bar("pruning") as tick:
        done = forget_job.forget(
            backupsetup.open_backup_store(cfg, create=False),
            backupsetup.host(cfg),
            retention,
            state_dir=job.state_dir,
            own_host=True,  # the host this machine backs up as: only its snapshots
            prune=True,
            progress=tick,
            warn=talk.warn,
        )
    stage.result, stage.summary = done, {**done.summary(), "reasons": done.reasons}


def _observe(job: CycleJob) -> None:
    """Record the fleet's health as the night left it, so the report's verdicts are
    current: a scan through the cache the backup's scan has just refreshed (a ``stat``
    per repository, after maintenance changed what it changed). The stages have shown
    its unreadable paths already; a failure to record is the run's own."""
    with contextlib.suppress(CustodeError):  # an interrupt: the exit status says so
        scan(list(job.roots), job.config, job.state_dir)


def _report(job: CycleJob, talk: _Talk, stage: Stage) -> None:
    """The report of the last day, as one HTML file in ``job.report_directory``."""
    target = job.report_directory / f"custode-report-{time.strftime('%Y-%m-%d')}.html"
    stage.summary = {"file": str(target)}
    stage.result = report_job.report(ReportJob(job.config, job.state_dir, REPORT_WINDOW,
                                               "html", target, job.roots))  # fmt: skip
    talk.echo(f"wrote {target}")
