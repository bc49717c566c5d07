"""The maintenance sweep: fire due schedules, promote due delayed jobs, fail timed-out and
stalled jobs, expire TTLs, and drop events older than ``event_retention_s`` from a shared event
log.

Runs in every process that opens a `Conveyor` (embedded and server mode alike). With several
nodes, `Storage.exclusive` lets one node sweep at a time; every step re-checks its condition
under row lock, so a sweep that runs twice changes nothing the second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from . import lifecycle

if TYPE_CHECKING:
    from .app import Conveyor

log = logging.getLogger(__name__)
SWEEP_LIMIT = 1000


@dataclass
class SweepReport:
    promoted: int = 0
    stalled: int = 0
    timed_out: int = 0
    expired: int = 0
    pruned_events: int = 0
    fired: int = 0
    """Jobs pushed by due schedules."""
    skipped: bool = False


async def sweep(app: Conveyor) -> SweepReport:
    """One pass. Returns what it changed (``skipped`` if another node holds the lock)."""
    storage = app.storage
    report = SweepReport()
    async with storage.exclusive("maintenance") as held:
        if not held:
            report.skipped = True
            return report
        now = app.now_ms()
        report.fired = await app.fire_schedules(now, SWEEP_LIMIT)
        report.promoted = await storage.promote_delayed(now)
        stall_before = now - app.settings.stall_timeout_ms
        overdue = await storage.find_overdue(now, stall_before, SWEEP_LIMIT)
        steps = (
            ("stalled", lifecycle.decide_stalled(stall_before, now)),
            ("timed_out", lifecycle.decide_timed_out(now)),
            ("expired", lifecycle.decide_expired(now)),
        )
        for kind, decide in steps:
            if overdue[kind]:
                changed = await app.apply_failures(overdue[kind], decide, now)
                setattr(report, kind, changed)
        if storage.event_log is not None:
            report.pruned_events = await storage.event_log.prune(now - int(app.settings.event_retention_s * 1000))
    return report


async def run_forever(app: Conveyor) -> None:
    interval = app.settings.maintenance_interval_ms / 1000
    while True:
        try:
            await sweep(app)
        except Exception:  # noqa: BLE001 - keep sweeping; the next pass retries
            log.exception("maintenance sweep failed")
        await anyio.sleep(interval)
