"""Records to their topics' partitions, returning only once the broker has acknowledged every one.

The same partitioning as the simulator and every other producer of channel topics (Kafka's
murmur2 of the key, ``pipeline.runtime.partitioner``) and the same batched sends
(``pipeline.runtime.kafka.send_records``), with the project's producer: ``acks=all`` and
idempotent, so a produce retried after a lost acknowledgement is written once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer

from pipeline.ops.topics import TopicSpec
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Headers, Record
from pipeline.runtime.partitioner import partition_for
from pipeline.settings import Settings


@dataclass(frozen=True, slots=True)
class Out:
    """One record for a logical topic; a record without a key is placed by a hash of its value."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()


class Sink(Protocol):
    async def send(self, records: list[Out]) -> None:
        """Return once every record is acknowledged; raise if one cannot be."""


class KafkaSink:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, specs: dict[str, TopicSpec]) -> None:
        self.settings = settings
        self.producer = producer
        self.partitions = {name: spec.partitions for name, spec in specs.items()}

    async def send(self, records: list[Out]) -> None:
        grouped: dict[tuple[str, int], list[Record]] = defaultdict(list)
        for rec in records:
            partition = partition_for(rec.key if rec.key else rec.value[:256], self.partitions[rec.topic])
            grouped[(self.settings.topic(rec.topic), partition)].append(Record(rec.key, rec.value, rec.headers))
        sent = []
        for (topic, partition), recs in grouped.items():
            sent.extend(await kafka.send_records(self.producer, topic, partition, recs))
        for future, _ in sent:
            await future
