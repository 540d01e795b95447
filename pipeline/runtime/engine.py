"""The engine: one consumer group, batched polling, partitioned state, checkpoints.

The engine subscribes to a job's source topics and its state topic in one
consumer group. State partition N is state-topic partition N: whoever owns it
owns that slice of keys, its RocksDB directory and changelog partition N.

Guarantees (at-least-once delivery, idempotent effects):

* Outputs are produced as soon as a batch is processed, so latency does not
  wait for a checkpoint.
* A checkpoint makes outputs acknowledged, then state durable (changelog, then
  RocksDB), and only then commits the input offsets, so a crash replays records
  whose effects are absent from state or recognised by the job; actions the replay
  decides again are not sent again. The full statement is in
  ``pipeline.runtime.checkpoint``.
* Timers live in state (see ``pipeline.runtime.state.partition``) and are durable from
  the first checkpoint after they were scheduled.

This module holds the lifecycle, the loop, processing and sending, and giving up
partitions when the lease runs out; the parts it wires together are the checkpoint
state machine (``pipeline.runtime.checkpoint``), opening and closing state partitions
(``pipeline.runtime.partitions``: restore, the fence, directory cleanup) and the
rebalance listener (``pipeline.runtime.rebalance``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError

from pipeline.ops.metrics import Metrics
from pipeline.runtime import kafka
from pipeline.runtime.checkpoint import Checkpointer
from pipeline.runtime.job import Job, Outbox
from pipeline.runtime.kafka import Record
from pipeline.runtime.lease import Expelled, Lease
from pipeline.runtime.partitions import CLEANUP_EVERY_S, Partitions
from pipeline.runtime.rebalance import Rebalance
from pipeline.runtime.routing import RoutingAssignor
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import Settings

log = logging.getLogger(__name__)
FETCHER_TURNS = 4  # event-loop turns aiokafka's fetcher needs to send the next Fetch (three, and one spare)


class Engine:
    def __init__(self, settings: Settings, job: Job, metrics: Metrics) -> None:
        self.settings = settings
        self.job = job
        self.metrics = metrics
        self.outbox = Outbox(job.partition_counts)
        self.state: dict[int, PartitionState] = {}  # shared with checkpointer and partitions, changed in place
        self.lock = asyncio.Lock()
        self._lag_shown: set[TopicPartition] = set()  # partitions with an omni_consumer_lag series
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None  # a failure outside the loop that must stop it (a revoke's drain)
        # Membership as a lease (pipeline.runtime.lease): nothing is sent or written past it.
        self.lease = Lease(settings.session_timeout_ms / 1000, settings.heartbeat_interval_ms / 1000)
        self.rejoining = False  # gave up every partition after the lease ran out; waiting to be assigned again
        # Joins the group with our web address; every member learns who owns which partition.
        self.routing = RoutingAssignor(settings.web_url, job.state_topic, settings.web_scheme)
        self.checkpointer = Checkpointer(settings, job, metrics, self.lease, self.state)
        self.partitions = Partitions(settings, job, metrics, self.state)
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer
        self.changelog_producer: AIOKafkaProducer
        self.restorer: AIOKafkaConsumer

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self._new_producers()
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
        # The checkpointer and the partitions use the same clients; set before the group can call the listener.
        self.checkpointer.consumer = self.consumer
        self.partitions.restorer = self.restorer
        await self.producer.start()
        await self.changelog_producer.start()
        await self.restorer.start()
        self.consumer.subscribe(topics=[*self.job.source_topics, self.job.state_topic], listener=Rebalance(self))
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

    def _new_producers(self) -> None:
        self.producer = kafka.producer(self.settings)
        # A producer of its own for the changelog: a producer sends one request per broker at
        # a time, and a checkpoint's megabytes of profiles would hold up every action behind them.
        self.changelog_producer = kafka.producer(self.settings)
        for producer in (self.producer, self.changelog_producer):
            self.lease.guard(producer)  # past the lease, nothing they hold goes out (pipeline.runtime.lease)
        self.checkpointer.changelog_producer = self.changelog_producer
        self.partitions.changelog_producer = self.changelog_producer

    async def renew_producers(self) -> None:
        """After the lease ran out, before owning partitions again: send from new producers.

        The old ones may have held records past the lease; their guard failed those for good.
        What they had written to the wire before is waited for (stopping flushes): the fence
        must find those actions in their topics, and the restore those changelog writes, or
        they would be decided, or restored, without them.
        """
        old = (self.producer, self.changelog_producer)
        self._new_producers()
        await self.producer.start()
        await self.changelog_producer.start()
        for producer in old:
            await producer.stop()

    async def stop(self) -> None:
        self.stopping.set()
        try:
            async with self.lock:
                if self.failed is None and not self.rejoining:
                    await self.checkpointer.drain()
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
                self.partitions.close(p)

    async def drain(self) -> None:
        """Checkpoint everything and wait until it is durable (:meth:`Checkpointer.drain`); callers hold ``self.lock``."""
        await self.checkpointer.drain()

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
                if self.checkpointer.building is not None:
                    # A slice of encoding per batch, a larger one when batches are long anyway.
                    # Past the memory bound, the whole snapshot at once: with a million
                    # customers every event dirties a new key, slices could not keep up, and
                    # the keys waiting in memory grew without bound (3.9 GB measured).
                    over = uncommitted >= s.max_uncommitted_keys
                    self.checkpointer.encode(math.inf if over else max(s.checkpoint_slice_ms / 1000, busy / 4))
                elif (time.monotonic() - self.checkpointer.last_checkpoint >= s.commit_interval_s
                      or uncommitted >= s.max_uncommitted_keys):
                    try:
                        await self.checkpointer.checkpoint()
                    except Expelled:
                        self._lease_lost()
                        continue
                    self.checkpointer.encode(s.checkpoint_slice_ms / 1000)
            if time.monotonic() - last_lag >= 1.0:
                self.job.housekeeping(self.state, self.metrics)
                await self._update_lag()
                last_lag = time.monotonic()
            if time.monotonic() - last_cleanup >= min(CLEANUP_EVERY_S, s.state_cleanup_delay_s / 2):
                async with self.lock:  # not while a rebalance opens a partition
                    self.partitions.clean_state_dirs()
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
        read again from the last commit (``on_partitions_assigned`` in ``pipeline.runtime.rebalance``).
        If nobody took them, this costs a restore; if somebody did, it keeps two owners from
        writing one partition.
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
        self.checkpointer.give_up()
        for p in list(self.state):
            self.partitions.close(p)

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
            self.checkpointer.next_offsets[tp] = records[-1].offset + 1
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
            self.checkpointer.in_flight.extend(await kafka.send_records(self.producer, topic, partition, records))

    # --- lag --------------------------------------------------------------------------------

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
