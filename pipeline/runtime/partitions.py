"""Opening and closing state partitions: restore from the changelog, the output fence, state directory cleanup.

Opening a partition rebuilds its RocksDB store from its changelog partition
(``pipeline.runtime.state.changelog``) and collects the actions sent after its last
checkpoint, so the replay does not send them again (``pipeline.runtime.state.fence``).
Closing one leaves its directory on disk; directories not owned for
``state_cleanup_delay_s`` are deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.ops.metrics import Metrics
from pipeline.runtime import kafka
from pipeline.runtime.job import Job
from pipeline.runtime.kafka import Record
from pipeline.runtime.state.changelog import restore
from pipeline.runtime.state.fence import FENCE_KEY, Fence, collect_sent
from pipeline.runtime.state.partition import PartitionState
from pipeline.runtime.state.rocksdb import RocksDBStore
from pipeline.settings import Settings

log = logging.getLogger(__name__)
CLEANUP_EVERY_S = 30.0  # how often unowned state directories are looked at


class Partitions:
    """Opens and closes the engine's state partitions.

    ``state`` is the engine's own dict of open partitions, shared and changed in place. The
    engine sets ``restorer`` and ``changelog_producer`` when it starts, before it joins the group.
    """

    def __init__(self, settings: Settings, job: Job, metrics: Metrics, state: dict[int, PartitionState]) -> None:
        self.settings = settings
        self.job = job
        self.metrics = metrics
        self.state = state
        self.restorer: AIOKafkaConsumer
        self.changelog_producer: AIOKafkaProducer

    async def open(self, partitions: list[int]) -> None:
        """Restore ``partitions`` from their changelog, collect what they sent after their last checkpoint, own them."""
        stores = {
            p: RocksDBStore(self._state_dir(p), self.settings.rocksdb_write_buffer_mb * 1024 * 1024)
            for p in partitions
        }
        started = time.monotonic()
        applied = await restore(
            self.restorer, self.job.changelog_topic, stores, max_stale_s=self.settings.state_max_stale_s  # type: ignore[arg-type]
        )
        fences = {p: Fence.load(store) for p, store in stores.items()}
        sent = await collect_sent(self.restorer, {p: f for p, f in fences.items() if f.written is not None})
        await self._fence_new(stores, {p: f for p, f in fences.items() if f.written is None})
        self.metrics.restore_seconds.set(time.monotonic() - started)
        for p, store in stores.items():
            self.state[p] = PartitionState.open(
                p, store, self.settings.state_cache_keys, fences[p], self.settings.timer_heap_slack
            )
            self.metrics.state_restored.inc(applied.get(p, 0))
            self.metrics.fence_found.inc(sent.get(p, 0))
        if partitions:
            log.info(
                "state partitions %s ready: %d changelog records replayed in %.2fs",
                partitions, sum(applied.values()), time.monotonic() - started,
            )  # fmt: skip
        if any(sent.values()):  # the last owner stopped without a checkpoint: a crash
            log.warning(
                "state partitions %s: %d actions were sent after their last checkpoint; the replay will not send "
                "them again", [p for p, n in sent.items() if n], sum(sent.values()),
            )  # fmt: skip
        self._owned_changed()

    async def _fence_new(self, stores: dict[int, RocksDBStore], fences: dict[int, Fence]) -> None:
        """Give partitions without a fence record one, durably, before they send anything.

        Without it, a crash before their first checkpoint would leave the next owner no
        marks to read from. The marks are the fenced topics' ends: ListOffsets is enough
        here, as a low answer (Tansu's) only means a longer read.
        """
        if not fences or not self.job.fenced_topics:
            return
        tps = [
            TopicPartition(topic, p) for topic in self.job.fenced_topics for p in range(self.job.partition_counts[topic])
        ]
        ends = await self.restorer.end_offsets(tps)
        for p, fence in fences.items():
            fence.advance(ends)
            record = fence.encode({})
            assert record is not None
            offset = await kafka.last_offset(
                await kafka.send_records(self.changelog_producer, self.job.changelog_topic, p, [Record(FENCE_KEY, record)])
            )
            assert offset is not None
            stores[p].write([(FENCE_KEY, record)], offset)
            fence.written = record

    def close(self, partition: int) -> None:
        """Own ``partition`` no more; its directory stays on disk until the cleanup delay passes."""
        state = self.state.pop(partition, None)
        if state is not None:
            state.store.close()
            with contextlib.suppress(OSError):  # the cleanup delay counts from here (see clean_state_dirs)
                os.utime(self._state_dir(partition))
        self._owned_changed()

    def _state_dir(self, partition: int) -> Path:
        return self.settings.state_dir / f"state-{partition}"

    def clean_state_dirs(self) -> None:
        """Delete the RocksDB directories of partitions not owned for ``state_cleanup_delay_s``.

        They would only grow staler (see ``pipeline.runtime.state.changelog``) and hold personal data
        an erasure has removed everywhere else; a partition that comes back is rebuilt.
        """
        cutoff = time.time() - self.settings.state_cleanup_delay_s
        for path in self.settings.state_dir.glob("state-*"):
            owned = path.name.removeprefix("state-")
            if not owned.isdigit() or int(owned) in self.state:
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    log.info("deleting %s: not owned for %.0f s", path, self.settings.state_cleanup_delay_s)
                    shutil.rmtree(path)
            except OSError as exc:
                log.warning("could not clean up %s: %s", path, exc)

    def _owned_changed(self) -> None:
        self.metrics.partitions_owned.set(len(self.state))
        self.metrics.timers_pending.set(sum(s.pending for s in self.state.values()))
