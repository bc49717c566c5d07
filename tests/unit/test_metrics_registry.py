"""`MetricsRegistry` modes: the default private Prometheus registry, the host's own registry
(shared by several apps), an arbitrary recorder, and no recorder at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor, PluginError
from conveyor.metrics import METRICS, MetricsRegistry
from conveyor.plugins.http.api import build_api

pytestmark = pytest.mark.anyio


def sample(text: bytes, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def test_the_metrics_plugin_installs_a_private_registry_by_default() -> None:
    async with Conveyor("sqlite:///:memory:", maintenance=False, plugin_autoload=False) as app:
        await app.push("q", "a")
        await app.pull("q")
        await app.events.close()  # drain the sinks so the counters are final
        text = app.metrics.render()
    assert text is not None
    assert sample(text, "conveyor_jobs_pushed_total", queue="q") == 1
    assert sample(text, "conveyor_jobs_pulled_total", queue="q") == 1


async def test_event_counters_count_mixed_batches_by_name_and_queue() -> None:
    """The sink counts a batch whose events share name and queue at once, and any other batch
    event by event: every counter gets exactly its own events."""
    async with Conveyor("sqlite:///:memory:", maintenance=False, plugin_autoload=False) as app:
        await app.push_batch("q", [{"name": "a"}, {"name": "b"}, {"name": "c", "queue": "r"}])  # mixed queues
        await app.push_batch("q", [{"name": "d"}, {"name": "e"}])  # one name, one queue
        results = await app.ack_batch([{"id": job.id} for job in await app.pull("q", 4)])
        assert all(result.ok for result in results)
        doomed = await app.push("r", "f", max_attempts=1)
        await app.pull("r", 5)
        await app.fail(doomed, "boom")  # job.failed and job.dlq in one batch
        await app.events.close()
        text = app.metrics.render()
    assert text is not None
    expected = {("jobs_pushed_total", "q"): 4, ("jobs_pushed_total", "r"): 2, ("jobs_completed_total", "q"): 4,
                ("jobs_failed_total", "r"): 1, ("jobs_dlq_total", "r"): 1, ("jobs_completed_total", "r"): None}  # fmt: skip
    for (name, queue), count in expected.items():
        assert sample(text, f"conveyor_{name}", queue=queue) == count, (name, queue)


async def test_a_host_registry_receives_conveyors_metrics_and_can_be_shared() -> None:
    registry = CollectorRegistry()
    first, second = Conveyor("sqlite:///:memory:", maintenance=False), Conveyor("sqlite:///:memory:", maintenance=False)
    first.metrics.install_external_prometheus_recorder(registry)
    second.metrics.install_external_prometheus_recorder(registry)  # no "duplicated timeseries"
    async with first, second:
        await first.push("q", "a")
        await second.push("q", "b")
        await first.events.close()
        await second.events.close()
        assert first.metrics.prometheus_registry is registry
        transport = httpx.ASGITransport(app=build_api(first))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            served = (await client.get("/metrics")).content
    assert sample(generate_latest(registry), "conveyor_jobs_pushed_total", queue="q") == 2
    assert sample(served, "conveyor_jobs_pushed_total", queue="q") == 2


class ListRecorder:
    """A non-Prometheus backend: remembers every recorded value."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[str, ...], float]] = []

    def _metric(self, kind: str, name: str) -> Any:
        recorder = self

        class Child:
            def __init__(self, labels: tuple[str, ...]) -> None:
                self.labels = labels

            def inc(self, amount: float = 1) -> None:
                recorder.calls.append((kind, name, self.labels, amount))

            set = observe = inc

        class Metric:
            def labels(self, *values: str) -> Child:
                return Child(values)

        return Metric()

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Any:
        return self._metric("counter", name)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str]) -> Any:
        return self._metric("gauge", name)

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str]) -> Any:
        return self._metric("histogram", name)


async def test_an_external_recorder_gets_every_metric_and_metrics_route_says_so() -> None:
    recorder = ListRecorder()
    app = Conveyor("sqlite:///:memory:", maintenance=False, plugin_autoload=False)
    app.metrics.install_external_recorder(recorder)
    async with app:
        await app.push("q", "a")
        await app.events.close()
        transport = httpx.ASGITransport(app=build_api(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/metrics")
    assert ("counter", "conveyor_jobs_pushed_total", ("q",), 1) in recorder.calls
    assert response.status_code == 404 and response.json()["error"]["code"] == "NOT_FOUND"
    assert "install_external_recorder" in response.json()["error"]["message"]


def test_a_second_recorder_or_a_bad_one_is_refused() -> None:
    metrics = MetricsRegistry()
    with pytest.raises(PluginError, match="lacks counter, gauge, histogram"):
        metrics.install_external_recorder(object())  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="CollectorRegistry"):
        metrics.install_external_prometheus_recorder("registry")  # type: ignore[arg-type]
    assert metrics.install_default_prometheus_if_unset() is True
    assert metrics.install_default_prometheus_if_unset() is False  # already set: left alone
    with pytest.raises(PluginError, match="already installed"):
        metrics.install_external_recorder(ListRecorder())


def test_a_registry_already_holding_a_conveyor_name_is_a_clear_error() -> None:
    registry = CollectorRegistry()
    from prometheus_client import Counter

    Counter("conveyor_jobs_pushed", "someone else's", registry=registry)
    with pytest.raises(PluginError, match="conveyor_jobs_pushed_total"):
        MetricsRegistry().install_external_prometheus_recorder(registry)


async def test_without_the_metrics_plugin_nothing_is_recorded() -> None:
    async with Conveyor("sqlite:///:memory:", maintenance=False, disable_plugins=["metrics"]) as app:
        await app.push("q", "a")
        assert not app.metrics.installed and app.metrics.render() is None


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    for spec in METRICS:
        short = spec.name.removeprefix("jobs_")
        assert f"conveyor_{spec.name}" in docs or f"_{short}`" in docs, spec.name


async def test_depth_gauges_are_polled_only_for_a_host_installed_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.plugins.metrics import MetricsSink

    reads: list[str] = []
    original = MetricsSink.refresh_queue_depths

    async def counted(self: MetricsSink) -> None:
        reads.append("read")
        await original(self)

    monkeypatch.setattr(MetricsSink, "refresh_queue_depths", counted)
    async with Conveyor("sqlite:///:memory:", maintenance=False, plugin_autoload=False, metrics_refresh_s=0.01) as app:
        await app.push("q", "a")
        await anyio.sleep(0.2)  # twenty refresh periods
        assert reads == []  # private registry: nobody reads it between scrapes
        await app.metrics.refresh()  # what /metrics does before rendering
        assert reads == ["read"]
        assert sample(app.metrics.render() or b"", "conveyor_queue_jobs", queue="q", state="waiting") == 1

    recorder = ListRecorder()
    app = Conveyor("sqlite:///:memory:", maintenance=False, plugin_autoload=False, metrics_refresh_s=0.01)
    app.metrics.install_external_recorder(recorder)
    async with app:
        await app.push("q", "a")
        with anyio.fail_after(30):
            while ("gauge", "conveyor_queue_jobs", ("q", "waiting"), 1) not in recorder.calls:
                await anyio.sleep(0.01)
