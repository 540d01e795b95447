"""The omnichannel pipeline as an engine job.

Source topics (the channel and ops topics) are validated and re-keyed by
profile onto ``internal.events-by-customer``; that topic's partitions are the
state partitions, where events update profiles and rules schedule timers.

When the worker that ingests an event also owns its profile's partition, it
applies the event at once and does not send it through the repartition topic
at all: one broker round trip less on the way to an action, and one produce
and one consume less per event. Nothing is lost by skipping the topic: the
input offset is committed only after the checkpoint that holds the event's
effect, so a crash replays the input record, and whichever worker then reads
it routes it as usual; a rebalance checkpoints before partitions move.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import TopicPartition

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.deadletter import DEADLETTER, bug, dead_letter
from pipeline.engine.job import Job, Outbox
from pipeline.engine.loop import Engine
from pipeline.engine.processor import Processor, Tallies
from pipeline.ingest.contract import INPUT_TOPICS
from pipeline.ingest.validate import Rejection
from pipeline.kafka import partition_for
from pipeline.ops.metrics import Metrics
from pipeline.ops.topics import CHANGELOG, REPARTITION, TopicSpec, load_topics
from pipeline.settings import Settings
from pipeline.state.partition import PartitionState

log = logging.getLogger(__name__)


class OmnichannelJob(Job):
    def __init__(self, settings: Settings, catalogue: Catalogue, specs: dict[str, TopicSpec]) -> None:
        self.settings = settings
        self.processor = Processor(settings, catalogue)
        self.state_topic = settings.topic(REPARTITION)
        self.changelog_topic = settings.topic(CHANGELOG)
        self.source_topics = {settings.topic(t): t for t in INPUT_TOPICS}
        self.deadletter = settings.topic(DEADLETTER)
        self.partition_counts = {settings.topic(name): spec.partitions for name, spec in specs.items()}
        self.latencies: list[float] = []

    def on_source(
        self, tp: TopicPartition, records: list[Any], now: float, out: Outbox, owned: Mapping[int, PartitionState]
    ) -> None:
        logical = self.source_topics[tp.topic]
        ingest = self.processor.ingest
        state_topic, partitions = self.state_topic, self.partition_counts[self.state_topic]
        for rec in records:
            try:
                result = ingest(logical, rec.value, now)
            except Exception as exc:  # a bug must not become a crash loop on one record
                log.exception("ingesting %s:%d@%d failed", tp.topic, tp.partition, rec.offset)
                result = bug(exc)
                self.processor.tally.deadletter[(result.reason, logical)] += 1
            if isinstance(result, Rejection):
                self._dead_letter(rec, tp, result, out)
                continue
            key, event = result
            kbytes = key.encode()
            partition = partition_for(kbytes, partitions)
            state = owned.get(partition)
            if state is not None:
                self._apply(state, key, event, rec, tp, now, out)  # this worker owns the profile
            else:
                try:
                    value = orjson.dumps(event)
                except TypeError as exc:
                    # An extra property JSON allows but orjson cannot write (an integer past 64
                    # bits): refused here rather than crashing the loop on every restart.
                    # Applied locally, the same event would pass, since extras are never stored.
                    rejection = Rejection("invalid_event", f"cannot be forwarded: {exc}")
                    self.processor.tally.deadletter[(rejection.reason, logical)] += 1
                    self._dead_letter(rec, tp, rejection, out)
                    continue
                # Keep the arrival time, so latency is measured from the input topic.
                out.add(state_topic, kbytes, value, (), rec.timestamp, partition)

    def on_state(self, state: PartitionState, records: list[Any], now: float, out: Outbox) -> None:
        source = TopicPartition(self.state_topic, state.partition)
        for rec in records:
            self._apply(state, rec.key.decode(), rec.value, rec, source, now, out)

    def _apply(
        self, state: PartitionState, key: str, event: dict[str, Any] | bytes, rec: Any, source: TopicPartition,
        now: float, out: Outbox,
    ) -> None:  # fmt: skip
        try:
            self.processor.apply(state, key, orjson.loads(event) if isinstance(event, bytes) else event)
        except Exception as exc:  # a bug must not become a crash loop on one record
            log.exception("processing %s:%d@%d failed", source.topic, source.partition, rec.offset)
            self.processor.tally.deadletter[("processing_error", REPARTITION)] += 1
            self._dead_letter(rec, source, bug(exc), out)
        self.latencies.append(now - rec.timestamp / 1000)

    def on_timers(self, state: PartitionState, now: float, out: Outbox) -> None:
        for action in self.processor.fire_due(state, now):
            out.add(self.settings.topic(f"actions.{action.channel}"), action.customer.encode(), orjson.dumps(action.model_dump()))

    def _dead_letter(self, rec: Any, tp: TopicPartition, rejection: Rejection, out: Outbox) -> None:
        partition = tp.partition % self.partition_counts[self.deadletter]
        out.add(self.deadletter, rec.key, *dead_letter(rec, tp, rejection), partition=partition)

    def report(self, metrics: Metrics) -> None:
        t, m = self.processor.tally, metrics
        m.add(m.events_in, t.events_in)
        m.add(m.deadletter, t.deadletter)
        m.add(m.identifiers_dropped, t.identifiers_dropped)
        m.add(m.processed, t.processed)
        m.add(m.actions, t.actions)
        m.add(m.suppressed, t.suppressed)
        if t.duplicates:
            m.duplicates.inc(t.duplicates)
        self.processor.tally = Tallies()
        if self.latencies:
            m.latency.observe_many(self.latencies)
            self.latencies = []


def omnichannel_engine(settings: Settings, catalogue: Catalogue, metrics: Metrics) -> Engine:
    return Engine(settings, OmnichannelJob(settings, catalogue, load_topics(settings.topics_file)), metrics)
