"""The forget job: which snapshots a retention policy keeps (and why), which it removes,
and (with ``prune``) the stored files no kept snapshot needs; recorded in the history and
the audit log unless it was a dry run.

The policy is built here once, from ``backup.keep_*`` and any command-line overrides
(:func:`policy`), for ``custode forget`` and the nightly cycle alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custode.backup.lineage import machine_id
from custode.backup.manifest import Snapshot
from custode.backup.prune import forget as forget_snapshots
from custode.backup.retention import Policy
from custode.backup.store import Store
from custode.config.model import BackupConfig
from custode.errors import UsageError
from custode.jobs import record as history

#: the counted rules, in the order restic lists them
KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def policy(
    config: BackupConfig, keep: dict[str, int | None] | None = None, within: float | None = None
) -> Policy:
    """The retention policy: ``config``'s ``keep_*`` settings, unless any override is
    given (``keep``: counts by rule name, ``within``: seconds); then only the overrides
    apply, a rule not given keeping nothing."""
    given = {name: (keep or {}).get(name) for name in KEEP}
    if all(v is None for v in given.values()) and within is None:
        return Policy(**{k: getattr(config, f"keep_{k}") for k in KEEP},
                      within=config.keep_within)  # fmt: skip
    return Policy(**{k: given[k] or 0 for k in KEEP}, within=within or 0.0)


def require(retention: Policy) -> Policy:
    """``retention``, refused when empty: it would remove every snapshot."""
    if retention.empty():
        raise UsageError(
            "no retention policy: pass --keep-last N (or another --keep-* option) "
            "or set backup.keep_* in the config; nothing was removed"
        )
    return retention


@dataclass(frozen=True)
class ForgetResult:
    """What a forget did (or, in a dry run, would do)."""

    store: str
    host: str
    policy: Policy
    dry_run: bool
    kept: list[Snapshot]
    removed: list[Snapshot]
    reasons: dict[str, list[str]]  # kept snapshot id -> the rules that keep it, as read
    pruned_files: int
    pruned_bytes: int

    def summary(self) -> dict[str, Any]:
        """The history's and audit log's record of it (and ``--json``'s, with reasons)."""
        return {
            "store": self.store,
            "host": self.host,
            "dry_run": self.dry_run,
            "kept": [s.snapshot_id for s in self.kept],
            "removed": [s.snapshot_id for s in self.removed],
            "pruned_files": self.pruned_files,
            "pruned_bytes": self.pruned_bytes,
        }


def forget(
    store: Store,
    host: str,
    retention: Policy,
    *,
    state_dir: Path,
    own_host: bool,
    prune: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> ForgetResult:
    """Remove from ``store`` the snapshots of ``host`` that ``retention`` does not keep,
    then (``prune``) every file no remaining snapshot needs. ``own_host``: ``host`` is the
    name this machine backs up under, which must hold only this machine's snapshots
    (another host's may hold only one machine's). An empty policy is refused: it would
    remove everything."""
    require(retention)
    machine = machine_id(state_dir) if own_host else None
    done = forget_snapshots(
        store,
        host,
        retention,
        do_prune=prune,
        dry_run=dry_run,
        progress=progress,
        warn=warn,
        machine=machine,
    )
    result = ForgetResult(
        store=store.url,
        host=host,
        policy=retention,
        dry_run=dry_run,
        kept=done.decision.keep,
        removed=done.decision.remove,
        reasons={k: [str(r) for r in why] for k, why in done.decision.reasons.items()},
        pruned_files=done.pruned_files,
        pruned_bytes=done.pruned_bytes,
    )
    if not dry_run:
        summary = result.summary()
        history.results(state_dir, "forget", [], "ok", summary, warn)
        history.audit(state_dir, "forget", store.url, summary, warn)
    return result
