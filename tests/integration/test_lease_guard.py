"""A producer holding records when the worker's lease runs out never sends them, even once the lease is renewed.

A worker stopped (SIGSTOP, a VM pause) past the session timeout wakes up with batches in
its producer: handed over before the stop, lingering or waiting for a retry. aiokafka's
sender task would write them at once, after the partition's new owner restored it and
read where its outputs end, so the new owner would decide and send those actions again.
The guard (``Lease.guard``) fails them instead, for good: the engine replaces the producer
before it owns partitions again.
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.runtime.lease import Expelled, Lease
from pipeline.settings import Settings
from tests.helpers import create_topics, read_topic


async def test_records_held_past_the_lease_are_never_written(settings: Settings) -> None:
    await create_topics(settings)
    topic = settings.topic("actions.email")
    lease = Lease(session_timeout_s=10.0, margin_s=1.0)
    producer = kafka.producer(settings, linger_ms=300)  # batches wait in the producer, as a stop would find them
    lease.guard(producer)
    await producer.start()
    try:
        await kafka.last_offset(await kafka.send_records(producer, topic, 0, [Record(b"k", b"before")]))

        held = await kafka.send_records(producer, topic, 0, [Record(b"k", b"held across the stop")])
        lease.renewed_at -= 60.0  # the stop: the lease ran out while the batch lingered
        with pytest.raises(Expelled):
            await kafka.last_offset(held)

        lease.renew()  # a heartbeat answered again: this producer still sends nothing
        after = await kafka.send_records(producer, topic, 0, [Record(b"k", b"after")])
        with pytest.raises(Expelled):
            await kafka.last_offset(after)
    finally:
        await producer.stop()

    await asyncio.sleep(0.5)
    assert [r.value for r in await read_topic(settings, "actions.email")] == [b"before"]


async def test_an_idle_producer_survives_a_lapse_of_the_lease(settings: Settings) -> None:
    # Before its first assignment a worker holds no records, and a join can outlast the lease.
    await create_topics(settings)
    lease = Lease(session_timeout_s=10.0, margin_s=1.0)
    producer = kafka.producer(settings)
    lease.guard(producer)
    await producer.start()
    try:
        lease.renewed_at -= 60.0
        await asyncio.sleep(0.2)
        lease.renew()
        sent = await kafka.send_records(producer, settings.topic("actions.email"), 0, [Record(b"k", b"v")])
        assert await kafka.last_offset(sent) is not None
    finally:
        await producer.stop()
