"""The omnichannel pipeline as an engine job.

Source topics (the channel and ops topics) are validated and each event is sent
to its strongest identifier; from there the identity protocol
(``pipeline.identity.protocol``) takes it to the profile that owns it, merging
profiles the event links. ``internal.events-by-customer`` carries these steps,
keyed by identifier or profile; its partitions are the state partitions.

When the worker that ingests an event also owns the partition of its next step,
it runs the step at once instead of sending it through the topic: one broker
round trip less on the way to an action, and one produce and one consume less
per event. Nothing is lost by skipping the topic: the input offset is committed
only after the checkpoint that holds the event's effect, so a crash replays the
input record, and whichever worker then reads it routes it as usual; a rebalance
checkpoints before partitions move.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import TopicPartition

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.deadletter import DEADLETTER, bug, dead_letter
from pipeline.engine.processor import Processor, Tallies
from pipeline.identity.protocol import IdentityTally, Message
from pipeline.ingest.contract import INPUT_TOPICS, PRODUCT_EVENT_TYPES
from pipeline.ingest.validate import Rejection
from pipeline.measure import ledger
from pipeline.ops.metrics import Metrics
from pipeline.profiles.census import live_profiles
from pipeline.runtime.engine import Engine
from pipeline.runtime.job import Job, Outbox
from pipeline.runtime.partitioner import partition_for
from pipeline.ops.topics import (
    ACTION_TOPIC_PREFIX, CHANGELOG, MERGES, OUTCOMES, PRIVACY_AUDIT, PRIVACY_REQUESTS, REPARTITION, TopicSpec, load_topics,
)  # fmt: skip
from pipeline.runtime.state.fence import ACTION_ID_HEADER, PARTITION_HEADER
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import Settings

log = logging.getLogger(__name__)
OVERDUE_S = 5.0  # a timer this far past due has waited on a busy or stuck loop, not on its schedule
# Merged profiles' copies of their state dropped per partition per housekeeping call (about once a second):
# the sweep reads only what has expired, and spreads a burst of expiries (a day of many merges) out.
SWEEP_PER_CALL = 500
LOCAL_OPS = frozenset({"ev", "apply", "product", "interest", "notice", "claim", "claimed", "conflict"})  # may run at once when we own the target (see _deliver)


class OmnichannelJob(Job):
    def __init__(self, settings: Settings, catalogue: Catalogue, specs: dict[str, TopicSpec]) -> None:
        self.settings = settings
        self.processor = Processor(settings, catalogue)
        self.state_topic = settings.topic(REPARTITION)
        self.changelog_topic = settings.topic(CHANGELOG)
        self.source_topics = {settings.topic(t): t for t in (*INPUT_TOPICS, OUTCOMES, PRIVACY_REQUESTS)}
        self.deadletter = settings.topic(DEADLETTER)
        self.merges_topic = settings.topic(MERGES)
        self.audit_topic = settings.topic(PRIVACY_AUDIT)
        self._produced: list[tuple[str, Message]] = []
        self._merges: list[Message] = []
        self.partition_counts = {settings.topic(name): spec.partitions for name, spec in specs.items()}
        self.fenced_topics = frozenset(settings.topic(name) for name in specs if name.startswith(ACTION_TOPIC_PREFIX))
        self.latencies: list[float] = []

    def on_source(
        self, tp: TopicPartition, records: list[Any], now: float, out: Outbox, owned: Mapping[int, PartitionState]
    ) -> None:
        logical = self.source_topics[tp.topic]
        if logical in (OUTCOMES, PRIVACY_REQUESTS):
            self._on_reports(logical, tp, records, now, out, owned)
            return
        ingest, first_hop = self.processor.ingest, self._first_hop
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
            if event["type"] in PRODUCT_EVENT_TYPES:
                self._deliver(key, {"op": "product", "event": event}, rec, tp, now, out, owned)
            else:
                first_hop(key, event, rec, tp, now, out, owned)

    def _first_hop(
        self, key: str, event: dict[str, Any], rec: Any, source: TopicPartition, now: float, out: Outbox,
        owned: Mapping[int, PartitionState],
    ) -> None:  # fmt: skip
        """An event to its strongest identifier: what ``_deliver`` does with an ``ev``, without the message.

        Nearly every event takes this step in a partition this worker owns, to a live profile,
        and nothing else: the ``ev`` message and its dispatch by op are left out of that path.
        """
        target = key.encode()
        state = owned.get(partition_for(target, self.partition_counts[self.state_topic]))
        if state is None:
            self._deliver(key, {"op": "ev", "event": event}, rec, source, now, out, owned)
            return
        processor = self.processor
        applied = processor.applied
        produced, merges = self._produced, self._merges
        try:
            processor.identity.event_at_identifier(state, key, target, event, now, produced, merges)
            if merges:
                self._send_merges(merges, out)
        except Exception as exc:  # a bug must not become a crash loop on one record
            self._step_failed("ev", rec, source, exc, out)
            return
        if produced:
            pending = deque(produced)
            produced.clear()
            self._steps(*pending.popleft(), rec, source, now, out, owned, pending)
        if processor.applied != applied:
            self.latencies.append(now - rec.timestamp / 1000)

    def _on_reports(
        self, logical: str, tp: TopicPartition, records: list[Any], now: float, out: Outbox, owned: Mapping[int, PartitionState]
    ) -> None:  # fmt: skip
        """Senders' outcomes and erasure requests: each goes to the actor it concerns, as an event does."""
        ingest = self.processor.ingest_outcome if logical == OUTCOMES else self.processor.ingest_erasure
        for rec in records:
            result = ingest(rec.value, now)
            if isinstance(result, Rejection):
                self._dead_letter(rec, tp, result, out)
            else:
                self._deliver(result[0], result[1], rec, tp, now, out, owned)

    def on_state(
        self, state: PartitionState, records: list[Any], now: float, out: Outbox, owned: Mapping[int, PartitionState]
    ) -> None:
        source = TopicPartition(self.state_topic, state.partition)
        for rec in records:
            msg = orjson.loads(rec.value)
            if "op" not in msg:  # an event routed before identity resolution: straight to its profile
                msg = {"op": "apply", "event": msg}
            self._deliver(rec.key.decode(), msg, rec, source, now, out, owned)

    def _deliver(
        self, target: str, msg: Message, rec: Any, source: TopicPartition, now: float, out: Outbox,
        owned: Mapping[int, PartitionState],
    ) -> None:  # fmt: skip
        """Run a message and everything it leads to here, or send it to the partition that owns its target.

        Events on their first hop to a profile run at once when this worker owns the target:
        that is the common path, and it costs no trip through the broker. So do claims of new
        identifiers and their answers (``claimed``, ``conflict``), nearly all the rest of the
        protocol's traffic. Merge steps, and everything a merged profile forwards to its
        survivor, always go through the state topic, even to a partition owned here: the
        topic keeps them in order from one partition to another, across rebalances too, and
        the protocol relies on that order (a merged profile's state reaches the survivor
        before the events it forwards). Whatever runs here runs after the steps produced
        before it, as the topic would deliver them. In simulated runs (the unit tests'
        cluster, 400 seeded configurations) merge steps taken this shortcut left identifiers
        held by two profiles; these ops did not.
        """
        applied = self.processor.applied
        self._steps(target, msg, rec, source, now, out, owned, None)
        if self.processor.applied != applied:
            self.latencies.append(now - rec.timestamp / 1000)

    def _steps(
        self, target: str, msg: Message, rec: Any, source: TopicPartition, now: float, out: Outbox,
        owned: Mapping[int, PartitionState], pending: deque[tuple[str, Message]] | None,
    ) -> None:  # fmt: skip
        """Run ``msg`` and then ``pending`` (steps that followed an event's first hop), in the order produced."""
        state_topic, partitions = self.state_topic, self.partition_counts[self.state_topic]
        handle = self.processor.handle
        first = pending is None
        while True:
            key = target.encode()
            partition = partition_for(key, partitions)
            state = owned.get(partition)
            op = msg["op"]
            if state is None or (not first and (op not in LOCAL_OPS or "forwarded" in msg)):
                try:
                    value = orjson.dumps(msg)
                except TypeError as exc:
                    # An extra property JSON allows but orjson cannot write (an integer past 64
                    # bits): refused here rather than crashing the loop on every restart. The
                    # steps queued behind it (claims of the same event) still go on.
                    self._refuse_unwritable(rec, source, exc, out)
                else:
                    # Keep the arrival time, so latency is measured from the input topic.
                    out.add(state_topic, key, value, (), rec.timestamp, partition)
            else:
                first = False
                try:
                    produced, merges = self._produced, self._merges  # reused: most steps produce nothing
                    handle(state, target, msg, now, produced, merges)
                    if produced:
                        if pending is None:
                            pending = deque(produced)
                        else:
                            pending.extend(produced)
                        produced.clear()
                    if merges:
                        self._send_merges(merges, out)
                except Exception as exc:  # a bug must not become a crash loop on one record
                    self._step_failed(op, rec, source, exc, out)
                    return
            if not pending:
                break
            target, msg = pending.popleft()

    def _send_merges(self, merges: list[Message], out: Outbox) -> None:
        for merge in merges:
            if "audit" in merge:
                out.add(self.audit_topic, merge["request_id"].encode(), orjson.dumps(merge))
            else:
                out.add(self.merges_topic, merge["survivor"].encode(), orjson.dumps(merge))
        merges.clear()

    def _step_failed(self, op: str, rec: Any, source: TopicPartition, exc: Exception, out: Outbox) -> None:
        log.exception("processing %s at %s:%d@%d failed", op, source.topic, source.partition, rec.offset, exc_info=exc)
        self._produced.clear()  # half a step's outputs must not go out with the next one
        self._merges.clear()
        self.processor.tally.deadletter[("processing_error", REPARTITION)] += 1
        self._dead_letter(rec, source, bug(exc), out)

    def _refuse_unwritable(self, rec: Any, source: TopicPartition, exc: TypeError, out: Outbox) -> None:
        rejection = Rejection("invalid_event", f"cannot be forwarded: {exc}")
        logical = self.source_topics.get(source.topic, REPARTITION)
        self.processor.tally.deadletter[(rejection.reason, logical)] += 1
        self._dead_letter(rec, source, rejection, out)

    def on_timers(self, state: PartitionState, now: float, out: Outbox) -> None:
        partition = str(state.partition).encode()
        sends, merges = self._produced, self._merges
        for topic, action in self.processor.fire_due(state, now, sends, merges):
            # The headers let a recovery find what was sent for this partition (pipeline.runtime.state.fence),
            # and let senders drop a duplicate without parsing the value.
            headers = ((ACTION_ID_HEADER, action.action_id.encode()), (PARTITION_HEADER, partition))
            out.add(self.settings.topic(topic), action.customer.encode(), action.to_json(), headers)
        if sends:  # a lock opened by its bound: what it tells others, and what waited for it, through the topic
            partitions = self.partition_counts[self.state_topic]
            for target, msg in sends:
                key = target.encode()
                try:
                    value = orjson.dumps(msg)
                except TypeError:
                    log.exception("a message of an opened lock for %s cannot be written; dropped", target)
                    self.processor.tally.deadletter[("invalid_event", REPARTITION)] += 1
                    continue
                out.add(self.state_topic, key, value, (), None, partition_for(key, partitions))
            sends.clear()
        if merges:
            self._send_merges(merges, out)

    def housekeeping(self, owned: Mapping[int, PartitionState], metrics: Metrics) -> None:
        if self.processor.reload_rules():
            log.info("rules now enabled: %s", ", ".join(sorted(self.processor.plays)) or "none")
        metrics.rules_refused.set(1 if self.processor.rules.failed else 0)
        metrics.show_ledger(ledger.summed(owned.values()))
        metrics.profiles.set(sum(live_profiles(state) for state in owned.values()))
        now = time.time()
        metrics.timers_overdue.set(sum(state.overdue(now - OVERDUE_S) for state in owned.values()))
        dropped = sum(state.heap_dropped for state in owned.values())
        if dropped:
            metrics.timer_heap_dropped.inc(dropped)
            for state in owned.values():
                state.heap_dropped = 0
        try:
            for state in owned.values():
                self.processor.identity.sweep_tombstones(state, now, SWEEP_PER_CALL)
        except Exception:  # a bug here must not stop the worker: the copies wait for the next call
            log.exception("dropping merged profiles' copies of their state failed")

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
        if t.fenced:
            m.fenced.inc(t.fenced)
        if t.outcomes_unmatched:
            m.outcomes_unmatched.inc(t.outcomes_unmatched)
        m.add(m.timer_errors, t.timer_errors)
        m.add(m.profile_entries_dropped, t.trimmed)
        self.processor.tally = Tallies()
        identity = self.processor.identity.tally
        if identity.merges:
            m.merges.inc(identity.merges)
        m.add(m.merges_refused, identity.refused)
        m.add(m.identifiers_left_out, identity.left_out)
        m.add(m.erasures, identity.erasures)
        if identity.erased_dropped:
            m.erased_dropped.inc(identity.erased_dropped)
        m.add(m.lock_timeouts, identity.lock_timeouts)
        m.add(m.late_answers, identity.late_answers)
        if identity.states_dropped:
            m.states_dropped.inc(identity.states_dropped)
        m.add(m.profile_entries_dropped, identity.trimmed)
        self.processor.identity.tally = IdentityTally()
        if self.latencies:
            m.latency.observe_many(self.latencies)
            self.latencies = []


def omnichannel_engine(settings: Settings, catalogue: Catalogue, metrics: Metrics) -> Engine:
    return Engine(settings, OmnichannelJob(settings, catalogue, load_topics(settings.topics_file)), metrics)
