"""The omnichannel job's own path, with no broker: what one event costs before Kafka, the machine and the
other processes on it have their say (``omni bench --job-path backlog|live``).

The real ``OmnichannelJob`` runs over in-memory state partitions, fed polls as the engine feeds them: the
outbox is taken after every poll, timers fire after every poll, and a checkpoint encodes and writes the
changed keys every ``checkpoint_every`` events. Two kinds of traffic:

* ``backlog``: the full-pipeline throughput run's events, default catalogue, 4,000-record polls;
* ``live``: the latency run's traffic, in the order it happened, every delay at zero (each durable
  purchase is an action at once), 200-record polls.

The first half of the events warms the state up; the second half is timed. Timings on a shared machine
move by a fifth from one minute to the next; instructions do not. The timed half runs inside a ctypes
callback so that callgrind can count only it::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='ffi_call*' \\
        .venv/bin/omni bench --job-path live --events 16000
"""

from __future__ import annotations

import ctypes
import gc
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition

from pipeline.actions.catalogue import Catalogue, with_delay
from pipeline.bench.run import Figures, _bench_rules, _simulator_records
from pipeline.engine.omnichannel import OmnichannelJob
from pipeline.ops.topics import ACTION_TOPIC_PREFIX, REPARTITION, load_topics
from pipeline.runtime.job import Outbox
from pipeline.runtime.partitioner import partition_for
from pipeline.runtime.state.memory import MemoryStore
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import Settings
from pipeline.simulate.population import Population, Produced

Poll = dict[TopicPartition, list["_Record"]]


@dataclass(slots=True)
class _Record:
    """What the job reads of an aiokafka ConsumerRecord."""

    key: bytes
    value: bytes
    offset: int
    timestamp: int
    headers: tuple[()] = ()


def job_path(base: Settings, traffic: str, events: int, checkpoint_every: int = 10_000) -> Figures:
    """Run the job over ``events`` events of ``traffic``; time the second half."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        live = traffic == "live"
        catalogue_file = with_delay(tmp, "0s") if live else base.catalogue_file
        catalogue = Catalogue.load(catalogue_file)
        settings = base.model_copy(update={"rules_file": _bench_rules(tmp), "catalogue_file": catalogue_file})
        specs = load_topics(settings.topics_file)
        job = OmnichannelJob(settings, catalogue, specs)
        owned = {p: PartitionState.open(p, MemoryStore()) for p in range(specs[REPARTITION].partitions)}
        if live:
            population = Population(catalogue, customers=5000, seed=9)
            produced: list[Produced] = []
            while len(produced) < events:
                produced.extend(population.journey(time.time()))
        else:
            produced = _simulator_records(catalogue, events)
        produced = produced[:events]
        size = 200 if live else 4000
        arrived = int(time.time() * 1000)
        polls: list[Poll] = []
        for start in range(0, len(produced), size):
            poll: Poll = {}
            for offset, rec in enumerate(produced[start : start + size], start):
                tp = TopicPartition(settings.topic(rec.topic), partition_for(rec.key, specs[rec.topic].partitions))
                poll.setdefault(tp, []).append(_Record(rec.key, rec.value, offset, arrived))
            polls.append(poll)
        out = Outbox(job.partition_counts)
        every = max(1, checkpoint_every // size)
        sent: dict[str, int] = {}

        def run(batch: list[Poll]) -> Callable[[], None]:
            def go() -> None:
                for i, poll in enumerate(batch):
                    now = time.time()
                    for tp, records in poll.items():
                        job.on_source(tp, records, now, out, owned)
                    for state in owned.values():
                        job.on_timers(state, now + 0.001, out)  # due by now: fired at this poll
                    for (topic, _), taken in out.take().items():
                        sent[topic] = sent.get(topic, 0) + len(taken)
                    if i % every == every - 1:
                        for state in owned.values():
                            state.index_unfired()
                            state.store.write(state.txn.take(), i)
                            state.txn.flushed()

            return go

        half = len(polls) // 2
        run(polls[:half])()
        timed = ctypes.CFUNCTYPE(None)(run(polls[half:]))
        counted = sum(len(records) for poll in polls[half:] for records in poll.values())
        sent.clear()
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)  # as the engine runs it
        try:
            started = time.process_time()
            timed()
            spent = time.process_time() - started
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
        return {
            "traffic": traffic, "timed_events": counted, "us_per_event": round(spent / counted * 1e6, 1),
            # actions.<channel> and actions.holdout: every action decided, sent or held out
            "actions": sum(n for topic, n in sent.items() if topic.startswith(settings.topic(ACTION_TOPIC_PREFIX))),
            "outputs": sum(sent.values()),
        }  # fmt: skip
