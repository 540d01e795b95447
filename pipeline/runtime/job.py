"""What the engine runs: a job, and the outbox it writes its outputs to.

The engine owns consuming, state partitions, checkpoints and recovery; a job
owns what records mean. The omnichannel pipeline is one job
(``pipeline.engine.omnichannel``); the benchmark's reference job is another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition
from mypy_extensions import mypyc_attr

from pipeline.ops.metrics import Metrics
from pipeline.runtime.kafka import Headers, Record
from pipeline.runtime.partitioner import partition_for
from pipeline.runtime.state.partition import PartitionState


class Outbox:
    """Records to produce, grouped by (topic, partition), sent by the engine in one batch each."""

    __slots__ = ("partition_counts", "records")

    def __init__(self, partition_counts: dict[str, int]) -> None:
        self.partition_counts = partition_counts
        self.records: defaultdict[tuple[str, int], list[Record]] = defaultdict(list)

    def add(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = (),
        timestamp_ms: int | None = None, partition: int | None = None,
    ) -> None:  # fmt: skip
        if partition is None:
            assert key is not None, f"a keyless record for {topic} needs a partition"
            partition = partition_for(key, self.partition_counts[topic])
        self.records[(topic, partition)].append(Record(key, value, headers, timestamp_ms))

    def take(self) -> dict[tuple[str, int], list[Record]]:
        records, self.records = self.records, defaultdict(list)
        return records


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled with the hot path; jobs of plain Python run on it too
class Job(ABC):
    """A stream job: stateless source topics, one keyed state topic, timers. A job sets every attribute below."""

    #: physical topic whose partition N feeds state partition N
    state_topic: str
    #: physical compacted topic backing the state partitions
    changelog_topic: str
    #: physical -> logical names of stateless input topics (may be empty)
    source_topics: dict[str, str]
    #: partitions of every topic the job produces to
    partition_counts: dict[str, int]
    #: topics whose records must not be sent twice for one decision (pipeline.runtime.state.fence); may be empty
    fenced_topics: frozenset[str]

    def on_source(
        self, tp: TopicPartition, records: list[Any], now: float, out: Outbox, owned: Mapping[int, PartitionState]
    ) -> None:
        """Records from a source topic; typically validated and re-keyed onto the state topic.

        ``owned`` are the state partitions this worker holds now: a job may apply a record
        to one of them at once (saving a trip through the broker) as long as it recognises
        the record when the state topic brings it back.
        """

    @abstractmethod
    def on_state(
        self, state: PartitionState, records: list[Any], now: float, out: Outbox, owned: Mapping[int, PartitionState]
    ) -> None:
        """Records from the state topic, applied to that partition's transaction (``owned``: as above)."""

    def on_timers(self, state: PartitionState, now: float, out: Outbox) -> None:
        """Fire due timers."""

    def housekeeping(self, owned: Mapping[int, PartitionState], metrics: Metrics) -> None:
        """Called about once a second between batches (to reload configuration, refresh gauges)."""

    def report(self, metrics: Metrics) -> None:
        """Hand counts gathered since the last call to Prometheus."""
