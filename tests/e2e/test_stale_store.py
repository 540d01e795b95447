"""A local store older than the changelog's tombstones is rebuilt, not caught up: an erased person stays erased.

A worker holds a customer in its RocksDB and stops. Meanwhile another worker erases
the customer (tombstones on the changelog) and compaction removes the tombstones,
which it does once they are older than ``delete.retention.ms``. Tansu never
compacts, so the test does what compaction would: it rewrites the changelog with the
latest value of every key and no tombstones. When the first worker comes back over
its old directory, catching up from its store's offset would never see the deletion
and would serve the erased customer again. A store last caught up longer ago than
``OMNI_STATE_MAX_STALE_S`` is rebuilt from the changelog instead
(``pipeline.runtime.state.changelog``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.ops.topics import CHANGELOG, load_topics
from pipeline.privacy.requests import request_erasure
from pipeline.runtime import kafka
from pipeline.settings import Settings
from tests.e2e.test_profile_lookup import get, get_when_found
from tests.helpers import create_topics, event, produce

PARTITIONS = 4


async def _compact(settings: Settings) -> int:
    """Rewrite the changelog as compaction past ``delete.retention.ms`` leaves it: latest values, no tombstones."""
    topic = settings.topic(CHANGELOG)
    spec = load_topics(settings.topics_file)[CHANGELOG]
    consumer = kafka.consumer(settings)
    await consumer.start()
    latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in range(spec.partitions)}
    try:
        starts = {TopicPartition(topic, p): 0 for p in range(spec.partitions)}
        async for tp, records in kafka.read_to_end(consumer, starts, _never):
            for r in records:
                latest[tp.partition].pop(r.key, None)  # compaction keeps each key's last position
                latest[tp.partition][r.key] = r.value
    finally:
        await consumer.stop()
    admin = kafka.admin(settings)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        await asyncio.sleep(1.0)
        await admin.create_topics([NewTopic(topic, spec.partitions, spec.replication_factor, topic_configs=spec.config)])
    finally:
        await admin.close()
    producer = kafka.producer(settings)
    await producer.start()
    removed = 0
    try:
        for p, values in latest.items():
            live = [kafka.Record(k, v) for k, v in values.items() if v is not None]
            removed += len(values) - len(live)
            await kafka.last_offset(await kafka.send_records(producer, topic, p, live))
    finally:
        await producer.stop()
    return removed


async def _never(tp: TopicPartition) -> None:
    raise AssertionError(f"{tp} lost its head")


def test_a_store_older_than_the_tombstones_is_rebuilt_and_an_erased_customer_stays_erased(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"commit_interval_s": 0.5})
    asyncio.run(create_topics(settings))
    first, second = (settings.model_copy(update={"state_dir": tmp_path / name}) for name in ("first", "second"))
    for n, customer in enumerate(("C1", "C2")):
        raw = event("page_view", "web", {"customer_id": customer, "email": f"{customer.lower()}@example.com"}, f"ev-{n}", url="/")
        asyncio.run(produce(settings, "channel.web", [orjson.dumps(raw)], key=raw["event_id"].encode()))

    monkeypatch.setenv("OMNI_STATE_MAX_STALE_S", "3")
    worker = WorkerProcess.start(first, tmp_path / "first.log")
    try:
        wait_ready([worker], PARTITIONS)
        get_when_found(worker, "customer_id=C1")
        get_when_found(worker, "customer_id=C2")
        time.sleep(4 * settings.commit_interval_s)
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-2000:]

    worker = WorkerProcess.start(second, tmp_path / "second.log")  # a fresh directory: restores from the changelog
    try:
        wait_ready([worker], PARTITIONS)
        asyncio.run(request_erasure(settings, "customer_id:C1"))
        wait_until(lambda: get(worker, "customer_id=C1")[0] == 404, 20, "the erasure")
        time.sleep(4 * settings.commit_interval_s)
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-2000:]

    assert asyncio.run(_compact(settings)) > 0, "the erasure left tombstones for compaction to remove"
    time.sleep(3.5)  # the first worker's stores are now older than OMNI_STATE_MAX_STALE_S

    worker = WorkerProcess.start(first, tmp_path / "first-again.log")  # over its old directories
    try:
        wait_ready([worker], PARTITIONS)
        assert get_when_found(worker, "customer_id=C2")["id"] == "customer_id:C2"
        assert get(worker, "customer_id=C1")[0] == 404, "the erased customer came back from a stale store"
        assert get(worker, "email=c1%40example.com")[0] == 404
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-2000:]
    assert "past OMNI_STATE_MAX_STALE_S" in (tmp_path / "first-again.log").read_text()
