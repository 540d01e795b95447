"""``omni bench``: the pipeline against a raw aiokafka passthrough, same events, same broker, one run.

1. Generate a fixed number of realistic simulator events (0.5 % deliberately
   broken) and produce them to the input topics.
2. Raw ceiling: aiokafka consume, orjson parse, produce in per-partition
   batches to one output topic. No state, no validation.
3. This pipeline: the engine (validation, identity key, repartition, profile
   state in RocksDB with changelog and checkpoints, rules) over the same records.

Prints events/s for each and the ratio, and writes them to a JSON file.
A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline import kafka
from pipeline.actions.catalogue import Catalogue
from pipeline.engine.omnichannel import omnichannel_engine
from pipeline.ingest.contract import INPUT_TOPICS
from pipeline.kafka import Record
from pipeline.ops.broker import EmbeddedBroker
from pipeline.ops.metrics import Metrics
from pipeline.ops.topics import apply_topics, load_topics
from pipeline.settings import Settings
from pipeline.simulate.population import Population, Produced
from pipeline.simulate.produce import produce_all

PASSTHROUGH = "bench.passthrough"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _broker(settings: Settings) -> Iterator[Settings]:
    if settings.bootstrap:
        yield settings
        return
    with EmbeddedBroker(settings) as broker:
        yield settings.model_copy(update={"bootstrap": broker.bootstrap})


async def _generate(settings: Settings, events: int) -> int:
    population = Population(Catalogue.load(settings.catalogue_file), customers=5000, seed=42, bad_rate=0.005)
    now = time.time()
    records: list[Produced] = []
    while len(records) < events:
        records.extend(population.journey(now))
    return await produce_all(settings, records[:events])


async def _raw_passthrough(settings: Settings, events: int) -> float:
    """Consume every input partition, parse, produce batched per partition; return seconds."""
    specs = load_topics(settings.topics_file)
    out_topic = settings.topic(PASSTHROUGH)
    out_partitions = specs["channel.web"].partitions
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    await admin.create_topics(
        [NewTopic(out_topic, out_partitions, 1, topic_configs={"retention.ms": "3600000", "cleanup.policy": "delete"})]
    )
    await admin.close()
    consumer = kafka.consumer(settings)
    producer = kafka.producer(settings)
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(settings.topic(t), p) for t in INPUT_TOPICS for p in range(specs[t].partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    seen = 0
    started = time.perf_counter()
    try:
        while seen < events:
            batches = await consumer.getmany(timeout_ms=100, max_records=settings.max_poll_records)
            outbox: dict[int, list[Record]] = defaultdict(list)
            for tp, records in batches.items():
                for rec in records:
                    try:
                        value = orjson.dumps(orjson.loads(rec.value))
                    except orjson.JSONDecodeError:
                        value = rec.value  # the broken 0.5 % pass through as they are
                    outbox[tp.partition].append(Record(rec.key, value))
                seen += len(records)
            sent = []
            for partition, recs in outbox.items():
                sent.extend(await kafka.send_records(producer, out_topic, partition, recs))
            for future, _ in sent:
                await future
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()


async def _pipeline(settings: Settings, events: int) -> tuple[float, dict[str, float]]:
    metrics = Metrics()
    engine = omnichannel_engine(settings, Catalogue.load(settings.catalogue_file), metrics)
    await engine.start()
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.ready.wait(), timeout=60)
    started = time.perf_counter()

    def done() -> float:
        total = 0.0
        for family in metrics.registry.collect():
            if family.name in ("omni_events_processed", "omni_duplicates", "omni_deadletter"):
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    last_report = started
    while done() < events:
        await asyncio.sleep(0.01)
        if time.perf_counter() - last_report > 5:
            last_report = time.perf_counter()
            _say(f"  pipeline: {int(done()):,}/{events:,} events")
    elapsed = time.perf_counter() - started
    engine.stopping.set()
    await task
    await engine.stop()
    counts = {
        f.name: sum(s.value for s in f.samples if s.name.endswith("_total"))
        for f in metrics.registry.collect()
        if f.name in ("omni_events_processed", "omni_deadletter", "omni_duplicates", "omni_actions")
    }
    return elapsed, counts


def run_bench(settings: Settings, events: int, out: Path) -> dict[str, object]:
    with _broker(settings) as base, tempfile.TemporaryDirectory() as state_dir:
        bench = base.model_copy(
            update={"topic_prefix": f"bench-{uuid.uuid4().hex[:6]}.", "state_dir": Path(state_dir)}
        )
        drift = asyncio.run(apply_topics(bench, load_topics(bench.topics_file)))
        assert not drift, drift
        _say(f"generating {events:,} simulator events (0.5 % broken) ...")
        produced = asyncio.run(_generate(bench, events))
        _say("raw aiokafka passthrough (consume, parse, produce batched) ...")
        raw_s = asyncio.run(_raw_passthrough(bench, produced))
        _say("this pipeline (validate, identify, repartition, profile state, rules, checkpoints) ...")
        pipe_s, counts = asyncio.run(_pipeline(bench, produced))

    raw_eps, pipe_eps = produced / raw_s, produced / pipe_s
    result: dict[str, object] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "broker": "KAFKA_BOOTSTRAP" if settings.bootstrap else "embedded Tansu 0.6",
        "events": produced,
        "raw_passthrough_events_per_s": round(raw_eps),
        "pipeline_events_per_s": round(pipe_eps),
        "pipeline_over_raw": round(pipe_eps / raw_eps, 3),
        "pipeline_counts": counts,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"events                      {produced:>12,}")
    print(f"raw aiokafka passthrough    {raw_eps:>12,.0f} events/s")
    print(f"this pipeline               {pipe_eps:>12,.0f} events/s")
    print(f"pipeline / raw              {pipe_eps / raw_eps:>12.3f}")
    print(f"written to {out}")
    return result
