"""A bare forwarder: the least any pipeline could do on an action's path, to measure the broker's floor.

An action makes two trips through the broker: the event from its channel topic to the worker, and
the action from the worker to its reader. This process makes the same two trips with nothing in
between: it reads the channel topics and, at once, writes each purchase's event id to
``actions.email`` in the shape the latency reader expects. No state, no rules, no checkpoints. Run
on the same broker, traffic and consumer settings as the worker, its latency is the floor the
worker's figure stands on (``omni bench``, step 5).

Run as ``python -m pipeline.bench.forward`` with the worker's environment (``KAFKA_BOOTSTRAP``,
``OMNI_TOPIC_PREFIX``); it prints ``ready`` once its partitions are assigned and runs until stopped.
"""

from __future__ import annotations

import asyncio

import orjson
from aiokafka import TopicPartition

from pipeline.ingest.contract import CUSTOMER_CHANNELS
from pipeline.ops.topics import load_topics
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.settings import Settings

READY = "ready"
TARGET = "actions.email"


def forwarded(value: bytes) -> bytes | None:
    """What the forwarder writes for one channel record: a purchase's id as an action's trigger, else nothing."""
    if b'"purchase"' not in value:
        return None
    event = orjson.loads(value)
    if event.get("type") != "purchase":
        return None
    return orjson.dumps({"trigger_event_ids": [event["event_id"]]})


async def forward(settings: Settings) -> None:
    specs = load_topics(settings.topics_file)
    consumer, producer = kafka.consumer(settings), kafka.producer(settings)
    await consumer.start()
    await producer.start()
    try:
        names = [f"channel.{c}" for c in CUSTOMER_CHANNELS]
        consumer.assign([TopicPartition(settings.topic(n), p) for n in names for p in range(specs[n].partitions)])
        await consumer.seek_to_beginning()
        target, partitions = settings.topic(TARGET), specs[TARGET].partitions
        print(READY, flush=True)
        while True:
            batches = await consumer.getmany(timeout_ms=settings.poll_timeout_ms, max_records=settings.max_poll_records)
            out: dict[int, list[Record]] = {}
            for tp, records in batches.items():
                for rec in records:
                    value = forwarded(rec.value)
                    if value is not None:
                        out.setdefault(tp.partition % partitions, []).append(Record(rec.key, value))
            for partition, recs in out.items():
                await kafka.send_records(producer, target, partition, recs)
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    try:
        asyncio.run(forward(Settings.from_env()))
    except KeyboardInterrupt:
        pass
