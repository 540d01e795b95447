"""The reference job, the same for Quix Streams and for this engine.

100,000 JSON events keyed over 5,000 customers on a 4-partition topic; for
each event: parse, update the customer's state (count and total) in RocksDB
with a changelog, and produce one output record.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import orjson

from pipeline.ops.metrics import Metrics
from pipeline.runtime.job import Job, Outbox
from pipeline.runtime.kafka import Record
from pipeline.runtime.partitioner import partition_for
from pipeline.runtime.state.partition import PartitionState

PARTITIONS = 4
CUSTOMERS = 5000
TOPIC_CONFIG = {"retention.ms": "3600000", "cleanup.policy": "delete"}


def reference_records(events: int, seed: int = 11) -> dict[int, list[Record]]:
    """Events keyed by customer, grouped by partition (Kafka's default partitioner)."""
    rng = random.Random(seed)
    out: dict[int, list[Record]] = {}
    for i in range(events):
        customer = f"c{rng.randrange(CUSTOMERS):05d}"
        key = customer.encode()
        value = orjson.dumps({"event_id": f"e{i}", "customer": customer, "amount": rng.randrange(1, 500)})
        out.setdefault(partition_for(key, PARTITIONS), []).append(Record(key, value))
    return out


class ReferenceJob(Job):
    def __init__(self, in_topic: str, out_topic: str, changelog_topic: str) -> None:
        self.state_topic = in_topic
        self.changelog_topic = changelog_topic
        self.source_topics = {}
        self.out_topic = out_topic
        self.partition_counts = {out_topic: PARTITIONS}
        self.fenced_topics = frozenset()
        self.processed = 0
        self.first_at: float | None = None

    def on_state(
        self, state: PartitionState, records: list[Any], now: float, out: Outbox, owned: Mapping[int, PartitionState]
    ) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        txn, topic, partition = state.txn, self.out_topic, state.partition
        for rec in records:
            event = orjson.loads(rec.value)
            current = txn.get(rec.key) or {"count": 0, "total": 0}
            current["count"] += 1
            current["total"] += event["amount"]
            txn.set(rec.key, current)
            out.add(topic, rec.key, orjson.dumps({"customer": event["customer"], **current}), partition=partition)
        self.processed += len(records)

    def report(self, metrics: Metrics) -> None:
        pass
