"""Changelog topics: how a partition's state survives the loss of its disk.

Every checkpoint writes the partition's changed keys to the changelog partition
of the same number (a compacted topic), then to RocksDB together with the
changelog offset reached. Recovery replays the changelog from the store's
offset to the log's *true* end.

The true end comes from Fetch responses (their high watermark), never from
ListOffsets alone: Tansu 0.6 answers ListOffsets(latest) with the last batch's
base offset + 1, which would stop recovery early and silently lose state.

A local store is only a cache of its changelog, and a stale cache is rebuilt
rather than caught up, for three reasons:

* *Older than the bound* (``max_stale_s``): compaction removes a tombstone once it
  is older than the changelog's ``delete.retention.ms``. A store last written
  before that may hold a key whose deletion (an erased person) is no longer in the
  log to replay: catching up would bring the person back. Kafka Streams guards the
  same hole by deleting unowned state directories after ``state.cleanup.delay.ms``.
* *Behind the log's start*: retention removed records it never applied.
* *Ahead of the log's end*: the log lost what the store says it applied (a topic
  recreated, an in-memory broker restarted). Tansu answers a fetch past the end
  with no records and no error, so only the high watermark tells.
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.runtime import kafka
from pipeline.runtime.state.base import Store

log = logging.getLogger(__name__)


async def restore(
    consumer: AIOKafkaConsumer, topic: str, stores: dict[int, Store], poll_ms: int = 100, max_stale_s: float | None = None
) -> dict[int, int]:
    """Bring every store up to the end of its changelog partition; return records applied per partition."""
    if not stores:
        return {}
    now = time.time()
    for p, store in stores.items():
        if store.bound_to() not in (None, topic):
            # A state directory reused under another topic prefix: its profiles are another
            # deployment's, which the offset alone would not tell.
            log.warning("state partition %d mirrored %s, not %s; rebuilding it", p, store.bound_to(), topic)
            store.wipe()
        elif max_stale_s is not None and store.changelog_offset() >= 0:
            written = store.written_at()
            if written is None or now - written > max_stale_s:
                age = "of unknown age" if written is None else f"{(now - written) / 3600:.1f} h old"
                log.warning("state partition %d is %s, past OMNI_STATE_MAX_STALE_S; rebuilding it from the changelog", p, age)
                store.wipe()
        store.bind(topic)
    tps = {TopicPartition(topic, p): p for p in stores}

    async def start_over(tp: TopicPartition) -> None:
        # The log no longer holds what our store says it applied next (retention removed it).
        log.warning("changelog %s no longer starts where the local store stopped; rebuilding it from the log", tp)
        stores[tps[tp]].wipe()
        await consumer.seek_to_beginning(tp)  # not offset 0: retention may have removed the log's head

    applied = dict.fromkeys(stores, 0)

    async def replay(starts: dict[TopicPartition, int], ends: dict[TopicPartition, int] | None = None) -> None:
        async for tp, records in kafka.read_to_end(consumer, starts, start_over, poll_ms, ends):
            stores[tps[tp]].write([(r.key, r.value) for r in records], records[-1].offset)
            applied[tps[tp]] += len(records)

    ends: dict[TopicPartition, int] = {}
    await replay({tp: stores[p].changelog_offset() + 1 for tp, p in tps.items()}, ends)
    ahead = {tp: 0 for tp, end in ends.items() if stores[tps[tp]].changelog_offset() >= end}
    for tp in ahead:
        log.warning("changelog %s ends before what the local store applied; rebuilding it from the log", tp)
        stores[tps[tp]].wipe()
    if ahead:
        await replay(ahead)
    for store in stores.values():
        if store.changelog_offset() >= 0:
            store.write([], store.changelog_offset())  # caught up now: its age counts from here
    return applied
