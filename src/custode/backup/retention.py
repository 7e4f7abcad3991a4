"""Which snapshots to keep: restic's ``forget`` policy, bucket by bucket.

Snapshots are walked newest first. Each ``keep_*`` rule with a count left keeps a
snapshot when its bucket (the hour, day, ISO week, month or year it was taken in; for
``last``, the snapshot itself) differs from the last bucket that rule kept, and — as
restic does since 0.16 — also keeps the oldest snapshot while the rule has counts left.
``keep_within`` keeps everything taken within that duration of the newest snapshot not
dated in the future (and every snapshot dated in the future: a skewed clock never makes
retention drop current snapshots). A count of -1 means unlimited. Buckets use UTC.

"Newest" is by the writing machine's sequence number (``backup/freshness.py``), not by
wall time: one backup taken while the clock was a year ahead is not the newest for a year.

Why a snapshot is kept is data (:class:`Reason`: the rule and the period it keeps, as a
person reads it: ``daily 2026-12-04``, ``weekly 2026-W49``), rendered by ``str()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from custode.backup.freshness import in_future, order_key, taken
from custode.backup.manifest import Snapshot


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float = 0.0  # seconds

    def empty(self) -> bool:
        return not any((self.last, self.hourly, self.daily, self.weekly, self.monthly,
                        self.yearly, self.within))  # fmt: skip


@dataclass(frozen=True)
class Reason:
    """One rule keeping a snapshot: ``rule`` (``last``, ``hourly`` … ``yearly``,
    ``within``), the ``period`` it keeps the snapshot for (``2026-12-04``, ``2026-W49``,
    ``2026-12``, ``2026``; "" for ``last`` and ``within``), and ``oldest`` when it is kept
    as the oldest snapshot while the rule still had counts left."""

    rule: str
    period: str = ""
    oldest: bool = False

    def __str__(self) -> str:
        text = f"{self.rule} {self.period}" if self.period else self.rule
        return f"{text} (oldest)" if self.oldest else text


@dataclass
class Decision:
    keep: list[Snapshot] = field(default_factory=list)
    remove: list[Snapshot] = field(default_factory=list)
    reasons: dict[str, list[Reason]] = field(default_factory=dict)  # snapshot id -> rules


# each rule's bucket, as the period a person reads (ISO strings sort and compare alike)
_BUCKETS: dict[str, Callable[[datetime, int], str]] = {
    "last": lambda t, n: str(n),
    "hourly": lambda t, n: f"{t.date().isoformat()} {t.hour:02d}:00",
    "daily": lambda t, n: t.date().isoformat(),
    "weekly": lambda t, n: "{:04d}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t, n: f"{t.year:04d}-{t.month:02d}",
    "yearly": lambda t, n: f"{t.year:04d}",
}


def apply(policy: Policy, snapshots: Sequence[Snapshot], now: datetime | None = None) -> Decision:
    now = now or datetime.now(UTC)
    newest_first = sorted(snapshots, key=order_key(now), reverse=True)
    counts = {name: getattr(policy, name) for name in _BUCKETS}
    last: dict[str, str] = {}
    decision = Decision()
    if not newest_first:
        return decision
    present = [taken(s) for s in newest_first if not in_future(s, now)]
    horizon = (present[0] if present else now) - timedelta(seconds=policy.within)
    for nr, snap in enumerate(newest_first):
        why: list[Reason] = []
        for name, bucket in _BUCKETS.items():
            if counts[name] == 0:
                continue
            value = bucket(taken(snap), nr)
            new = name not in last or value != last[name]
            if new or nr == len(newest_first) - 1:
                why.append(Reason(name, "" if name == "last" else value, oldest=not new))
                last[name] = value
                if counts[name] > 0:
                    counts[name] -= 1
        if policy.within and taken(snap) > horizon:
            why.append(Reason("within"))
        if why:
            decision.keep.append(snap)
            decision.reasons[snap.snapshot_id] = why
        else:
            decision.remove.append(snap)
    return decision
