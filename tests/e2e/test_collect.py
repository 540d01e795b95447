"""A Segment SDK drives the whole pipeline through `omni collect`: collector and worker are processes of their own.

* An ``Order Completed`` with a vacuum cleaner, sent by Segment's Python library, comes out as the
  consumables follow-up (the dust bags), in the customer's language, to the address the identify
  call gave.
* The collector is SIGKILLed in the middle of the SDK's batches, at the worst moment: after the
  broker acknowledged a batch's records and before the SDK heard so. The SDK retries against a
  restarted collector; the retried batch is on the channel topic twice, and the worker applies
  every event once (its ``messageId`` is the ``event_id``): each profile's lifetime value is
  exactly what was bought.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from segment.analytics import Client as SegmentClient

from pipeline.bench.workers import WorkerProcess, wait_ready
from pipeline.collect.process import CollectorProcess
from pipeline.settings import Settings
from tests.helpers import catalogue_with_delay, create_topics, read_json, read_topic

KEY = "e2e-web-write-key"


def write_sources(tmp_path: Path) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n  - {{name: web shop, channel: web, write_keys: [{KEY}]}}\n")
    return path


def segment(url: str, **options: Any) -> tuple[SegmentClient, list[Any]]:
    errors: list[Any] = []
    client = SegmentClient(KEY, host=url, gzip=True, upload_interval=0.1, on_error=lambda e, b: errors.append((e, b)), **options)
    return client, errors


def profile(worker: WorkerProcess, settings: Settings, key: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{worker.port}/profiles/{key}", headers=settings.auth_headers)
    with urllib.request.urlopen(request, timeout=5) as resp:
        return orjson.loads(resp.read())  # type: ignore[no-any-return]


def wait_metric(worker: WorkerProcess, name: str, at_least: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        assert worker.alive(), worker.log.read_text()[-2000:]
        value = worker.metrics().get(name, 0.0)
        if value >= at_least:
            return value
        assert time.monotonic() < deadline, f"{name} stayed at {value} (< {at_least})"
        time.sleep(0.2)


async def test_an_sdks_vacuum_cleaner_order_gets_the_dust_bags_follow_up(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    worker = WorkerProcess.start(settings, tmp_path / "worker.log", catalogue_with_delay(tmp_path, "2s"))
    collector = CollectorProcess.start(settings, tmp_path / "collect.log", write_sources(tmp_path))
    try:
        wait_ready([worker], 4)
        client, errors = segment(collector.url)
        client.identify("C-vac", {"email": "Vac@Example.dk", "locale": "da-DK"}, anonymous_id="ck-vac")
        _, order = client.track("C-vac", "Order Completed", anonymous_id="ck-vac", properties={
            "order_id": "O-vac-1", "currency": "DKK",
            "products": [{"product_id": "VAC-100", "name": "Vacuum cleaner V100", "price": 1899.0, "quantity": 1}],
        })  # fmt: skip
        await asyncio.to_thread(client.shutdown)
        assert errors == []
        await read_json(settings, "actions.email", until=lambda got: any(b'"consumables_follow_up"' in (r.value or b"") for r in got), timeout_s=30)
        await asyncio.sleep(1.0)
        (action,) = _follow_ups(await read_json(settings, "actions.email"))  # once (a loyalty reward may come too: 1,899 DKK)
    finally:
        collector.stop()
        assert worker.stop() == 0
    assert (action["rule"], action["action"], action["customer"]) == ("consumables_follow_up", "offer_consumable", "customer_id:C-vac")
    assert action["offer"]["sku"] == "BAG-100" and action["trigger_event_ids"] == [order["messageId"]]
    assert action["address"] == "vac@example.dk" and action["locale"] == "da-DK"
    assert action["message"].startswith("Tid til nye Dust bags")  # in her language, from the identify call's locale
    assert "web" in action["reason"]


async def test_a_collector_killed_mid_batch_loses_nothing_and_the_retry_is_applied_once(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    sources = write_sources(tmp_path)
    worker = WorkerProcess.start(settings, tmp_path / "worker.log")
    # The first collector dies (SIGKILL) right after the broker acknowledged its second request, before answering it.
    first = CollectorProcess.start(settings, tmp_path / "collect-1.log", sources, env={"OMNI_FAULT_COLLECT_KILL_AFTER": "2"})
    second = None
    customers, orders = 10, 8  # each customer buys `orders` times for 10.0: lifetime value 80.0, if each is applied once
    try:
        wait_ready([worker], 4)
        client, errors = segment(first.url, upload_size=20, max_retries=10)
        for n in range(orders):
            for c in range(customers):
                client.track(f"C{c}", "Order Completed", properties={
                    "order_id": f"O-{c}-{n}", "currency": "EUR", "products": [{"sku": "TSH-001", "price": 10.0}]})  # fmt: skip
        flushed = asyncio.ensure_future(asyncio.to_thread(client.shutdown))
        first.proc.wait(timeout=30)  # the fault
        assert first.proc.returncode == -signal.SIGKILL
        second = CollectorProcess.start(settings, tmp_path / "collect-2.log", sources, port=first.port)  # where the SDK retries
        await asyncio.wait_for(flushed, timeout=90)
        assert errors == []

        total = customers * orders
        records = await read_topic(settings, "channel.web")  # to its end: the SDK heard 200 for every record
        assert len({_id(r) for r in records}) == total
        wait_metric(worker, "omni_events_processed_total", total, 60)
        resent = len(records) - total
        assert resent >= 1, "the batch the first collector never answered was sent again"
        wait_metric(worker, "omni_duplicates_total", resent, 30)
        time.sleep(1.0)
        m = worker.metrics()
        assert (m["omni_events_processed_total"], m["omni_duplicates_total"]) == (total, resent)
        for c in range(customers):
            assert profile(worker, settings, f"customer_id:C{c}")["lifetime_value"] == {"EUR": 10.0 * orders}
    finally:
        for process in (first, second):
            if process is not None:
                process.stop()
        assert worker.stop() == 0


def _follow_ups(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in actions if a["rule"] == "consumables_follow_up"]


def _id(record: Any) -> str:
    return str(orjson.loads(record.value)["event_id"])
