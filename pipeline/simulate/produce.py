"""Produce simulator traffic to the input topics at a steady rate, batched per partition."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from pipeline.ops.topics import TopicSpec, load_topics
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.runtime.partitioner import partition_for
from pipeline.settings import Settings
from pipeline.simulate.population import Population, Produced


async def produce_all(settings: Settings, records: Iterable[Produced]) -> int:
    """Produce the records as fast as the broker takes them; return how many."""
    specs = load_topics(settings.topics_file)
    producer = kafka.producer(settings)
    await producer.start()
    try:
        return await send_produced(producer, settings, specs, records)
    finally:
        await producer.stop()


async def send_produced(
    producer: AIOKafkaProducer, settings: Settings, specs: dict[str, TopicSpec], records: Iterable[Produced]
) -> int:
    """Send simulator records, one batch per partition, and wait until the broker has them all."""
    grouped: dict[tuple[str, int], list[Record]] = defaultdict(list)
    count = 0
    for rec in records:
        topic = settings.topic(rec.topic)
        grouped[(topic, partition_for(rec.key, specs[rec.topic].partitions))].append(Record(rec.key, rec.value))
        count += 1
    sent = []
    for (topic, partition), recs in grouped.items():
        sent.extend(await kafka.send_records(producer, topic, partition, recs))
    for future, _ in sent:
        await future
    return count


async def simulate(
    settings: Settings,
    population: Population,
    rate: float,
    duration_s: float | None,
    quiet: bool = False,
    tick: float = 0.05,
) -> int:
    """Produce about ``rate`` records a second until ``duration_s`` passes (forever if None).

    Every ``tick`` seconds one batch goes to each partition. Channel systems batch too (a producer's
    linger); short ticks make more, smaller batches, which costs a broker that holds batches as objects
    (Tansu's memory storage lists them all on each fetch) more than it costs us.
    """
    specs = load_topics(settings.topics_file)
    producer = kafka.producer(settings)
    await producer.start()
    total, started, owed = 0, time.monotonic(), 0.0
    last_report = started
    try:
        while duration_s is None or time.monotonic() - started < duration_s:
            owed += rate * tick
            batch: list[Produced] = []
            now = time.time()
            while len(batch) < owed:
                batch.extend(population.journey(now))
            owed -= len(batch)
            total += await send_produced(producer, settings, specs, batch)
            if not quiet and time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                print(f"simulator: {total} records produced", file=sys.stderr, flush=True)
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started) % tick))
    finally:
        await producer.stop()
    return total
