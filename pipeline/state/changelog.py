"""Changelog topics: how a partition's state survives the loss of its disk.

Every checkpoint writes the partition's changed keys to the changelog partition
of the same number (a compacted topic), then to RocksDB together with the
changelog offset reached. Recovery replays the changelog from the store's
offset to the log's *true* end.

The true end comes from Fetch responses (their high watermark), never from
ListOffsets alone: Tansu 0.6 answers ListOffsets(latest) with the last batch's
base offset + 1, which would stop recovery early and silently lose state.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import kafka
from pipeline.state.base import Store

log = logging.getLogger(__name__)


async def restore(
    consumer: AIOKafkaConsumer, topic: str, stores: dict[int, Store], poll_ms: int = 100
) -> dict[int, int]:
    """Bring every store up to the end of its changelog partition; return records applied per partition."""
    if not stores:
        return {}
    for p, store in stores.items():
        if store.bound_to() not in (None, topic):
            # A state directory reused under another topic prefix: its profiles are another
            # deployment's. Tansu answers a fetch past the log's end with no records and no
            # error, so the offset alone would not tell.
            log.warning("state partition %d mirrored %s, not %s; rebuilding it", p, store.bound_to(), topic)
            store.wipe()
        store.bind(topic)
    tps = {TopicPartition(topic, p): p for p in stores}

    async def start_over(tp: TopicPartition) -> None:
        # The log no longer holds what our store says it applied: the broker lost its data
        # (an in-memory broker restarted). Our store is from a world that is gone; start
        # over from the log as it is.
        log.warning("changelog %s is behind the local store; rebuilding it from the log", tp)
        stores[tps[tp]].wipe()
        await consumer.seek_to_beginning(tp)  # not offset 0: retention may have removed the log's head

    applied = dict.fromkeys(stores, 0)
    starts = {tp: stores[p].changelog_offset() + 1 for tp, p in tps.items()}
    async for tp, records in kafka.read_to_end(consumer, starts, start_over, poll_ms):
        stores[tps[tp]].write([(r.key, r.value) for r in records], records[-1].offset)
        applied[tps[tp]] += len(records)
    return applied
