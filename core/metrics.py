"""`MetricsRegistry`: where Conveyor's metrics go, chosen by the host application.

Python analogues of RustQueue's recorder modes:

- `install_default_prometheus_if_unset` -- a private prometheus-client registry, served at
  ``/metrics`` (the built-in ``metrics`` plugin calls it when it loads);
- `install_external_prometheus_recorder` -- the host's own ``CollectorRegistry``: Conveyor's
  metrics appear in the host's scrape output (two apps given the same registry share them);
- `install_external_recorder` -- any object with ``counter``/``gauge``/``histogram`` factories
  returning prometheus-client-like metrics (``.labels(...).inc/set/observe``), to bridge to
  StatsD, OpenTelemetry and the like.

Until a recorder is installed every call is a no-op, so instrumented code never checks.
Metrics are declared once, in `METRICS`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .errors import PluginError

log = logging.getLogger(__name__)
PREFIX = "conveyor_"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    documentation: str
    labels: tuple[str, ...]


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("jobs_pushed_total", "counter", "Jobs pushed (follow-ups included).", ("queue",)),
    MetricSpec("jobs_pulled_total", "counter", "Jobs claimed by workers.", ("queue",)),
    MetricSpec("jobs_completed_total", "counter", "Jobs acked.", ("queue",)),
    MetricSpec("jobs_failed_total", "counter", "Failed attempts (retried or not).", ("queue",)),
    MetricSpec("jobs_dlq_total", "counter", "Jobs moved to the dead-letter queue.", ("queue",)),
    MetricSpec("jobs_cancelled_total", "counter", "Jobs cancelled.", ("queue",)),
    MetricSpec("queue_jobs", "gauge", "Jobs in a queue by state (refreshed periodically and on scrape).", ("queue", "state")),
    MetricSpec("operation_duration_seconds", "histogram", "Time to run one protocol command.", ("operation",)),
    MetricSpec("webhook_deliveries_total", "counter", "Webhook delivery attempts by outcome.", ("result",)),
    MetricSpec("events_dropped_total", "counter", "Events dropped because a sink's buffer was full.", ("sink",)),
    MetricSpec("http_requests_total", "counter", "HTTP requests by route template and status.", ("method", "route", "status")),
    MetricSpec("http_request_duration_seconds", "histogram", "HTTP request handling time.", ("method", "route")),
)  # fmt: skip


class Metric(Protocol):
    def labels(self, *values: str) -> Any: ...


class Recorder(Protocol):
    """What `install_external_recorder` accepts: factories of labelled metrics whose children
    have ``inc(amount)`` (counter), ``set(value)`` (gauge) and ``observe(value)`` (histogram).
    A child is asked for once per metric and label values, then kept (as prometheus-client's
    ``labels()`` returns the same child every time)."""

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Metric: ...

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str]) -> Metric: ...

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str]) -> Metric: ...


class PrometheusRecorder:
    """A `Recorder` over one prometheus-client ``CollectorRegistry``."""

    _KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def _make(self, kind: str, name: str, documentation: str, labelnames: Sequence[str]) -> Metric:
        metric: Metric = self._KINDS[kind](name, documentation, labelnames, registry=self.registry)
        return metric

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Metric:
        return self._make("counter", name, documentation, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str]) -> Metric:
        return self._make("gauge", name, documentation, labelnames)

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str]) -> Metric:
        return self._make("histogram", name, documentation, labelnames)


_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Metric]] = weakref.WeakKeyDictionary()
"""Conveyor's metrics per external registry: a registry refuses a name twice, so every app
installed on one registry records into the same metrics."""

Refresher = Callable[[], Awaitable[None]]


class MetricsRegistry:
    """One per `Conveyor` (``app.metrics``). Install one recorder, then record by spec name:
    ``app.metrics.inc("jobs_pushed_total", queue)``."""

    def __init__(self) -> None:
        self._recorder: Recorder | None = None
        self._prometheus: CollectorRegistry | None = None
        self._metrics: dict[str, Metric] = {}
        self._children: dict[tuple[str, ...], Any] = {}
        self._refreshers: dict[str, Refresher] = {}
        self.external = False
        """Whether the host installed the recorder: then someone else scrapes it, and gauges
        must be kept fresh between our own scrapes."""

    # -- installing ------------------------------------------------------------------------

    @property
    def installed(self) -> bool:
        return self._recorder is not None

    @property
    def prometheus_registry(self) -> CollectorRegistry | None:
        """The prometheus-client registry ``/metrics`` renders, if the recorder has one."""
        return self._prometheus

    def install_default_prometheus_if_unset(self) -> bool:
        """Install a private Prometheus registry unless a recorder is installed; returns
        whether it did."""
        if self._recorder is not None:
            return False
        self.install_external_prometheus_recorder(CollectorRegistry(auto_describe=True))
        self.external = False  # private: only our /metrics reads it, and it refreshes first
        return True

    def install_external_prometheus_recorder(self, registry: CollectorRegistry) -> None:
        """Record into the host's ``registry`` (which ``/metrics`` then renders whole)."""
        if not isinstance(registry, CollectorRegistry):
            raise PluginError(f"install_external_prometheus_recorder needs a CollectorRegistry, got {registry!r}")
        recorder = PrometheusRecorder(registry)
        shared = _SHARED.get(registry)
        if shared is None:
            shared = _SHARED[registry] = self._create(recorder)
        self._install(recorder, shared)
        self._prometheus = registry

    def install_external_recorder(self, recorder: Recorder) -> None:
        """Record through ``recorder``; ``/metrics`` then answers that no Prometheus registry
        is installed (the host scrapes or ships its own)."""
        missing = [m for m in ("counter", "gauge", "histogram") if not callable(getattr(recorder, m, None))]
        if missing:
            raise PluginError(f"recorder {recorder!r} lacks {', '.join(missing)}: see conveyor.metrics.Recorder")
        self._install(recorder, self._create(recorder))
        self._prometheus = None

    def _install(self, recorder: Recorder, metrics: dict[str, Metric]) -> None:
        if self._recorder is not None:
            raise PluginError("a metrics recorder is already installed for this Conveyor; install one before open()")
        self._recorder, self._metrics = recorder, metrics
        self._children.clear()
        self.external = True

    @staticmethod
    def _create(recorder: Recorder) -> dict[str, Metric]:
        metrics: dict[str, Metric] = {}
        for spec in METRICS:
            factory = getattr(recorder, spec.kind)
            try:
                metrics[spec.name] = factory(PREFIX + spec.name, spec.documentation, spec.labels)
            except ValueError as exc:  # prometheus-client: the name is taken in that registry
                raise PluginError(f"cannot register metric {PREFIX + spec.name}: {exc}") from None
        return metrics

    # -- recording -------------------------------------------------------------------------

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        if (child := self._child(name, labels)) is not None:
            child.inc(amount)

    def set(self, name: str, value: float, *labels: str) -> None:
        if (child := self._child(name, labels)) is not None:
            child.set(value)

    def observe(self, name: str, value: float, *labels: str) -> None:
        if (child := self._child(name, labels)) is not None:
            child.observe(value)

    def _child(self, name: str, labels: tuple[str, ...]) -> Any:
        """The labelled child, looked up once (``labels()`` takes a lock and hashes each time;
        this runs on every command)."""
        key = (name, *labels)
        if (child := self._children.get(key)) is None and (metric := self._metrics.get(name)) is not None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- values computed on demand ---------------------------------------------------------

    def set_refresher(self, name: str, refresh: Refresher) -> None:
        """Register (or replace: an app opened again) a coroutine function that updates gauges
        from their source; `refresh` runs every one (a scrape does, before rendering)."""
        self._refreshers[name] = refresh

    async def refresh(self) -> None:
        for refresh in list(self._refreshers.values()):
            try:
                await refresh()
            except Exception:  # noqa: BLE001 - stale gauges beat a failed scrape
                log.exception("metrics refresh failed")

    def render(self) -> bytes | None:
        """The Prometheus text exposition of the installed registry, or None without one."""
        return generate_latest(self._prometheus) if self._prometheus is not None else None


__all__ = ["METRICS", "MetricsRegistry", "PROMETHEUS_CONTENT_TYPE", "PrometheusRecorder", "Recorder"]
