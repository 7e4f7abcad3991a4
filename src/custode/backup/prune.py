"""Forgetting snapshots and pruning what nothing kept needs.

``forget`` deletes snapshot records only. ``prune`` then deletes every stored file of the
host that no remaining snapshot needs: what a kept snapshot needs is the manifest of each
of its repositories, the manifests it builds on, and every file they name (the whole
chain of bundles, the refs files, the kept files, the LFS objects; for a file stored as
parts, each part). A manifest that cannot be read makes prune refuse (it cannot tell
what that snapshot needs). It runs under the store's exclusive lock, so no backup is
choosing a parent or writing files meanwhile.

A host whose snapshots were written by another machine (two machines under one host
name, ``backup/freshness.py``) is refused before anything is deleted: its retention
would count, and its prune delete, the other machine's backups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from custode.backup.catalog import Catalog, load
from custode.backup.chain import Manifests
from custode.backup.freshness import refuse_clash
from custode.backup.locks import store_lock
from custode.backup.retention import Decision, Policy, apply
from custode.backup.store import Store
from custode.errors import CustodeError, IntegrityError


@dataclass
class PrunePlan:
    needed: set[str] = field(default_factory=set)
    remove: list[str] = field(default_factory=list)
    remove_bytes: int = 0


def plan_prune(store: Store, host: str, catalog: Catalog) -> PrunePlan:
    if catalog.damaged:
        key = sorted(catalog.damaged)[0]
        raise IntegrityError(
            f"snapshot {key} is damaged, so prune cannot tell what it needs; "
            "run custode verify, then forget or repair it before pruning"
        )
    out = PrunePlan()
    known = Manifests(store)  # a manifest many backups build on is read once
    listed: set[str] = set()  # manifests whose files are in (an ancestor's key alone is not)
    for snap in catalog.snapshots:
        out.needed.add(snap.key)
        for entry in snap.entries:
            if entry.manifest in listed:
                continue
            listed.add(entry.manifest)
            try:
                manifest = known.load(entry.manifest)
            except CustodeError as exc:
                raise IntegrityError(
                    f"prune refused: {exc.message} (needed by snapshot {snap.snapshot_id})"
                ) from None
            out.needed.add(entry.manifest)
            out.needed.update(ref.key for ref in manifest.stored_files())  # parts, not wholes
    for prefix in (f"hosts/{host}/repos/", f"hosts/{host}/lfs/"):
        for key in store.list(prefix):
            if key not in out.needed:
                out.remove.append(key)
                out.remove_bytes += store.size(key) or 0
    return out


def prune(store: Store, plan: PrunePlan, progress: Callable[[int, int], None] | None = None) -> int:
    # manifests first: a half-done prune leaves files without manifest (pruned next time),
    # never a manifest missing its files
    order = sorted(plan.remove, key=lambda k: (not k.endswith("/manifest.json"), k))
    for n, key in enumerate(order):
        store.delete(key)
        if progress:
            progress(n + 1, len(order))
    return len(order)


@dataclass
class Forgotten:
    decision: Decision
    pruned_files: int = 0
    pruned_bytes: int = 0


def forget(
    store: Store, host: str, policy: Policy, *, do_prune: bool, dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None, warn: Callable[[str], None] | None = None,
    machine: str | None = None,
) -> Forgotten:  # fmt: skip
    """Remove the snapshots ``policy`` does not keep, then (``do_prune``) every file no
    remaining snapshot needs and every abandoned partial write. The snapshots are read
    under the lock (exclusive to prune), so a backup finishing meanwhile is either seen
    whole or has not started. ``machine``: this machine's id when ``host`` is the name it
    backs up under (None: any one machine's snapshots are fine, more than one is a clash)."""
    if dry_run:
        catalog = load(store, host, warn)
        refuse_clash(catalog.snapshots, host, machine, "forget")
        out = Forgotten(apply(policy, catalog.snapshots))
        if do_prune:
            plan = plan_prune(store, host, Catalog(out.decision.keep, catalog.damaged))
            out.pruned_files, out.pruned_bytes = len(plan.remove), plan.remove_bytes
        return out
    with store_lock(store, host, exclusive=do_prune, purpose="custode forget"):
        catalog = load(store, host, warn)
        refuse_clash(catalog.snapshots, host, machine, "forget")
        out = Forgotten(apply(policy, catalog.snapshots))
        for snap in out.decision.remove:
            store.delete(snap.key)
        if do_prune:
            plan = plan_prune(store, host, Catalog(out.decision.keep, catalog.damaged))
            out.pruned_bytes = plan.remove_bytes
            out.pruned_files = prune(store, plan, progress)
            out.pruned_files += store.remove_abandoned(f"hosts/{host}/")
    return out
