"""What every sender does after delivering a batch: outcomes to ``outcomes``, letters to ``deadletter``, then commit.

Shared by the e-mail and the webhook senders. The order is the guarantee: outcomes and
dead letters are acknowledged by the broker, then each reported action is remembered as
``reported`` (a replay need not report it again), and only then are offsets committed
(the caller does that after :func:`report` returns).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.actions.model import Action
from pipeline.engine.deadletter import DEADLETTER
from pipeline.ops.topics import OUTCOMES, TopicSpec
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.runtime.partitioner import partition_for
from pipeline.senders.delivered import DeliveredIds
from pipeline.settings import Settings


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def outcome_record(action: Action, outcome: str, detail: str, channel: str, **extra: Any) -> Record:
    """An outcome keyed by customer, like everything that reaches a profile."""
    report = {"action_id": action.action_id, "customer": action.customer, "outcome": outcome,
              "occurred_at": iso(time.time()), "rule": action.rule, "channel": channel, "detail": detail[:1000], **extra}  # fmt: skip
    return Record(action.customer.encode(), orjson.dumps(report))


async def report(
    settings: Settings,
    producer: AIOKafkaProducer,
    partitions: dict[str, TopicSpec],
    outcomes: list[tuple[str, Record]],
    letters: list[tuple[int, Record]],
    done: DeliveredIds,
) -> None:
    """Send outcomes (each with the key it is remembered under) and letters; wait for the acks; mark reported."""
    sent = []
    by_partition: dict[int, list[Record]] = {}
    for _, rec in outcomes:
        assert rec.key is not None
        by_partition.setdefault(partition_for(rec.key, partitions[OUTCOMES].partitions), []).append(rec)
    for partition, recs in by_partition.items():
        sent += await kafka.send_records(producer, settings.topic(OUTCOMES), partition, recs)
    for partition, letter in letters:
        sent += await kafka.send_records(producer, settings.topic(DEADLETTER), partition % partitions[DEADLETTER].partitions, [letter])
    if sent:
        await kafka.last_offset(sent)
    for key, _ in outcomes:  # acknowledged: a replay need not report them again
        done[key] = "reported"
