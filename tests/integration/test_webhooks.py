"""Webhooks through the embedded API against a real local HTTP receiver: signed payloads,
retries, filters, a dead receiver, registrations that survive a restart, bad registrations,
and exactly-once delivery with two nodes on one PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor, ValidationError, WebhookNotFoundError
from conveyor.plugins.webhooks import WebhookSink
from tests.conftest import PG_URL
from tests.webhook_receiver import receiving

pytestmark = pytest.mark.anyio
FAST_RETRIES = {"webhook_retry_base_ms": 10, "maintenance": False, "plugin_autoload": False}


@asynccontextmanager
async def node(url: str, **settings: Any) -> AsyncIterator[Conveyor]:
    async with Conveyor(url, **{**FAST_RETRIES, **settings}) as app:
        yield app


def sink_of(app: Conveyor) -> WebhookSink:
    [sink] = [s for s in app.events.sinks if isinstance(s, WebhookSink)]
    return sink


async def settled(*apps: Conveyor) -> None:
    """Until every delivery scheduled so far has finished (delivered or given up)."""
    with anyio.fail_after(30):
        while any(sink_of(app).pending for app in apps):
            await anyio.sleep(0.01)


def counter(app: Conveyor, name: str, **labels: str) -> float:
    text = app.metrics.render()
    assert text is not None
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_payload_is_signed_with_the_secret_and_names_event_and_webhook(file_url: str) -> None:
    with receiving() as receiver:
        async with node(file_url) as app:
            hook = await app.add_webhook({"url": receiver.url, "secret": "s3cret", "events": ["job.pushed"]})
            job_id = await app.push("mail", "send", {"to": "a@example.com"})
            [got] = await receiver.wait(lambda r: len(r) >= 1)
    assert got.path == "/hook"
    expected = "sha256=" + hmac.new(b"s3cret", got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.headers["X-Conveyor-Signature"], expected)
    assert got.headers["X-RustQueue-Signature"] == expected
    forged = "sha256=" + hmac.new(b"other", got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Conveyor-Signature"] != forged
    assert got.headers["X-Conveyor-Event"] == got.headers["X-RustQueue-Event"] == "job.pushed"
    assert got.headers["X-Conveyor-Webhook-Id"] == str(hook.id)
    assert got.headers["Content-Type"] == "application/json"
    body = json.loads(got.body)
    assert body["event"] == "job.pushed" and body["webhook_id"] == str(hook.id)
    assert body["data"] == {"job_id": str(job_id), "queue": "mail"}
    assert body["timestamp"].endswith("Z")


async def test_without_a_secret_no_signature_is_sent(file_url: str) -> None:
    with receiving() as receiver:
        async with node(file_url) as app:
            await app.add_webhook({"url": receiver.url})
            await app.push("mail", "send")
            [got] = await receiver.wait(lambda r: len(r) >= 1)
    assert "X-Conveyor-Signature" not in got.headers
    assert got.headers["X-Conveyor-Event"] == "job.pushed"


async def test_a_failed_delivery_is_retried_with_the_same_signed_body(file_url: str) -> None:
    with receiving(statuses=[500, 503]) as receiver:
        async with node(file_url) as app:
            await app.add_webhook({"url": receiver.url, "secret": "k"})
            await app.push("mail", "send")
            got = await receiver.wait(lambda r: len(r) >= 3)
            await settled(app)
            assert counter(app, "conveyor_webhook_deliveries_total", result="retried") == 2
            assert counter(app, "conveyor_webhook_deliveries_total", result="delivered") == 1
            assert counter(app, "conveyor_webhook_deliveries_total", result="failed") == 0
    assert len({r.body for r in got}) == 1  # the same event, not three
    assert len({r.headers["X-Conveyor-Signature"] for r in got}) == 1


async def test_delivery_gives_up_after_the_configured_retries(file_url: str) -> None:
    with receiving(default=500) as receiver:
        async with node(file_url, webhook_retries=3) as app:
            await app.add_webhook({"url": receiver.url})
            await app.push("mail", "send")
            await receiver.wait(lambda r: len(r) >= 4)
            await settled(app)
            assert counter(app, "conveyor_webhook_deliveries_total", result="failed") == 1
            assert counter(app, "conveyor_webhook_deliveries_total", result="retried") == 3
            # a later event is delivered again: one dead event does not disable the webhook
            receiver.default = 200
            await app.push("mail", "again")
            await receiver.wait(lambda r: len(r) >= 5)
        assert len(receiver.received) == 5


async def test_a_refused_connection_counts_as_a_failed_attempt(file_url: str) -> None:
    with receiving() as receiver:
        dead_url = receiver.url
    async with node(file_url, webhook_retries=1) as app:
        await app.add_webhook({"url": dead_url})
        await app.push("mail", "send")
        with anyio.fail_after(30):
            while counter(app, "conveyor_webhook_deliveries_total", result="failed") < 1:
                await anyio.sleep(0.01)
        assert counter(app, "conveyor_webhook_deliveries_total", result="retried") == 1
        assert counter(app, "conveyor_webhook_deliveries_total", result="delivered") == 0


async def test_a_receiver_that_never_answers_times_out_and_is_retried(file_url: str) -> None:
    with receiving() as receiver:
        receiver.hold()
        async with node(file_url, webhook_timeout_s=0.2, webhook_retries=1) as app:
            await app.add_webhook({"url": receiver.url})
            await app.push("mail", "send")
            with anyio.fail_after(30):
                while counter(app, "conveyor_webhook_deliveries_total", result="failed") < 1:
                    await anyio.sleep(0.01)
            assert counter(app, "conveyor_webhook_deliveries_total", result="retried") == 1
            assert len(receiver.received) == 2  # both attempts reached it; neither got an answer in time


async def test_a_receiver_trickling_its_answer_is_timed_out_on_the_whole_attempt(file_url: str) -> None:
    """``webhook_timeout_s`` bounds the attempt, not each read: an answer sent a byte at a time
    must not hold a delivery slot for as long as the receiver likes."""
    with receiving() as receiver:
        receiver.trickle_s = 0.1  # 20 bytes: 2 s in all, never 0.3 s without a byte
        async with node(file_url, webhook_timeout_s=0.3, webhook_retries=0) as app:
            await app.add_webhook({"url": receiver.url})
            await app.push("mail", "send")
            await receiver.wait(lambda r: len(r) >= 1)
            await settled(app)
            assert counter(app, "conveyor_webhook_deliveries_total", result="failed") == 1
            assert counter(app, "conveyor_webhook_deliveries_total", result="delivered") == 0


async def test_a_webhook_deleted_while_a_delivery_waits_to_retry_gets_no_more_attempts(file_url: str) -> None:
    with receiving(default=500) as receiver:
        async with node(file_url, webhook_retry_base_ms=300, webhook_retries=3) as app:
            hook = await app.add_webhook({"url": receiver.url})
            await app.push("mail", "send")
            await receiver.wait(lambda r: len(r) >= 1)
            await app.remove_webhook(hook.id)
            await settled(app)
            assert len(receiver.received) == 1
            assert counter(app, "conveyor_webhook_deliveries_total", result="retried") == 0


async def test_filters_by_event_and_queue_in_either_spelling(file_url: str) -> None:
    with receiving() as filtered, receiving() as everything:
        async with node(file_url) as app:
            await app.add_webhook({"url": filtered.url, "events": ["job_completed", "job.dlq"], "queues": ["a"]})
            await app.add_webhook({"url": everything.url})
            for queue in ("a", "b"):
                await app.push(queue, "x", max_attempts=1)
                await app.push(queue, "y")
                first, second = await app.pull(queue, 2)
                await app.fail(first.id, "boom")
                await app.ack(second.id)
            # pushed x2, failed, dlq, completed per queue
            await everything.wait(lambda r: len(r) >= 10)
            await settled(app)
    got = Counter((r.json["event"], r.json["data"]["queue"]) for r in filtered.received)
    assert got == Counter({("job.completed", "a"): 1, ("job.dlq", "a"): 1})


async def test_a_dead_receiver_never_holds_up_pushes(file_url: str) -> None:
    with receiving() as receiver:
        receiver.hold()  # accepts and never answers until released
        async with node(file_url, webhook_concurrency=2, webhook_max_pending=20, webhook_timeout_s=60) as app:
            await app.add_webhook({"url": receiver.url})
            ids = [await app.push("mail", f"job-{i}") for i in range(200)]
            # every push returned while the receiver held the first requests
            await receiver.wait(lambda r: len(r) >= 2)
            sink = sink_of(app)
            with anyio.fail_after(30):  # until the sink has seen all 200 events
                while sink.pending + sink.dropped < 200:
                    await anyio.sleep(0.01)
            assert receiver.held == len(receiver.received) <= 2
            assert len(ids) == 200 and (await app.stats("mail")).waiting == 200
            assert sink.pending == 20
            assert sink.dropped == 180
            assert counter(app, "conveyor_webhook_deliveries_total", result="dropped") == 180
            receiver.release()
            await receiver.wait(lambda r: len(r) >= 20)
            await settled(app)
        assert len(receiver.received) == 20


async def test_registrations_survive_a_restart_and_keep_their_secret(file_url: str) -> None:
    with receiving() as receiver:
        async with node(file_url) as app:
            hook = await app.add_webhook(
                {"url": receiver.url, "events": ["job_pushed"], "queues": ["q"], "secret": "k"}
            )
        async with node(file_url) as app:
            [again] = await app.webhooks()
            assert again.to_wire() == hook.to_wire()
            assert again.to_wire()["has_secret"] is True and "secret" not in again.to_wire()
            await app.push("q", "after-restart")
            [got] = await receiver.wait(lambda r: len(r) >= 1)
            assert got.headers["X-Conveyor-Signature"].startswith("sha256=")
            await app.remove_webhook(hook.id)
            assert await app.webhooks() == []
            with pytest.raises(WebhookNotFoundError) as err:
                await app.get_webhook(hook.id)
            assert err.value.code == "WEBHOOK_NOT_FOUND" and err.value.http_status == 404
            with pytest.raises(WebhookNotFoundError):
                await app.remove_webhook(hook.id)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"url": "ftp://example.com/x"}, "url", "http or https"),
        ({"url": "file:///etc/passwd"}, "url", "http or https"),
        ({"url": "javascript:alert(1)"}, "url", "http or https"),
        ({"url": "http:///nohost"}, "url", "no host"),
        ({"url": "http://example.com:99999/"}, "url", "malformed"),
        ({"url": "http://xn--a.com/"}, "url", "malformed"),  # bad IDNA: the client would refuse it
        ({"url": "http://127.0.0.1:9/a\x01b"}, "url", "control characters"),
        ({"url": "http://exa mple.com/"}, "url", "spaces"),
        ({"url": "http://x.test/" + "a" * 3000}, "url", "limit"),
        ({"url": 42}, "url", "string"),
        ({"url": "http://x.test/", "events": ["job.exploded"]}, "events[0]", "unknown event"),
        ({"url": "http://x.test/", "events": "job.pushed"}, "events", "list"),
        ({"url": "http://x.test/", "queues": ["bad queue"]}, "queues[0]", "invalid"),
        ({"url": "http://x.test/", "secret": ""}, "secret", "empty"),
        ({"url": "http://x.test/", "colour": "red"}, "colour", "unknown field"),
        ({"events": ["job.pushed"]}, "url", "required"),
    ],
)
async def test_bad_registrations_are_refused_by_field_and_nothing_is_stored(
    file_url: str, spec: dict[str, Any], field: str, words: str
) -> None:
    async with node(file_url) as app:
        with pytest.raises(ValidationError) as err:
            await app.add_webhook(spec)
        assert err.value.field == field
        assert words in err.value.message.lower()
        assert await app.webhooks() == []


async def test_the_allow_list_limits_destination_hosts(file_url: str) -> None:
    async with node(file_url, webhook_allowed_hosts=["hooks.example.com", "*.internal.test"]) as app:
        await app.add_webhook({"url": "https://hooks.example.com/a"})
        await app.add_webhook({"url": "http://ci.internal.test:8080/b"})
        for refused in ("https://evil.example.net/", "http://internal.test/", "http://hooks.example.com.evil.net/"):
            with pytest.raises(ValidationError) as err:
                await app.add_webhook({"url": refused})
            assert err.value.field == "url" and "webhook_allowed_hosts" in err.value.message
        assert len(await app.webhooks()) == 2


async def test_a_host_no_longer_allowed_is_not_sent_to_and_nothing_breaks(file_url: str) -> None:
    with receiving() as receiver:
        async with node(file_url) as app:
            await app.add_webhook({"url": receiver.url})
        async with node(file_url, webhook_allowed_hosts=["hooks.example.com"]) as app:
            await app.push("mail", "send")
            with anyio.fail_after(30):
                while counter(app, "conveyor_webhook_deliveries_total", result="failed") < 1:
                    await anyio.sleep(0.01)
            await app.push("mail", "still works")
    assert receiver.received == []


async def test_closing_lets_pending_deliveries_finish(file_url: str) -> None:
    with receiving() as receiver:
        async with node(file_url) as app:
            await app.add_webhook({"url": receiver.url, "events": ["job.pushed"]})
            for i in range(5):
                await app.push("mail", f"job-{i}")
        # closed at once after the pushes: the sink's buffer and its deliveries were drained
        assert len(receiver.received) == 5


@pytest.mark.postgres
async def test_the_shared_log_hands_each_event_to_one_claimer(pg_schema: str) -> None:
    async with node(pg_schema, disable_plugins=["webhooks", "metrics", "http"]) as app:
        log = app.storage.event_log
        assert log is not None
        assert await log.claim("test", 10) == []  # a new consumer starts at the newest event
        await log.append([{"n": i} for i in range(5)], 0)
        first, second = await log.claim("test", 3), await log.claim("test", 3)
        assert [p["n"] for _, p in first] == [0, 1, 2] and [p["n"] for _, p in second] == [3, 4]
        assert await log.claim("test", 3) == []
        assert [p["n"] for _, p in await log.read(first[-1][0], 10)] == [3, 4]
        assert await log.prune(1) == 5 and await log.read(0, 10) == []


@pytest.mark.postgres
async def test_two_nodes_on_postgresql_deliver_each_event_exactly_once(pg_schema: str) -> None:
    with receiving() as receiver:
        async with node(pg_schema) as a, node(pg_schema) as b:
            await a.add_webhook({"url": receiver.url, "events": ["job.pushed", "job.completed"]})
            ids = [await (a if i % 2 else b).push("shared", f"job-{i}") for i in range(40)]
            for job in await a.pull("shared", 20):
                await b.ack(job.id)  # completed on the node that did not pull it
            for job in await b.pull("shared", 20):
                await a.ack(job.id)
            await receiver.wait(lambda r: len(r) >= 80)
            await caught_up(pg_schema)
            await settled(a, b)
    seen = Counter((r.json["event"], r.json["data"]["job_id"]) for r in receiver.received)
    expected = {(event, str(job_id)) for job_id in ids for event in ("job.pushed", "job.completed")}
    assert set(seen) == expected
    assert set(seen.values()) == {1}, [key for key, n in seen.items() if n > 1]


async def caught_up(pg_url: str) -> None:
    """Until the webhook sink's shared cursor has passed every logged event."""
    schema = pg_url.rsplit("schema=", 1)[1]
    with anyio.fail_after(30):
        while True:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                row = conn.execute(
                    f'SELECT (SELECT max(seq) FROM "{schema}".conveyor_events),'
                    f' (SELECT seq FROM "{schema}".conveyor_event_consumers WHERE name = %s)',
                    ("sink:webhooks",),
                ).fetchone()
            assert row is not None
            if row[0] is not None and row[1] == row[0]:
                return
            await anyio.sleep(0.05)


