"""Restore from the changelog rebuilds a local store that cannot be caught up (``pipeline.runtime.state.changelog``)."""

from __future__ import annotations

import time


from pipeline.ops.topics import CHANGELOG
from pipeline.runtime import kafka
from pipeline.runtime.state.changelog import restore
from pipeline.runtime.state.memory import MemoryStore
from pipeline.settings import Settings
from tests.helpers import create_topics


async def _write(settings: Settings, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        sent = await kafka.send_records(producer, settings.topic(CHANGELOG), 0, [kafka.Record(k, v) for k, v in records])
        await kafka.last_offset(sent)
    finally:
        await producer.stop()


async def _restore(settings: Settings, store: MemoryStore, max_stale_s: float | None = None) -> int:
    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        return (await restore(consumer, settings.topic(CHANGELOG), {0: store}, max_stale_s=max_stale_s))[0]
    finally:
        await consumer.stop()


async def test_a_store_ahead_of_its_changelog_is_rebuilt_from_it(settings: Settings) -> None:
    """The log lost what the store applied (recreated, or an in-memory broker restarted): Tansu says so by no error."""
    await create_topics(settings)
    await _write(settings, [(b"a", b"1"), (b"b", b"2")])
    store = MemoryStore()
    store.bind(settings.topic(CHANGELOG))
    store.write([(b"gone", b"from another log")], 40)
    assert await _restore(settings, store) == 2
    assert dict(store.items(b"")) == {b"a": b"1", b"b": b"2"}
    assert store.changelog_offset() == 1


async def test_a_store_older_than_the_bound_is_rebuilt_and_a_fresh_one_caught_up(settings: Settings) -> None:
    await create_topics(settings)
    await _write(settings, [(b"a", b"1"), (b"erased", None)])
    stale = MemoryStore()
    stale.bind(settings.topic(CHANGELOG))
    stale.write([(b"a", b"1"), (b"erased", b"personal data whose tombstone compaction removed")], 0)
    stale._written_at = time.time() - 100
    assert await _restore(settings, stale, max_stale_s=50) == 2
    assert dict(stale.items(b"")) == {b"a": b"1"}
    fresh = MemoryStore()
    fresh.bind(settings.topic(CHANGELOG))
    fresh.write([(b"a", b"1")], 0)
    assert await _restore(settings, fresh, max_stale_s=50) == 1, "caught up from its offset, not rebuilt"
