"""The output fence: an action decided again after a crash is not sent again.

Processing is at least once: a crash replays the input since the last checkpoint,
and the restored state has forgotten every action decided after it. Replayed events
and timers decide those actions again, with the same deterministic ``action_id``;
sending them again would reach the customer twice.

So every checkpoint stores, with each state partition, a fence record:

* ``marks``: for every partition of every fenced (action) topic, an offset at or
  before which every action sent after this checkpoint's snapshot must lie. It is
  the end, as acknowledged, of the outputs this worker sent before the snapshot:
  records sent later to that partition are appended after them. Any lower bound is
  correct; a tighter one only shortens the scan.
* ``ids``: actions found by an earlier recovery and not decided again yet, so a
  second crash during the replay still knows them.

Recovery reads each fenced partition from the lowest mark to its true end (Fetch
high watermarks: Tansu answers ListOffsets wrongly) and collects the ``action_id``
of every record whose ``omni-partition`` header names a partition being opened, at
or past that partition's mark. Those actions were sent after the checkpoint the
state was restored from; deciding one again records the decision in the profile
(as the first time) and sends nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.runtime import kafka
from pipeline.runtime.state.base import Store

FENCE_KEY = b"__output_fence__"
ACTION_ID_HEADER = "action_id"
PARTITION_HEADER = "omni-partition"

Marks = dict[TopicPartition, int]


@dataclass(slots=True)
class Fence:
    """One state partition's fence: where its unrecorded outputs may start, and ids already sent."""

    marks: Marks = field(default_factory=dict)
    ids: dict[str, float] = field(default_factory=dict)  # action_id -> when it was sent (epoch s)
    written: bytes | None = None  # the record as last stored

    @classmethod
    def load(cls, store: Store) -> Fence:
        raw = store.get(FENCE_KEY)
        if raw is None:
            return cls()
        doc = orjson.loads(raw)
        marks = {_tp(name): offset for name, offset in doc["marks"].items()}
        return cls(marks, dict(doc["ids"]), written=raw)

    def advance(self, ends: Mapping[TopicPartition, int]) -> bool:
        """Raise the marks to ``ends`` where they are higher; True if any moved."""
        moved = False
        for tp, end in ends.items():
            if end > self.marks.get(tp, -1):
                self.marks[tp] = end
                moved = True
        return moved

    def encode(self, ids: Mapping[str, float]) -> bytes | None:
        """The record to store with a checkpoint, or None when it holds nothing new."""
        raw = orjson.dumps({"marks": {f"{tp.topic}:{tp.partition}": o for tp, o in self.marks.items()}, "ids": ids})
        return None if raw == self.written else raw

    def prune(self, before: float) -> None:
        """Forget ids sent before ``before``: a replay that old is long past."""
        for action_id in [a for a, at in self.ids.items() if at < before]:
            del self.ids[action_id]


def _tp(name: str) -> TopicPartition:
    topic, _, partition = name.rpartition(":")
    return TopicPartition(topic, int(partition))


async def collect_sent(
    consumer: AIOKafkaConsumer, fences: Mapping[int, Fence], poll_ms: int = 100
) -> dict[int, int]:
    """Add to each fence the ids of actions sent for its partition past its marks; return ids found per partition."""
    starts: Marks = {}
    for fence in fences.values():
        for tp, mark in fence.marks.items():
            starts[tp] = min(mark, starts.get(tp, mark))
    found = dict.fromkeys(fences, 0)
    if not starts:
        return found

    async def from_the_start(tp: TopicPartition) -> None:
        await consumer.seek_to_beginning(tp)  # retention removed records past a mark: read what is left

    async for tp, records in kafka.read_to_end(consumer, starts, from_the_start, poll_ms):
        for rec in records:
            headers = dict(rec.headers or ())
            raw_partition = headers.get(PARTITION_HEADER)
            action_id = headers.get(ACTION_ID_HEADER)
            if raw_partition is None or action_id is None:
                continue
            owner = fences.get(int(raw_partition))
            if owner is not None and rec.offset >= owner.marks.get(tp, 0):
                owner.ids[action_id.decode()] = rec.timestamp / 1000
                found[int(raw_partition)] += 1
    return found