@pytest.mark.postgres
async def test_with_no_webhook_the_shared_log_is_claimed_in_bulk_and_old_events_are_not_sent(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While no webhook is registered, appends do not each cost a claim: the sink says it is
    idle and its events are claimed later, together. A webhook registered afterwards is sent
    only events raised since: those claimed together with them from before are left out."""
    from conveyor.plugins import webhooks

    monkeypatch.setattr(webhooks, "CACHE_S", 3600.0)  # the empty list read first stays fresh
    with receiving() as receiver:
        async with node(pg_schema, disable_plugins=["http", "metrics"]) as app:
            log = app.storage.event_log
            assert log is not None
            claims = 0
            claim = log.claim

            async def counting(consumer: str, limit: int) -> Any:
                nonlocal claims
                claims += 1
                return await claim(consumer, limit)

            monkeypatch.setattr(log, "claim", counting)
            await app.push("q", "first")
            with anyio.fail_after(30):
                while not sink_of(app).idle:  # the first events were claimed, the list read
                    await anyio.sleep(0.01)
            before = claims
            old = [await app.push("q", f"old-{i}") for i in range(30)]
            with anyio.fail_after(30):
                while await log.last_seq() < 31:
                    await anyio.sleep(0.01)
            assert claims == before  # thirty appends, no claim
            await app.add_webhook({"url": receiver.url, "events": ["job.pushed"]})
            new = await app.push("q", "new")
            [got] = await receiver.wait(lambda r: len(r) >= 1)
            await caught_up(pg_schema)
            await settled(app)
    assert got.json["data"]["job_id"] == str(new)
    assert {r.json["data"]["job_id"] for r in receiver.received} == {str(new)}
    assert len(old) == 30
