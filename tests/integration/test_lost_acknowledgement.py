"""A produce acknowledgement lost on the wire must not write a record twice.

The fault proxy (``pipeline.chaos.proxy``) sits between the producer and the broker,
lets every produce request through and throws away some of the broker's answers,
closing the connection as a lost link would. The producer, seeing no answer, sends
the batch again. Our producers are idempotent (``pipeline.runtime.kafka.producer``): the broker
recognises the retry by producer id and sequence number and writes it once. The same
run with idempotence off shows the fault is real: the retries land twice.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from pipeline.chaos.proxy import PRODUCE, FaultProxy
from pipeline.ops.broker import EmbeddedBroker, free_port
from pipeline.runtime import kafka
from pipeline.settings import Settings

BATCHES = 120
DROP_EVERY = 6  # of the batches, every sixth's acknowledgement is lost

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP")),
    reason="the proxy needs a broker it starts itself, advertising the proxy's address",
)


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[Settings, FaultProxy]]:
    proxy_port = free_port()
    with EmbeddedBroker(Settings(), advertised_port=proxy_port) as broker:
        proxy = await FaultProxy("127.0.0.1", broker.port, listen_port=proxy_port).start()
        try:
            yield Settings(bootstrap=f"127.0.0.1:{proxy_port}"), proxy
        finally:
            await proxy.stop()


async def _send_with_lost_acks(settings: Settings, proxy: FaultProxy, idempotent: bool) -> Counter[bytes]:
    topic = f"acks-{'on' if idempotent else 'off'}"
    admin = kafka.admin(settings)
    await admin.start()
    try:
        from aiokafka.admin import NewTopic

        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = kafka.producer(settings, enable_idempotence=idempotent, linger_ms=0, retry_backoff_ms=20)
    await producer.start()
    try:
        for i in range(BATCHES):
            if i % DROP_EVERY == DROP_EVERY - 1:
                proxy.drop_responses(PRODUCE)
            sent = await kafka.send_records(producer, topic, 0, [kafka.Record(f"k{i}".encode(), f"r{i}".encode())])
            await asyncio.wait_for(kafka.last_offset(sent), 30)
    finally:
        await producer.stop()
    consumer = kafka.consumer(settings)
    await consumer.start()
    seen: Counter[bytes] = Counter()
    try:
        async for _tp, records in kafka.read_to_end(consumer, {TopicPartition(topic, 0): 0}, _never):
            seen.update(r.value for r in records)
    finally:
        await consumer.stop()
    return seen


async def _never(tp: TopicPartition) -> None:
    raise AssertionError(f"{tp} lost its head")


async def test_a_lost_produce_acknowledgement_writes_nothing_twice(proxied: tuple[Settings, FaultProxy]) -> None:
    settings, proxy = proxied
    seen = await _send_with_lost_acks(settings, proxy, idempotent=True)
    assert proxy.counts.dropped[PRODUCE] == BATCHES // DROP_EVERY
    assert set(seen) == {f"r{i}".encode() for i in range(BATCHES)}, "a record was lost"
    assert [v for v, n in seen.items() if n > 1] == []


async def test_without_idempotence_the_same_fault_writes_twice(proxied: tuple[Settings, FaultProxy]) -> None:
    """The control: the proxy's fault is real, and the test above could fail."""
    settings, proxy = proxied
    seen = await _send_with_lost_acks(settings, proxy, idempotent=False)
    assert proxy.counts.dropped[PRODUCE] == BATCHES // DROP_EVERY
    assert set(seen) == {f"r{i}".encode() for i in range(BATCHES)}
    assert sum(1 for n in seen.values() if n > 1) == BATCHES // DROP_EVERY
