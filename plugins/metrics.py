"""Built-in ``metrics`` plugin: Conveyor's Prometheus metrics, fed by the event-sink hook.

When it loads it installs a private Prometheus registry unless the host application installed
its own recorder first (``app.metrics.install_external_prometheus_recorder(registry)`` or
``install_external_recorder(recorder)`` before ``open()``). Its sink counts this node's events
per queue; queue depth gauges are read from storage before each scrape of ``/metrics`` and, when
the host installed its own recorder, every ``metrics_refresh_s``. The kernel records pulls and command latency, the ``http`` plugin request metrics and
the ``webhooks`` plugin delivery outcomes, all through ``app.metrics``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from conveyor.hookspecs import hookimpl
from conveyor.models import Event, QueueCounts

if TYPE_CHECKING:
    from conveyor import Conveyor

COUNTED = {
    "job.pushed": "jobs_pushed_total",
    "job.completed": "jobs_completed_total",
    "job.failed": "jobs_failed_total",
    "job.dlq": "jobs_dlq_total",
    "job.cancelled": "jobs_cancelled_total",
}
STATES = tuple(QueueCounts.model_fields)


def _tally(events: Sequence[Event]) -> dict[tuple[str, str], int]:
    """How many events there are of each name and queue. One operation's events mostly share
    both, and seeing that is cheaper than counting each (25 against 167 ns per event)."""
    if not events:
        return {}
    name, queue = events[0].event, events[0].queue
    for event in events:
        if event.event != name or event.queue != queue:
            return Counter((event.event, event.queue) for event in events)
    return {(name, queue): len(events)}


@hookimpl
def conveyor_event_sinks(app: Conveyor) -> MetricsSink:
    app.metrics.install_default_prometheus_if_unset()
    sink = MetricsSink(app)
    app.metrics.set_refresher("queue_jobs", sink.refresh_queue_depths)
    return sink


class MetricsSink:
    name = "metrics"
    scope = "node"  # each node counts what it did; Prometheus sums the nodes

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    async def handle(self, event: Event) -> None:
        await self.handle_batch([event])

    async def handle_batch(self, events: Sequence[Event]) -> None:
        """One increment per counter and queue: a batch of 1,000 acks is one ``inc(1000)``."""
        for (name, queue), amount in _tally(events).items():
            if (metric := COUNTED.get(name)) is not None:
                self.app.metrics.inc(metric, queue, amount=amount)

    async def run(self) -> None:
        """Keep the depth gauges fresh for a recorder the host reads itself. The private
        registry is read only by ``/metrics``, which refreshes them first: no count query runs
        every few seconds in an embedded app nobody scrapes."""
        if not self.app.metrics.external:
            return
        while True:
            await self.app.metrics.refresh()
            await anyio.sleep(self.app.settings.metrics_refresh_s)

    async def refresh_queue_depths(self) -> None:
        for info in await self.app.queues():
            counts = info.counts.model_dump()
            for state in STATES:
                self.app.metrics.set("queue_jobs", counts[state], info.name, state)
