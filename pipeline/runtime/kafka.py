"""Small Kafka helpers shared by the engine, the tools and the benchmark.

Sends are batched per partition (``create_batch``/``send_batch``): measured on
this broker, one ``await producer.send()`` per record runs at about a sixth of
the batched rate, so nothing on a hot path sends records one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.helpers import create_ssl_context

from pipeline.runtime import producer_id
from pipeline.settings import Settings

# aiokafka's idempotent producer needs InitProducerId v2+ on Tansu (pipeline.runtime.producer_id).
producer_id.install()

Headers = Sequence[tuple[str, bytes]]


@dataclass(slots=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None


def security(settings: Settings) -> dict[str, object]:
    """TLS and SASL options for every client (producers, consumers, admin), from the settings."""
    options: dict[str, object] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile, certfile=settings.kafka_ssl_certfile, keyfile=settings.kafka_ssl_keyfile
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return options


def admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, **security(settings))  # type: ignore[arg-type]


def producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    options: dict[str, object] = {
        **security(settings),
        "bootstrap_servers": settings.bootstrap,
        "linger_ms": settings.producer_linger_ms,
        "max_batch_size": settings.producer_max_batch_bytes,
        "max_request_size": settings.producer_max_batch_bytes * 2,
        "acks": "all",
        # A produce whose acknowledgement is lost is retried; without idempotence the broker
        # writes it twice (an action sent twice, with no crash at all). With it, the broker
        # drops the retry by its producer id and sequence number.
        "enable_idempotence": True,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)  # type: ignore[arg-type]


def consumer(settings: Settings, *topics: str, **overrides: object) -> AIOKafkaConsumer:
    options: dict[str, object] = {
        **security(settings),
        "bootstrap_servers": settings.bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 4 * 1_048_576,
        "fetch_max_bytes": 16 * 1_048_576,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "check_crcs": settings.check_crcs,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)  # type: ignore[arg-type]


async def send_records(
    prod: AIOKafkaProducer, topic: str, partition: int, records: Iterable[Record]
) -> list[tuple[asyncio.Future, int]]:
    """Queue records as as few batches as fit; return (future, record count) per batch."""
    sent: list[tuple[asyncio.Future, int]] = []
    batch = prod.create_batch()
    count = 0
    for rec in records:
        while batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp_ms, headers=list(rec.headers)) is None:
            if count == 0:
                raise ValueError(f"a record for {topic} is larger than a producer batch")
            sent.append((await prod.send_batch(batch, topic, partition=partition), count))
            batch, count = prod.create_batch(), 0
        count += 1
    if count:
        sent.append((await prod.send_batch(batch, topic, partition=partition), count))
    return sent


async def last_offset(sent: list[tuple[asyncio.Future, int]]) -> int | None:
    """Wait for every batch; return the offset of the last record written."""
    last = None
    for future, count in sent:
        meta = await future
        last = meta.offset + count - 1
    return last


async def read_to_end(
    consumer: AIOKafkaConsumer,
    starts: dict[TopicPartition, int],
    out_of_range: Callable[[TopicPartition], Awaitable[None]],
    poll_ms: int = 100,
    ends: dict[TopicPartition, int] | None = None,
) -> AsyncIterator[tuple[TopicPartition, list]]:  # type: ignore[type-arg]
    """Read partitions from the given offsets to their *true* end, a batch at a time.

    The end is each Fetch response's high watermark, never ListOffsets alone: Tansu 0.6
    answers ListOffsets(latest) with the last batch's base offset + 1, which would stop a
    read early and silently miss records. ``out_of_range`` decides what to do about a
    partition whose log no longer holds the start offset (it must seek it somewhere).
    """
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    pending = set(starts)
    try:
        while pending:
            try:
                batches = await consumer.getmany(*pending, timeout_ms=poll_ms)
            except OffsetOutOfRangeError as exc:
                for tp in exc.args[0] if exc.args and isinstance(exc.args[0], dict) else pending:
                    await out_of_range(tp)
                continue
            for tp, records in batches.items():
                yield tp, records
            for tp in list(pending):
                high = consumer.highwater(tp)
                # Done at the high watermark or past it (a store ahead of its changelog is not
                # rebuilt: on a cluster, a new leader's high watermark can lag for a moment).
                if high is not None and await consumer.position(tp) >= high:
                    pending.discard(tp)
                    if ends is not None:
                        ends[tp] = high  # the log's true end, for a caller that checks what it read against it
    finally:
        consumer.unsubscribe()
