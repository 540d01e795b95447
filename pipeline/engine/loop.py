"""The engine: one consumer group, batched polling, checkpoints.

The worker subscribes to every input topic and to the repartition topic in one
consumer group. Input records are validated and re-keyed by profile onto the
repartition topic; repartition partition N is state partition N, so whoever
owns it owns that slice of profiles, its RocksDB directory and changelog
partition N.

Guarantees (at-least-once delivery, idempotent effects):

* Outputs (actions, dead letters, repartitioned events) are produced as soon as
  a batch is processed, so latency does not wait for a checkpoint.
* A checkpoint, every ``commit_interval_s`` and at once after timers fire,
  (1) waits until every output is acknowledged, (2) writes each partition's
  changed keys to its changelog and then to RocksDB with the changelog offset,
  (3) only then commits consumer offsets. A crash at any point replays records
  whose effects are either absent from state or filtered by the per-profile
  event-id window, so state never counts an event twice.
* A timer (delayed action) lives in the profile and in a due-time index; it is
  durable from the first checkpoint after it was scheduled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from pipeline import kafka
from pipeline.actions.catalogue import Catalogue
from pipeline.engine.processor import PartitionState, Processor, Tallies
from pipeline.ingest.contract import INPUT_TOPICS
from pipeline.ingest.validate import Rejection
from pipeline.kafka import Record
from pipeline.ops.metrics import Metrics
from pipeline.ops.topics import CHANGELOG, REPARTITION, load_topics
from pipeline.settings import Settings
from pipeline.state.changelog import restore, write_changelog
from pipeline.state.rocksdb import RocksDBStore

log = logging.getLogger(__name__)

DEADLETTER = "deadletter"
DEADLETTER_MAX_VALUE = 900_000  # below the broker's default message.max.bytes, with room for headers


class Engine:
    def __init__(self, settings: Settings, catalogue: Catalogue, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.processor = Processor(settings, catalogue)
        self.specs = load_topics(settings.topics_file)
        self.repartition = settings.topic(REPARTITION)
        self.changelog = settings.topic(CHANGELOG)
        self.inputs = {settings.topic(t): t for t in INPUT_TOPICS}
        self.deadletter = settings.topic(DEADLETTER)
        self.partition_counts = {settings.topic(name): spec.partitions for name, spec in self.specs.items()}
        self.state: dict[int, PartitionState] = {}
        self.next_offsets: dict[TopicPartition, int] = {}  # processed, not yet committed
        self.in_flight: list[tuple[asyncio.Future[Any], int]] = []
        self.lock = asyncio.Lock()
        self.last_checkpoint = time.monotonic()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer
        self.restorer: AIOKafkaConsumer

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.producer = kafka.producer(s)
        self.restorer = kafka.consumer(s, auto_offset_reset="none")
        self.consumer = kafka.consumer(
            s,
            group_id=s.group_id,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            rebalance_timeout_ms=s.rebalance_timeout_ms,
            max_poll_interval_ms=max(60_000, s.rebalance_timeout_ms),
        )
        await self.producer.start()
        await self.restorer.start()
        self.consumer.subscribe(topics=[*self.inputs, self.repartition], listener=_Rebalance(self))
        await self.consumer.start()

    async def stop(self) -> None:
        self.stopping.set()
        async with self.lock:
            try:
                await self._checkpoint()
            finally:
                await self.consumer.stop()  # leaves the group: the others rebalance at once
                await self.restorer.stop()
                await self.producer.stop()
                for p in list(self.state):
                    self._close_partition(p)

    async def run(self) -> None:
        s = self.settings
        last_lag = 0.0
        while not self.stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=s.poll_timeout_ms, max_records=s.max_poll_records)
            if self.stopping.is_set():
                break
            async with self.lock:
                started = time.monotonic()
                await self._process(batches)
                fired = await self._fire_timers()
                if batches:
                    self.metrics.batch_seconds.observe(time.monotonic() - started)
                if fired or time.monotonic() - self.last_checkpoint >= s.commit_interval_s:
                    await self._checkpoint()
            if time.monotonic() - last_lag >= 1.0:
                await self._update_lag()
                last_lag = time.monotonic()

    # --- processing ---------------------------------------------------------------------

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        now = time.time()
        outbox: dict[tuple[str, int], list[Record]] = defaultdict(list)
        n_state = self.partition_counts[self.repartition]
        latencies: list[float] = []
        for tp, records in batches.items():
            if not records:
                continue
            if tp.topic == self.repartition:
                state = self.state[tp.partition]
                for rec in records:
                    try:
                        self.processor.apply(state, rec.key.decode(), orjson.loads(rec.value))
                    except Exception as exc:  # a bug must not become a crash loop on one record
                        log.exception("processing %s:%d@%d failed", tp.topic, tp.partition, rec.offset)
                        outbox[self._deadletter_partition(tp)].append(_dead_letter(rec, tp, _bug(exc)))
                        self.processor.tally.deadletter[("processing_error", REPARTITION)] += 1
                    latencies.append(now - rec.timestamp / 1000)
            else:
                logical = self.inputs[tp.topic]
                for rec in records:
                    try:
                        result = self.processor.ingest(logical, rec.value, now)
                    except Exception as exc:
                        log.exception("ingesting %s:%d@%d failed", tp.topic, tp.partition, rec.offset)
                        result = _bug(exc)
                        self.processor.tally.deadletter[(result.reason, logical)] += 1
                    if isinstance(result, Rejection):
                        outbox[self._deadletter_partition(tp)].append(_dead_letter(rec, tp, result))
                    else:
                        key, value = result
                        kbytes = key.encode()
                        # Keep the arrival time, so latency is measured from the input topic.
                        outbox[(self.repartition, kafka.partition_for(kbytes, n_state))].append(
                            Record(kbytes, value, (), rec.timestamp)
                        )
            self.next_offsets[tp] = records[-1].offset + 1
        await self._send(outbox)
        for latency in latencies:
            self.metrics.latency.observe(latency)
        self._flush_tallies()

    def _deadletter_partition(self, tp: TopicPartition) -> tuple[str, int]:
        return self.deadletter, tp.partition % self.partition_counts[self.deadletter]

    async def _fire_timers(self) -> int:
        now = time.time()
        outbox: dict[tuple[str, int], list[Record]] = defaultdict(list)
        fired = 0
        for state in self.state.values():
            for action in self.processor.fire_due(state, now):
                topic = self.settings.topic(f"actions.{action.channel}")
                key = action.customer.encode()
                partition = kafka.partition_for(key, self.partition_counts[topic])
                outbox[(topic, partition)].append(Record(key, orjson.dumps(action.model_dump())))
                fired += 1
        if outbox:
            await self._send(outbox)
        self._flush_tallies()
        return fired

    async def _send(self, outbox: dict[tuple[str, int], list[Record]]) -> None:
        for (topic, partition), records in outbox.items():
            self.in_flight.extend(await kafka.send_records(self.producer, topic, partition, records))

    def _flush_tallies(self) -> None:
        t, m = self.processor.tally, self.metrics
        m.add(m.events_in, t.events_in)
        m.add(m.deadletter, t.deadletter)
        m.add(m.identifiers_dropped, t.identifiers_dropped)
        m.add(m.processed, t.processed)
        m.add(m.actions, t.actions)
        m.add(m.suppressed, t.suppressed)
        if t.duplicates:
            m.duplicates.inc(t.duplicates)
        if t.timers_delta:
            m.timers_pending.inc(t.timers_delta)
        self.processor.tally = Tallies()

    # --- durability -----------------------------------------------------------------------

    async def _checkpoint(self) -> None:
        started = time.monotonic()
        # 1. Every output is acknowledged before anything that depends on it is made durable:
        #    committing an input offset whose repartitioned event was lost would lose the event.
        for future, _count in self.in_flight:
            await future
        self.in_flight.clear()
        # 2. State: changelog first (all partitions in parallel), then RocksDB with the offset.
        #    The other order would leave RocksDB ahead of the changelog, and a new owner of
        #    the partition, restoring from the changelog, would miss those writes.
        pending = []
        for state in self.state.values():
            if state.txn:
                items = state.txn.take()
                sent = await kafka.send_records(
                    self.producer, self.changelog, state.partition, (Record(k, v) for k, v in items)
                )
                pending.append((state, items, sent))
        for state, items, sent in pending:
            offset = await kafka.last_offset(sent)
            assert offset is not None
            state.store.write(items, offset)
        # 3. Only now the input offsets: everything before them is durable.
        assigned = self.consumer.assignment()
        offsets = {tp: off for tp, off in self.next_offsets.items() if tp in assigned}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance took the partitions: their new owner replays from the last
                # commit, and the event-id window keeps state from counting twice.
                log.warning("offset commit skipped: %s", exc)
        self.next_offsets.clear()
        self.last_checkpoint = time.monotonic()
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.observe(self.last_checkpoint - started)

    # --- partitions ------------------------------------------------------------------------

    async def _open_partitions(self, partitions: list[int]) -> None:
        stores = {p: RocksDBStore(self.settings.state_dir / f"state-{p}") for p in partitions}
        applied = await restore(self.restorer, self.changelog, stores)  # type: ignore[arg-type]
        for p, store in stores.items():
            self.state[p] = PartitionState.open(p, store)
            self.metrics.state_restored.inc(applied.get(p, 0))
            log.info("state partition %d ready: %d changelog records replayed", p, applied.get(p, 0))
        self._count_timers()
        self.metrics.partitions_owned.set(len(self.state))

    def _close_partition(self, partition: int) -> None:
        state = self.state.pop(partition, None)
        if state is not None:
            state.store.close()
        self._count_timers()
        self.metrics.partitions_owned.set(len(self.state))

    def _count_timers(self) -> None:
        self.metrics.timers_pending.set(sum(len(s.timers) for s in self.state.values()))

    async def _update_lag(self) -> None:
        # Lag from Fetch high watermarks, not ListOffsets: Tansu answers ListOffsets wrongly.
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                position = await self.consumer.position(tp)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        engine = self.engine
        async with engine.lock:
            if engine.stopping.is_set() and not engine.state:
                return
            await engine._checkpoint()
            for tp in revoked:
                if tp.topic == engine.repartition:
                    engine._close_partition(tp.partition)
                try:
                    engine.metrics.lag.remove(tp.topic, str(tp.partition))
                except KeyError:
                    pass  # never had a reading

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        engine = self.engine
        async with engine.lock:
            new = sorted(tp.partition for tp in assigned if tp.topic == engine.repartition and tp.partition not in engine.state)
            await engine._open_partitions(new)
        engine.ready.set()
        log.info("assigned %d partitions; state partitions %s", len(assigned), sorted(engine.state))


def _bug(exc: Exception) -> Rejection:
    return Rejection("processing_error", f"{type(exc).__name__}: {exc}")


def _dead_letter(rec: Any, tp: TopicPartition, rejection: Rejection) -> Record:
    """The original bytes, untouched, with why and where in headers."""
    value = rec.value
    extra: list[tuple[str, bytes]] = []
    if value is not None and len(value) > DEADLETTER_MAX_VALUE:
        # A record the broker accepted can still be too large to re-produce with headers.
        extra.append(("dlq.truncated_from", str(len(value)).encode()))
        value = value[:DEADLETTER_MAX_VALUE]
    headers = extra + [
        ("dlq.reason", rejection.reason.encode()),
        ("dlq.error", rejection.detail.encode("utf-8", "replace")[:1000]),
        ("dlq.topic", tp.topic.encode()),
        ("dlq.partition", str(tp.partition).encode()),
        ("dlq.offset", str(rec.offset).encode()),
    ]
    return Record(rec.key, value, headers, rec.timestamp)
