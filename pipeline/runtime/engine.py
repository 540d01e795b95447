"""The engine: one consumer group, batched polling, partitioned state, checkpoints.

The engine subscribes to a job's source topics and its state topic in one
consumer group. State partition N is state-topic partition N: whoever owns it
owns that slice of keys, its RocksDB directory and changelog partition N.

Guarantees (at-least-once delivery, idempotent effects):

* Outputs are produced as soon as a batch is processed, so latency does not
  wait for a checkpoint.
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
  start, and recovery collects what was sent there (``pipeline.runtime.state.fence``).
* Timers live in state (see ``pipeline.runtime.state.partition``) and are durable from
  the first checkpoint after they were scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from pipeline.ops.metrics import Metrics
from pipeline.runtime import faults, kafka
from pipeline.runtime.job import Job, Outbox
from pipeline.runtime.kafka import Record
from pipeline.runtime.lease import Expelled, Lease
from pipeline.runtime.routing import RoutingAssignor
from pipeline.runtime.state.base import Store
from pipeline.runtime.state.changelog import restore
from pipeline.runtime.state.fence import FENCE_KEY, Fence, collect_sent
from pipeline.runtime.state.partition import PartitionState
from pipeline.runtime.state.rocksdb import RocksDBStore
from pipeline.settings import Settings

log = logging.getLogger(__name__)
ENCODE_STEP = 64  # keys encoded between two looks at the clock
WRITE_SLICE_BYTES = 256 * 1024  # of a checkpoint, written to RocksDB between two batches (about 1 ms)
CLEANUP_EVERY_S = 30.0  # how often unowned state directories are looked at
FETCHER_TURNS = 4  # event-loop turns aiokafka's fetcher needs to send the next Fetch (three, and one spare)


@dataclass(slots=True)
class _Checkpoint:
    outputs: list[tuple[asyncio.Future[Any], int]]  # produced before the snapshot, to be acknowledged
    states: list[PartitionState]
    offsets: dict[TopicPartition, int]  # input positions as of the snapshot
    fenced_ids: dict[int, dict[str, float]]  # each partition's fence ids as of the snapshot


class Engine:
    def __init__(self, settings: Settings, job: Job, metrics: Metrics) -> None:
        self.settings = settings
        self.job = job
        self.metrics = metrics
        self.outbox = Outbox(job.partition_counts)
        self.state: dict[int, PartitionState] = {}
        self.next_offsets: dict[TopicPartition, int] = {}  # processed, not yet committed
        self.in_flight: list[tuple[asyncio.Future[Any], int]] = []
        self.lock = asyncio.Lock()
        self.last_checkpoint = time.monotonic()
        self._building: _Checkpoint | None = None  # snapshot taken, still being encoded
        self._flush_task: asyncio.Task[None] | None = None
        self._lag_shown: set[TopicPartition] = set()  # partitions with an omni_consumer_lag series
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None  # a failure outside the loop that must stop it (a revoke's drain)
        # Membership as a lease (pipeline.runtime.lease): nothing is sent or written past it.
        self.lease = Lease(settings.session_timeout_ms / 1000, settings.heartbeat_interval_ms / 1000)
        self.rejoining = False  # gave up every partition after the lease ran out; waiting to be assigned again
        # Joins the group with our web address; every member learns who owns which partition.
        self.routing = RoutingAssignor(settings.web_url, job.state_topic, settings.web_scheme)
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer
        self.changelog_producer: AIOKafkaProducer
        self.restorer: AIOKafkaConsumer

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.producer = kafka.producer(s)
        # A producer of its own for the changelog: a producer sends one request per broker at
        # a time, and a checkpoint's megabytes of profiles would hold up every action behind them.
        self.changelog_producer = kafka.producer(s)
        self.restorer = kafka.consumer(s, auto_offset_reset="none")
        self.consumer = kafka.consumer(
            s,
            group_id=s.group_id,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            rebalance_timeout_ms=s.rebalance_timeout_ms,
            max_poll_interval_ms=max(60_000, s.rebalance_timeout_ms),
            partition_assignment_strategy=(self.routing,),
        )
        await self.producer.start()
        await self.changelog_producer.start()
        await self.restorer.start()
        self.consumer.subscribe(topics=[*self.job.source_topics, self.job.state_topic], listener=_Rebalance(self))
        await self.consumer.start()
        self.lease.follow(self.consumer._coordinator)
        # Everything allocated so far lives as long as the process: keep the collector from
        # rescanning it on every full collection of the short-lived per-batch objects.
        gc.collect()
        gc.freeze()
        # The hot path allocates many short-lived, acyclic objects (parsed events, profile
        # dicts) that reference counting frees at once; the cycle collector's default
        # thresholds would rescan the live profiles in the transaction thousands of times
        # a second. Collect young objects far less often.
        gc.set_threshold(50_000, 20, 100)

    async def stop(self) -> None:
        self.stopping.set()
        try:
            async with self.lock:
                if self.failed is None and not self.rejoining:
                    await self.drain()
        except Expelled:
            log.warning("stopping without a last checkpoint: no heartbeat answered for a session timeout")
        finally:
            # Without the lock: stopping the consumer waits for a rebalance in progress, whose
            # listener waits for the lock (a worker stopped mid-rebalance hung here for good).
            await self.consumer.stop()  # leaves the group: the others rebalance at once
            await self.restorer.stop()
            await self.changelog_producer.stop()
            await self.producer.stop()
            for p in list(self.state):
                self._close_partition(p)

    async def run(self) -> None:
        s = self.settings
        last_lag = 0.0
        last_cleanup = time.monotonic()
        while not self.stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=s.poll_timeout_ms, max_records=s.max_poll_records)
            if self.stopping.is_set():
                break
            async with self.lock:  # held from here: a rebalance must not take these records' partitions
                if self.rejoining:
                    continue  # these records are read again from the last commit, once assigned again
                # A rebalance may have run while we waited for the lock: records of partitions
                # taken from us are their new owner's, who reads them from the last commit.
                assigned = self.consumer.assignment()
                batches = {tp: records for tp, records in batches.items() if tp in assigned and self._owns(tp)}
                await _let_fetcher_send()
                started = time.monotonic()
                try:
                    await self._process(batches)
                except Expelled:
                    self._lease_lost()
                    continue
                busy = time.monotonic() - started
                if batches:
                    self.metrics.batch_seconds.observe(busy)
                uncommitted = sum(st.txn.held for st in self.state.values())
                if self._building is not None:
                    # A slice of encoding per batch, a larger one when batches are long anyway.
                    # Past the memory bound, the whole snapshot at once: with a million
                    # customers every event dirties a new key, slices could not keep up, and
                    # the keys waiting in memory grew without bound (3.9 GB measured).
                    over = uncommitted >= s.max_uncommitted_keys
                    self._encode_checkpoint(math.inf if over else max(s.checkpoint_slice_ms / 1000, busy / 4))
                elif time.monotonic() - self.last_checkpoint >= s.commit_interval_s or uncommitted >= s.max_uncommitted_keys:
                    try:
                        await self.checkpoint()
                    except Expelled:
                        self._lease_lost()
                        continue
                    self._encode_checkpoint(s.checkpoint_slice_ms / 1000)
            if time.monotonic() - last_lag >= 1.0:
                self.job.housekeeping(self.state, self.metrics)
                await self._update_lag()
                last_lag = time.monotonic()
            if time.monotonic() - last_cleanup >= min(CLEANUP_EVERY_S, s.state_cleanup_delay_s / 2):
                async with self.lock:  # not while a rebalance opens a partition
                    self._clean_state_dirs()
                last_cleanup = time.monotonic()
        if self.failed is not None:
            raise RuntimeError("the worker gave up its partitions and cannot go on") from self.failed

    def abandon(self, failure: BaseException) -> None:
        """Own nothing from now on, after a failure that may have lost writes; the loop then raises it."""
        self.failed = failure
        self.stopping.set()
        self._give_up_partitions()

    def _lease_lost(self) -> None:
        """A session timeout passed without an answered heartbeat: the group may have given our partitions away.

        Whatever was not checkpointed is dropped, unsent, and the group is asked to assign
        partitions again; the ones we get are restored from their changelog and their input
        read again from the last commit (``on_partitions_assigned``). If nobody took them,
        this costs a restore; if somebody did, it keeps two owners from writing one partition.
        """
        log.warning("no heartbeat answered within the session timeout: giving up every partition until the group "
                    "assigns them again")  # fmt: skip
        self.metrics.lease_lost.inc()
        self._give_up_partitions()
        self.rejoining = True
        self.consumer._coordinator.request_rejoin()

    def _give_up_partitions(self) -> None:
        """Nothing more is written or committed for what is open now.

        Not the checkpoint being built or flushed, not the outputs waiting, not the offsets
        processed since the last checkpoint (committing them would skip input whose effects
        are not durable). The partitions' next owners replay from the last commit.
        """
        self.outbox.take()
        self._building = None
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        self.next_offsets = {}
        self.in_flight = []
        for p in list(self.state):
            self._close_partition(p)

    # --- processing ---------------------------------------------------------------------

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        job, out = self.job, self.outbox
        # A big batch takes tens of milliseconds: outputs (actions above all) go out every
        # ``output_flush_ms`` during it, not only at its end, so the first events of a burst
        # do not wait for the last.
        flush_every = self.settings.output_flush_ms / 1000
        emitted = time.monotonic()
        now = time.time()
        for tp, records in batches.items():
            if not records:
                continue
            if tp.topic == job.state_topic:
                job.on_state(self.state[tp.partition], records, now, out, self.state)
            else:
                job.on_source(tp, records, now, out, self.state)
            self.next_offsets[tp] = records[-1].offset + 1
            if time.monotonic() - emitted >= flush_every:
                await self._emit(now)
                emitted, now = time.monotonic(), time.time()
        await self._emit(now)
        job.report(self.metrics)
        if batches:
            self.metrics.last_processed.set(time.time())
        self.metrics.timers_pending.set(sum(s.pending for s in self.state.values()))

    def _owns(self, tp: TopicPartition) -> bool:
        return tp.topic != self.job.state_topic or tp.partition in self.state

    async def _emit(self, now: float) -> None:
        """Fire due timers and send everything the outbox holds."""
        if not self.lease.valid():
            raise Expelled("the lease ran out before outputs were sent")
        for state in self.state.values():
            self.job.on_timers(state, now, self.outbox)
        await self._send(self.outbox.take())

    async def _send(self, outbox: dict[tuple[str, int], list[Record]]) -> None:
        for (topic, partition), records in outbox.items():
            self.in_flight.extend(await kafka.send_records(self.producer, topic, partition, records))

    # --- durability -----------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Snapshot everything processed so far as the next checkpoint; callers hold ``self.lock``.

        Taking the snapshot is O(1); encoding it is spread over the following batches
        (:meth:`_encode_checkpoint`), and waiting for the broker and writing RocksDB
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
        self._building = _Checkpoint(outputs, states, offsets, fenced_ids)

    def _encode_checkpoint(self, budget_s: float) -> None:
        """Encode the snapshot for up to ``budget_s``; once it is all encoded, start its flush."""
        building = self._building
        if building is None:
            return
        deadline = time.monotonic() + budget_s
        for state in building.states:
            while not state.txn.encode(ENCODE_STEP):
                if time.monotonic() >= deadline:
                    return
        self._building = None
        taken = [(state, state.txn.taken()) for state in building.states]
        self._flush_task = asyncio.create_task(
            self._flush(building.outputs, taken, building.offsets, building.fenced_ids)
        )

    async def drain(self) -> None:
        """Checkpoint everything and wait until it is durable (before a rebalance, at stop)."""
        self._encode_checkpoint(math.inf)
        await self.checkpoint()
        self._encode_checkpoint(math.inf)
        await self._await_flush()

    async def _await_flush(self) -> None:
        if self._flush_task is not None:
            task, self._flush_task = self._flush_task, None
            await task  # a failed flush raises here: the worker must not go on past lost writes (Expelled: see run)

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

    # --- partitions ------------------------------------------------------------------------

    async def _open_partitions(self, partitions: list[int]) -> None:
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

    def _close_partition(self, partition: int) -> None:
        state = self.state.pop(partition, None)
        if state is not None:
            state.store.close()
            with contextlib.suppress(OSError):  # the cleanup delay counts from here (see _clean_state_dirs)
                os.utime(self._state_dir(partition))
        self._owned_changed()

    def _state_dir(self, partition: int) -> Path:
        return self.settings.state_dir / f"state-{partition}"

    def _clean_state_dirs(self) -> None:
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

    async def _update_lag(self) -> None:
        # Lag from Fetch high watermarks, not ListOffsets: Tansu answers ListOffsets wrongly.
        readings = {}
        for tp in list(self.consumer.assignment()):
            # A rebalance can revoke partitions during the awaits: asking about one then raises
            # (highwater asserts, position raises IllegalStateError), and that would stop the worker.
            if tp not in self.consumer.assignment() or (high := self.consumer.highwater(tp)) is None:
                continue
            try:
                readings[tp] = max(0, high - await self.consumer.position(tp))
            except IllegalStateError:
                continue
        # Set after the awaits, for what is assigned now: a rebalance during them used to leave a
        # revoked partition's last reading behind, a lag that never went away (seen after a kill).
        assigned = self.consumer.assignment()
        shown = {tp for tp in readings if tp in assigned}
        for tp in self._lag_shown - shown:
            self.metrics.lag.remove(tp.topic, str(tp.partition))
        self._lag_shown = shown
        for tp in shown:
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(readings[tp])


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


async def _let_fetcher_send() -> None:
    """Let aiokafka send the next Fetch before a batch is processed, not after.

    Taking records wakes the consumer's fetcher, but it needs three turns of the event
    loop (its wait completes, it builds the request, the request task writes it) and a
    batch is processed without yielding. Without these turns the next Fetch left only
    once a batch was done, so each round trip was the broker's Fetch time plus our
    processing time; at 27,000 events/s on Tansu, whose Fetch slows as a partition
    collects batches, the worst latency per second grew from 45 to 289 ms in 15 s
    with them missing and stayed between 25 and 62 ms with them (a bare consumer
    spending 18 us per record).
    """
    for _ in range(FETCHER_TURNS):
        await asyncio.sleep(0)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        engine = self.engine
        if engine.failed is not None or engine.rejoining:
            return  # owns nothing
        async with engine.lock:
            try:
                if engine.settings.fault_revoke_error and revoked:
                    raise faults.InjectedFault("the checkpoint before a rebalance failed (fault injection)")
                if not engine.lease.valid():
                    raise Expelled("the lease ran out before the rebalance")
                await engine.drain()
            except Expelled:
                engine._lease_lost()  # a zombie's drain would write over its partitions' new owners
            except Exception as exc:
                # aiokafka logs what a listener raises and goes on with the rebalance: the partitions
                # would stay open here, firing timers and writing the changelog, in a worker that no
                # longer owns them. Their state since the last checkpoint is not durable; their new
                # owner replays it. Give them up, and stop the worker (the loop raises it).
                log.error("the checkpoint before a rebalance failed; giving up every partition and stopping: %r", exc)
                engine.abandon(exc)
            for tp in revoked:
                if tp.topic == engine.job.state_topic:
                    engine._close_partition(tp.partition)
                if tp in engine._lag_shown:
                    engine._lag_shown.discard(tp)
                    engine.metrics.lag.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        engine = self.engine
        if engine.stopping.is_set():
            return  # leaving the group (or failed): whoever owns these next restores them
        engine.lease.renew()  # the group answered: a member from now on
        # aiokafka starts heartbeating only once this callback returns, and a restore can take longer
        # than the session timeout (a store rebuilt from a long changelog): without heartbeats the
        # coordinator would expel us and the lease would run out, and every worker restoring after a
        # rebalance then gave up, rejoined and restored again (a 30-minute fault campaign never settled).
        keepalive = asyncio.create_task(_heartbeat(engine.consumer, engine.settings.heartbeat_interval_ms / 1000))
        try:
            await self._assigned(assigned)
        finally:
            keepalive.cancel()
        engine.ready.set()

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        engine = self.engine
        async with engine.lock:
            if engine.rejoining:
                # What we sent before giving up may still be on its way (a slow or cut-off link):
                # the fence must find those actions in their topics, and the restore our last
                # changelog writes, or they would be decided, or restored, without them.
                await engine.producer.flush()
                await engine.changelog_producer.flush()
                # Input read past the last commit was dropped with the state it changed: read it
                # again. (aiokafka keeps the position of a partition that stays assigned.)
                for tp in assigned:
                    committed = await engine.consumer.committed(tp)
                    if committed is None:
                        await engine.consumer.seek_to_beginning(tp)
                    else:
                        engine.consumer.seek(tp, committed)
                engine.rejoining = False
            new = sorted(
                tp.partition for tp in assigned if tp.topic == engine.job.state_topic and tp.partition not in engine.state
            )
            await engine._open_partitions(new)


async def _heartbeat(consumer: AIOKafkaConsumer, every_s: float) -> None:
    """Heartbeat as aiokafka's own task would, while a rebalance callback keeps that task from running."""
    coordinator = consumer._coordinator
    while True:
        await asyncio.sleep(every_s)
        try:
            await coordinator._do_heartbeat()  # answered, it renews the lease (Lease.follow)
        except Exception as exc:  # the next rebalance or the coordinator's own task deals with it
            log.debug("heartbeat during a restore failed: %r", exc)
