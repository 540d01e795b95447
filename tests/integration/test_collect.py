"""`omni collect` on loopback, driven by the real SDKs, against the real broker.

Segment's Python library (``segment-analytics-python``) and RudderStack's (``rudder-sdk-python``)
send to a collector process; what lands on the channel topics and on ``deadletter`` is read back
from the broker. Nothing here mocks Kafka: the one test of a broker that does not answer puts the
fault proxy (``pipeline.chaos.proxy``) between the collector and a broker of its own.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from pipeline.chaos.proxy import FaultProxy
from pipeline.collect.process import CollectorProcess
from pipeline.ops.broker import EmbeddedBroker, free_port
from pipeline.settings import Settings
from tests.helpers import Read, create_topics, read_json, read_topic

WEB_KEY, APP_KEY = "it-web-write-key", "it-app-write-key"


def write_sources(tmp_path: Path) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n"
        f"  - {{name: web shop, channel: web, write_keys: [{WEB_KEY}]}}\n"
        f"  - {{name: app, channel: app, write_keys: [{APP_KEY}]}}\n"
    )
    return path


@pytest.fixture
async def collector(settings: Settings, tmp_path: Path) -> Iterator[CollectorProcess]:
    await create_topics(settings)
    process = CollectorProcess.start(settings, tmp_path / "collect.log", write_sources(tmp_path))
    try:
        yield process  # type: ignore[misc]
    finally:
        process.stop()


class Errors(list):  # type: ignore[type-arg]
    """What an SDK reports through its on_error callback."""

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        self.append((error, batch))

    def __bool__(self) -> bool:
        return True  # the SDKs call `on_error` only if it is truthy, and an empty list is not


def segment(url: str, key: str = WEB_KEY, **options: Any) -> tuple[SegmentClient, Errors]:
    errors = Errors()
    options = {"gzip": True, "upload_interval": 0.1, "max_retries": 6, **options}
    return SegmentClient(key, host=url, on_error=errors, **options), errors


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


ORDER = {"order_id": "O-77", "currency": "DKK", "total": 1899.0,
         "products": [{"product_id": "VAC-100", "sku": "VAC-100", "price": 1899.0, "quantity": 1, "category": "floorcare"}]}  # fmt: skip


async def test_segments_python_sdk_calls_become_events_on_the_sources_channel(settings: Settings, collector: CollectorProcess) -> None:
    client, errors = segment(collector.url)
    sent = [
        client.identify("C-anna", {"email": "Anna@Example.dk", "phone": "+45 20 12 34 56", "locale": "da-DK"}, anonymous_id="ck-1"),
        client.page(anonymous_id="ck-1", name="Home", properties={"path": "/"}),
        client.track(anonymous_id="ck-1", event="Product Viewed", properties={"product_id": "VAC-100", "price": 1899.0}),
        client.track(anonymous_id="ck-1", user_id="C-anna", event="Product Added", properties={"sku": "VAC-100", "price": 1899.0}),
        client.track(user_id="C-anna", anonymous_id="ck-1", event="Order Completed", properties=ORDER),
    ]
    unmapped = client.track(user_id="C-anna", event="Coupon Applied", properties={"coupon": "X"})
    await asyncio.to_thread(client.shutdown)
    assert errors == []

    events = await read_json(settings, "channel.web", until=lambda got: len(got) >= 5)
    assert [e["event_id"] for e in events] == [msg["messageId"] for _, msg in sent]  # one key (ck-1): one partition, in order
    assert [e["type"] for e in events] == ["signup", "page_view", "product_view", "add_to_cart", "purchase"]
    assert events[0]["identifiers"] == {"customer_id": "C-anna", "cookie_id": "ck-1", "email": "Anna@Example.dk", "phone": "+45 20 12 34 56"}
    assert events[0]["properties"] == {"locale": "da-DK"}
    assert events[4]["properties"]["items"] == [{"sku": "VAC-100", "qty": 1, "price": 1899.0, "category": "floorcare"}]
    (letter,) = await read_topic(settings, "deadletter", until=lambda got: len(got) >= 1)
    assert letter.headers["dlq.reason"] == b"unmapped_event" and letter.headers["dlq.source"] == b"web shop"
    assert orjson.loads(letter.value or b"")["messageId"] == unmapped[1]["messageId"]  # the call as it was sent
    assert collector.sample("omni_collect_requests_total", status="200") >= 1


async def test_rudderstacks_python_sdk_to_the_app_source(settings: Settings, collector: CollectorProcess) -> None:
    errors = Errors()
    client = RudderClient(APP_KEY, host=collector.url, on_error=errors, upload_interval=0.1)  # gzip is its default
    sent = [
        client.identify("C-bo", {"email": "bo@example.dk"}, anonymous_id="dev-bo"),
        client.screen("C-bo", name="Cart", anonymous_id="dev-bo"),
        client.track("C-bo", "Order Completed", ORDER, anonymous_id="dev-bo"),
    ]
    await asyncio.to_thread(client.shutdown)
    assert errors == []
    events = await read_json(settings, "channel.app", until=lambda got: len(got) >= 3)
    assert [e["event_id"] for e in events] == [msg["messageId"] for _, msg in sent]
    assert [e["type"] for e in events] == ["login", "page_view", "purchase"]
    assert all(e["channel"] == "app" and e["identifiers"]["device_id"] == "dev-bo" for e in events)


async def test_every_rejection_reaches_the_dead_letter_topic_with_its_reason(settings: Settings, collector: CollectorProcess) -> None:
    url = f"{collector.url}/v1"
    call = orjson.dumps({"messageId": "m-1", "userId": "C1", "event": "Signed In", "type": "track"})
    big = orjson.dumps({"messageId": "m-2", "userId": "C1", "event": "Signed In", "properties": {"x": "y" * 40_000}})
    huge_batch = orjson.dumps({"batch": [orjson.loads(call)] * 3, "padding": "z" * 520_000})
    cases = [  # (what is sent, headers, the answer's status, the dead letter's reason)
        (call, basic("not-a-key"), 401, "unauthorized"),
        (call, {}, 401, "unauthorized"),
        (big, basic(WEB_KEY), 413, "oversized"),
        (b"{oops", basic(WEB_KEY), 400, "malformed_json"),
        (b"[1, 2]", basic(WEB_KEY), 400, "not_an_object"),
        (b"not gzip at all", {**basic(WEB_KEY), "Content-Encoding": "gzip"}, 400, "malformed_body"),
    ]
    for body, headers, status, reason in cases:
        got, answer = post(f"{url}/track", body, headers)
        assert (got, answer["code"]) == (status, reason), answer
    got, answer = post(f"{url}/batch", gzip.compress(huge_batch), {**basic(WEB_KEY), "Content-Encoding": "gzip"})
    assert (got, answer["code"]) == (413, "oversized")

    # A call the SDK sends and the collector refuses: 400 naming the field, which the SDK reports and does not retry.
    client, errors = segment(collector.url)
    client.track(user_id="C1", event="Order Completed", properties={"order_id": "O-1", "products": [{"sku": "VAC-100"}]})
    await asyncio.to_thread(client.shutdown)
    ((error, _),) = errors
    assert error.status == 400 and "batch[0].properties.products.0.price" in error.message

    letters = await read_topic(settings, "deadletter", until=lambda got: len(got) >= len(cases) + 2)
    reasons = [r.headers["dlq.reason"].decode() for r in letters]
    assert sorted(reasons) == sorted([c[3] for c in cases] + ["oversized", "invalid_call"])
    by_body = {r.value: r for r in letters}
    for body, _, _, reason in cases:
        if reason != "malformed_body":  # what was read of a body that is not the gzip it claims is not the body
            assert by_body[body].headers["dlq.reason"].decode() == reason  # the original bytes, each one
    assert by_body[huge_batch].headers["dlq.path"] == b"/v1/batch"  # gzip undone: the JSON as the SDK wrote it
    invalid = next(r for r in letters if r.headers["dlq.reason"] == b"invalid_call")
    assert orjson.loads(invalid.value or b"")["properties"]["order_id"] == "O-1"
    assert b"products.0.price" in invalid.headers["dlq.error"]
    assert await read_topic(settings, "channel.web", timeout_s=1.0) == []


async def test_a_retry_with_the_same_message_id_is_produced_with_the_same_event_id(settings: Settings, collector: CollectorProcess) -> None:
    client, errors = segment(collector.url, sync_mode=True)  # every call a request of its own
    from datetime import datetime, timezone

    at = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
    for _ in range(2):  # the SDK's own retry sends the same message again
        client.track(user_id="C1", event="Product Viewed", properties={"sku": "PRN-300"}, message_id="retry-1", timestamp=at)
    batch = orjson.dumps({"batch": [{"type": "track", "messageId": "retry-1", "userId": "C1", "event": "Product Viewed",
                                     "properties": {"sku": "PRN-300"}, "timestamp": at.isoformat()}]})  # fmt: skip
    assert post(f"{collector.url}/v1/batch", batch, basic(WEB_KEY))[0] == 200
    assert errors == []
    records = await read_topic(settings, "channel.web", until=lambda got: len(got) >= 3)
    assert [orjson.loads(r.value or b"")["event_id"] for r in records] == ["retry-1"] * 3
    assert len({r.value for r in records}) == 1 and len({(r.key, r.partition) for r in records}) == 1


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP")), reason="the proxy needs a broker it starts itself")
async def test_a_broker_that_does_not_answer_gets_503_and_the_sdk_retries_until_it_does(tmp_path: Path) -> None:
    proxy_port = free_port()
    with EmbeddedBroker(Settings(), advertised_port=proxy_port) as broker:
        proxy = await FaultProxy("127.0.0.1", broker.port, listen_port=proxy_port).start()
        settings = Settings(bootstrap=f"127.0.0.1:{proxy_port}", topic_prefix="stall.", state_dir=tmp_path / "state",
                            collect_ack_timeout_s=1.0)  # fmt: skip
        await create_topics(settings)
        # In a thread: the proxy runs on this loop, and the collector's producer connects through it while it starts.
        process = await asyncio.to_thread(CollectorProcess.start, settings, tmp_path / "collect.log", write_sources(tmp_path))
        try:
            proxy.pause()  # the broker stops answering: no acknowledgement comes
            client, errors = segment(process.url, upload_size=10)
            sent = [client.track(user_id=f"C{i}", event="Signed In")[1]["messageId"] for i in range(25)]
            flushed = asyncio.ensure_future(asyncio.to_thread(client.shutdown))
            deadline = time.monotonic() + 30
            while await asyncio.to_thread(process.sample, "omni_collect_requests_total", status="503") < 2:
                assert time.monotonic() < deadline, "no 503 while the broker was stalled"
                await asyncio.sleep(0.2)
            proxy.resume()
            await asyncio.wait_for(flushed, timeout=60)
            assert errors == []
            records = await read_topic(settings, "channel.web", until=lambda got: {_id(r) for r in got} >= set(sent), timeout_s=20)
            # Every call arrived; a batch the broker took after its 503 was written again by the retry, with the same ids.
            assert {_id(r) for r in records} == set(sent)
            assert await asyncio.to_thread(process.sample, "omni_collect_requests_total", status="200") >= 3
        finally:
            proxy.resume()
            await asyncio.to_thread(process.stop)
            await proxy.stop()


def _id(record: Read) -> str:
    return str(orjson.loads(record.value or b"")["event_id"])
