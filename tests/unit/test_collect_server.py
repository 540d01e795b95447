"""The collector's HTTP answers (pipeline.collect.server) over loopback, with the broker replaced by a list.

Auth, limits, gzip, the error messages, and that every refused body is handed to the dead-letter
topic with its reason before the answer. What reaches a real broker: tests/integration/test_collect.py.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.collect.segment import Mapping, Translator
from pipeline.collect.server import Collector, aiohttp_app
from pipeline.collect.sink import Out
from pipeline.collect.sources import Source, Sources
from pipeline.ingest.validate import Validator
from pipeline.settings import PACKAGE_DATA, Settings

KEY = "web-key-123"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


class ListSink:
    """Acknowledges at once (or never, when ``stalled``): what a broker would have been sent."""

    def __init__(self) -> None:
        self.records: list[Out] = []
        self.stalled = False

    async def send(self, records: list[Out]) -> None:
        if self.stalled:
            await asyncio.sleep(3600)
        self.records.extend(records)

    def on(self, topic: str) -> list[Out]:
        return [r for r in self.records if r.topic == topic]

    def letters(self) -> list[tuple[str, bytes]]:
        return [(dict(r.headers)["dlq.reason"].decode(), r.value) for r in self.on("deadletter")]


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, ListSink, Collector]]:
    settings = Settings(collect_ack_timeout_s=0.2)
    sources = Sources([Source(name="shop", channel="web", write_keys=(KEY,))])
    sink = ListSink()
    collector = Collector(settings, sources, Translator(Mapping.load(PACKAGE_DATA / "segment.yaml"), Validator(settings)), sink)
    client = TestClient(TestServer(aiohttp_app(collector), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, sink, collector
    finally:
        await client.close()


def track(mid: str = "m-1", **change: Any) -> dict[str, Any]:
    return {"messageId": mid, "userId": "C1", "event": "Product Viewed", "properties": {"sku": "PRN-300"},
            "timestamp": "2026-12-07T10:00:00Z", **change}  # fmt: skip


async def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with client.post(path, data=data, headers=AUTH if headers is None else headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_call_is_answered_200_once_its_event_is_handed_over(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, collector = served
    for path in ("/v1/track", "/v1/t"):  # Segment's path, and analytics.js's
        status, body = await post(client, path, track())
        assert (status, body) == (200, {"success": True, "accepted": 1, "unmapped": 0})
    (first, second) = sink.on("channel.web")
    assert first.value == second.value and orjson.loads(first.value)["event_id"] == "m-1"
    assert collector.metrics.events.labels("web")._value.get() == 2


async def test_write_key_in_basic_auth_or_in_the_body_else_401_and_dead_lettered(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, _ = served
    assert (await post(client, "/v1/track", {**track(), "writeKey": KEY}, headers={}))[0] == 200
    status, body = await post(client, "/v1/track", track("m-2"), headers={})
    assert status == 401 and body["code"] == "unauthorized" and "no write key" in body["message"]
    wrong = {"Authorization": "Basic " + base64.b64encode(b"someone-else:").decode()}
    status, body = await post(client, "/v1/track", {**track("m-3"), "writeKey": KEY}, headers=wrong)  # the header decides
    assert status == 401 and "belongs to no source" in body["message"]
    assert (await post(client, "/v1/track", {**track("m-4"), "writeKey": "nope-nope"}, headers={}))[0] == 401
    assert [reason for reason, _ in sink.letters()] == ["unauthorized"] * 3
    assert orjson.loads(sink.letters()[1][1])["messageId"] == "m-3"  # the original body
    assert len(sink.on("channel.web")) == 1


async def test_gzip_bodies_are_read_and_a_broken_one_is_refused(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, _ = served
    status, _ = await post(client, "/v1/batch", gzip.compress(orjson.dumps({"batch": [{**track(), "type": "track"}]})),
                           headers={**AUTH, "Content-Encoding": "gzip"})  # fmt: skip
    assert status == 200 and len(sink.on("channel.web")) == 1
    status, body = await post(client, "/v1/track", b"this is not gzip", headers={**AUTH, "Content-Encoding": "gzip"})
    assert status == 400 and body["code"] == "malformed_body"
    assert [reason for reason, _ in sink.letters()] == ["malformed_body"]


async def test_size_limits_413_for_a_call_and_a_batch_and_a_call_within_a_batch(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, _ = served
    big = track(properties={"sku": "PRN-300", "blob": "x" * 33_000})
    status, body = await post(client, "/v1/track", big)
    assert status == 413 and body["code"] == "oversized" and "32768, the limit of a call" in body["message"]
    calls = [{**track(f"m-{i}"), "type": "track", "properties": {"sku": "PRN-300", "blob": "x" * 30_000}} for i in range(18)]
    status, body = await post(client, "/v1/batch", {"batch": calls})
    assert status == 413 and "the limit of a batch" in body["message"]
    # Gzip does not get around the limits: they count the JSON, not what travelled.
    status, _ = await post(client, "/v1/track", gzip.compress(orjson.dumps(big)), headers={**AUTH, "Content-Encoding": "gzip"})
    assert status == 413
    status, body = await post(client, "/v1/batch", {"batch": [{**track("ok"), "type": "track"}, {**big, "type": "track"}]})
    assert status == 400 and body["field"] == "batch[1]" and body["accepted"] == 1
    reasons = [reason for reason, _ in sink.letters()]
    assert reasons.count("oversized") == 4
    whole = [value for reason, value in sink.letters() if reason == "oversized"][0]
    assert orjson.loads(whole)["properties"]["blob"] == "x" * 33_000  # the original body, whole


async def test_bad_calls_get_400_naming_the_field_and_a_batch_keeps_its_good_calls(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, _ = served
    status, body = await post(client, "/v1/track", b"{not json")
    assert status == 400 and body["code"] == "malformed_json"
    status, body = await post(client, "/v1/track", [track()])
    assert status == 400 and body["code"] == "not_an_object"
    status, body = await post(client, "/v1/track", track(properties={"name": "no sku"}))
    assert status == 400 and body["field"] == "properties.sku" and body["message"].startswith("properties.sku: Product Viewed needs")
    batch = {"batch": [
        {**track("b-0"), "type": "track"},
        {**track("b-1"), "type": "track", "timestamp": "last tuesday"},
        {**track("b-2"), "type": "shout"},
        "not a call",
        {**track("b-4"), "type": "track", "event": "Coupon Applied"},
        {**track("b-5"), "type": "page", "name": "Home"},
    ]}  # fmt: skip
    status, body = await post(client, "/v1/batch", batch)
    assert status == 400 and (body["accepted"], body["unmapped"]) == (2, 1)
    assert [(e["field"], e["reason"]) for e in body["errors"]] == [
        ("batch[1].timestamp", "bad_timestamp"), ("batch[2].type", "invalid_call"), ("batch[3]", "invalid_call")]
    assert body["message"].startswith("batch[1].timestamp: ")
    assert [orjson.loads(r.value)["event_id"] for r in sink.on("channel.web")] == ["b-0", "b-5"]
    letters = sink.letters()
    assert [reason for reason, _ in letters] == ["malformed_json", "not_an_object", "invalid_call", "bad_timestamp",
                                                "invalid_call", "invalid_call", "unmapped_event"]  # fmt: skip
    assert letters[0][1] == b"{not json"  # the bytes as received
    assert orjson.loads(letters[-1][1])["event"] == "Coupon Applied"  # that message of the batch
    headers = dict(sink.on("deadletter")[-1].headers)
    assert headers["dlq.source"] == b"shop" and headers["dlq.path"] == b"/v1/batch" and headers["dlq.topic"] == b"channel.web"
    assert b"Coupon Applied" in headers["dlq.error"]


async def test_an_unmapped_event_is_200_and_dead_lettered(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, _ = served
    status, body = await post(client, "/v1/track", track(event="Coupon Applied"))
    assert (status, body) == (200, {"success": True, "accepted": 0, "unmapped": 1})
    assert [reason for reason, _ in sink.letters()] == ["unmapped_event"] and not sink.on("channel.web")


async def test_a_batch_context_is_under_each_calls_own(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, _ = served
    calls = [{**track("c-0"), "type": "track", "userId": None, "anonymousId": "a1"},
             {**track("c-1"), "type": "track", "userId": None, "anonymousId": "a1", "context": {"traits": {"email": "own@x.dk"}}}]  # fmt: skip
    status, _ = await post(client, "/v1/batch", {"batch": calls, "context": {"traits": {"email": "shared@x.dk"}}})
    assert status == 200
    assert [orjson.loads(r.value)["identifiers"].get("email") for r in sink.on("channel.web")] == ["shared@x.dk", "own@x.dk"]


async def test_a_broker_that_does_not_acknowledge_gets_503_and_an_unknown_path_404(served: tuple[TestClient, ListSink, Collector]) -> None:
    client, sink, collector = served
    sink.stalled = True
    status, body = await post(client, "/v1/track", track())
    assert status == 503 and body["code"] == "unavailable"
    assert (await post(client, "/v1/track", b"{bad"))[0] == 503  # a dead letter not acknowledged: 503 too, sent again
    sink.stalled = False
    collector.sink = None  # not started yet, or stopping
    assert (await post(client, "/v1/track", track()))[0] == 503
    status, body = await post(client, "/v1/tracks", track())
    assert status == 404 and "track" in body["message"]
