"""The checkpoint state machine: what makes a worker's state and input positions durable, and in which order.

Guarantees (at-least-once delivery, idempotent effects):

* A checkpoint, every ``commit_interval_s`` or sooner when ``max_uncommitted_keys``
  changed keys wait in memory beyond the state cache, snapshots the changed keys
  and the offsets at one moment, encodes the snapshot a slice at a time between
  batches, and then, in the background while processing goes on, (1) waits
  until every output is acknowledged, (2) writes each partition's changed keys
  to its changelog and then to RocksDB with the changelog offset, (3) only then
  commits consumer offsets. A crash at any point replays records whose effects
  are either absent from state or recognised by the job (the omnichannel job
  keeps a window of event ids per profile).
* Actions a crash makes the state forget are not sent again when the replay
  decides them again: each checkpoint stores where the outputs sent after it
  start, and recovery collects what was sent there (``pipeline.runtime.state.fence``,
  and ``pipeline.runtime.partitions``, which opens a partition).

The engine (``pipeline.runtime.engine``) decides when to checkpoint and holds its lock
around every call here; one checkpoint is built or flushed at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from pipeline.ops.metrics import Metrics
from pipeline.runtime import faults, kafka
from pipeline.runtime.job import Job
from pipeline.runtime.kafka import Record
from pipeline.runtime.lease import Expelled, Lease
from pipeline.runtime.state.base import Store
from pipeline.runtime.state.fence import FENCE_KEY
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import Settings

log = logging.getLogger(__name__)
ENCODE_STEP = 64  # keys encoded between two looks at the clock
WRITE_SLICE_BYTES = 256 * 1024  # of a checkpoint, written to RocksDB between two batches (about 1 ms)


@dataclass(slots=True)
class _Checkpoint:
    outputs: list[tuple[asyncio.Future[Any], int]]  # produced before the snapshot, to be acknowledged
    states: list[PartitionState]
    offsets: dict[TopicPartition, int]  # input positions as of the snapshot
    fenced_ids: dict[int, dict[str, float]]  # each partition's fence ids as of the snapshot


class Checkpointer:
    """Snapshots, encodes and flushes checkpoints of the engine's state partitions.

    ``state`` is the engine's own dict of open partitions, shared and changed in place.
    The engine records here what it processed (``next_offsets``) and sent (``in_flight``),
    and sets ``consumer`` and ``changelog_producer`` when it starts, before it joins the group.
    """

    def __init__(
        self, settings: Settings, job: Job, metrics: Metrics, lease: Lease, state: dict[int, PartitionState]
    ) -> None:
        self.settings = settings
        self.job = job
        self.metrics = metrics
        self.lease = lease
        self.state = state
        self.next_offsets: dict[TopicPartition, int] = {}  # processed, not yet committed
        self.in_flight: list[tuple[asyncio.Future[Any], int]] = []
        self.last_checkpoint = time.monotonic()
        self.building: _Checkpoint | None = None  # snapshot taken, still being encoded
        self._flush_task: asyncio.Task[None] | None = None
        self.consumer: AIOKafkaConsumer  # its assignment, and where offsets are committed
        self.changelog_producer: AIOKafkaProducer

    async def checkpoint(self) -> None:
        """Snapshot everything processed so far as the next checkpoint; callers hold the engine's lock.

        Taking the snapshot is O(1); encoding it is spread over the following batches
        (:meth:`encode`), and waiting for the broker and writing RocksDB
        happen in the background. One checkpoint is built or flushed at a time.
        """
        await self._await_flush()
        assigned = self.consumer.assignment()
        offsets = {tp: off for tp, off in self.next_offsets.items() if tp in assigned}
        self.next_offsets = {}
        outputs, self.in_flight = self.in_flight, []
        kept_since = time.time() - self.settings.fence_keep_s
        states = list(self.state.values())  # unchanged ones too: their fence marks may move
        for state in states:
            state.index_unfired()
            state.txn.snapshot()
            state.fence.prune(kept_since)
        fenced_ids = {state.partition: dict(state.fence.ids) for state in states}
        self.last_checkpoint = time.monotonic()
        self.building = _Checkpoint(outputs, states, offsets, fenced_ids)

    def encode(self, budget_s: float) -> None:
        """Encode the snapshot for up to ``budget_s``; once it is all encoded, start its flush."""
        building = self.building
        if building is None:
            return
        deadline = time.monotonic() + budget_s
        for state in building.states:
            while not state.txn.encode(ENCODE_STEP):
                if time.monotonic() >= deadline:
                    return
        self.building = None
        taken = [(state, state.txn.taken()) for state in building.states]
        self._flush_task = asyncio.create_task(
            self._flush(building.outputs, taken, building.offsets, building.fenced_ids)
        )

    async def drain(self) -> None:
        """Checkpoint everything and wait until it is durable (before a rebalance, at stop)."""
        self.encode(math.inf)
        await self.checkpoint()
        self.encode(math.inf)
        await self._await_flush()

    def give_up(self) -> None:
        """Forget the checkpoint being built or flushed and whatever was processed or sent since the last one.

        Part of the engine giving up its partitions (``Engine._give_up_partitions`` says why).
        """
        self.building = None
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        self.next_offsets = {}
        self.in_flight = []

    async def _await_flush(self) -> None:
        if self._flush_task is not None:
            task, self._flush_task = self._flush_task, None
            await task  # a failed flush raises here: the worker must not go on past lost writes (Expelled: see Engine.run)

    async def _flush(
        self,
        outputs: list[tuple[asyncio.Future[Any], int]],
        taken: list[tuple[PartitionState, list[tuple[bytes, bytes | None]]]],
        offsets: dict[TopicPartition, int],
        fenced_ids: dict[int, dict[str, float]],
    ) -> None:
        started = time.monotonic()
        # 1. Every output is acknowledged before anything that depends on it is made durable:
        #    committing an input offset whose repartitioned event was lost would lose the event.
        #    Where the fenced outputs end is each partition's new fence mark: whatever is sent
        #    after the snapshot lands past it.
        ends: dict[TopicPartition, int] = {}
        for future, count in outputs:
            meta = await future
            if meta.topic in self.job.fenced_topics:
                ends[TopicPartition(meta.topic, meta.partition)] = meta.offset + count
        for state, items in taken:
            state.fence.advance(ends)
            record = state.fence.encode(fenced_ids[state.partition])
            if record is not None:
                items.append((FENCE_KEY, record))  # last: a crash landing part of the checkpoint keeps the old marks
        taken = [(state, items) for state, items in taken if items]
        if not self.lease.valid():
            raise Expelled("the lease ran out before the changelog was written")
        torn = faults.tear([(state.partition, (state, items)) for state, items in taken], self.settings.fault_torn_checkpoint)
        if torn is not None:
            taken = [part for _, part in torn]
        # 2. State: changelog first (all partitions in parallel), then RocksDB with the offset.
        #    The other order would leave RocksDB ahead of the changelog, and a new owner of
        #    the partition, restoring from the changelog, would miss those writes.
        #    The partitions go out together: a producer queues a partition's next batch only
        #    once the broker has taken the one before, so one partition after another cost a
        #    round trip per batch of the whole checkpoint instead of one per batch of the largest.
        sends = await asyncio.gather(*(
            kafka.send_records(self.changelog_producer, self.job.changelog_topic, state.partition,
                               (Record(k, v) for k, v in items))
            for state, items in taken
        ))  # fmt: skip
        pending = [(state, items, sent) for (state, items), sent in zip(taken, sends)]
        for state, items, sent in pending:
            offset = await kafka.last_offset(sent)
            assert offset is not None
            await _write_in_slices(state.store, items, offset)
            state.txn.flushed()
            if items[-1][0] == FENCE_KEY:
                state.fence.written = items[-1][1]
        if torn is not None:
            faults.die_torn(torn[0][0])
        # 3. Only now the input offsets: everything before them is durable.
        if offsets and self.lease.valid():  # else a new owner may have committed; ours would go backwards
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance took the partitions: their new owner replays from the last
                # commit, and the job's idempotence keeps state from counting twice.
                log.warning("offset commit skipped: %s", exc)
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.observe(time.monotonic() - started)


async def _write_in_slices(store: Store, items: list[tuple[bytes, bytes | None]], offset: int) -> None:
    """Write a checkpoint's items to the store a slice at a time, yielding to the loop between slices.

    rocksdict holds the GIL for the whole of a write, and copies each value into its batch
    at about 2 ns a byte: a worker thread writing 10,000 profiles of 2.4 KB held the loop to
    10-16 % of its speed for 90-130 ms, and every event arriving then waited. In slices, the
    batches run between them. Only the last slice moves the store's changelog offset (see
    :meth:`Store.write` for why a crash between slices loses nothing).
    """
    start, size = 0, 0
    for end, (_, value) in enumerate(items, 1):
        size += len(value) if value is not None else 0
        if size >= WRITE_SLICE_BYTES or end == len(items):
            store.write(items[start:end], offset if end == len(items) else None)
            start, size = end, 0
            await asyncio.sleep(0)
