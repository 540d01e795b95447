"""What a run through disturbed workers must still show, read back from the broker.

Shared by the fault campaign (``omni chaos``) and the tests that break workers on purpose
(a kill, a stall, a torn checkpoint): each compares the outcome with a clean run of the
same input.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import TopicPartition

from pipeline.bench.workers import WorkerProcess, wait_until
from pipeline.identity.export import changelog_state
from pipeline.identity.protocol import is_tombstone
from pipeline.ingest.contract import IDENTIFIER_TYPES, INPUT_TOPICS
from pipeline.ops.topics import ACTION_TOPIC_PREFIX, apply_topics, load_topics
from pipeline.profiles.profile import DIGEST_CHARS
from pipeline.runtime import kafka
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.simulate.population import Produced
from pipeline.simulate.produce import produce_all, send_produced


async def read_topic(settings: Settings, *logical_topics: str) -> list[Any]:
    """Every record of the topics, to their true end (Fetch high watermarks), with one consumer.

    One consumer for all: stopping one that has read an empty partition of Tansu took 20 s.
    """
    specs = load_topics(settings.topics_file)
    starts = {TopicPartition(settings.topic(t), p): 0 for t in logical_topics for p in range(specs[t].partitions)}
    consumer = kafka.consumer(settings)
    await consumer.start()
    out: list[Any] = []
    try:
        async for _tp, records in kafka.read_to_end(consumer, starts, _head_gone):
            out.extend(records)
    finally:
        await consumer.stop()
    return out


async def _head_gone(tp: TopicPartition) -> None:
    raise RuntimeError(f"{tp} no longer starts at offset 0")


def topics_with(partitions: int, tmp: Path) -> Path:
    doc = yaml.safe_load((PROJECT_ROOT / "topics.yaml").read_text())
    doc["defaults"]["partitions"] = partitions
    path = tmp / "topics.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def produce_steadily(settings: Settings, records: list[Produced], seconds: float, tick: float = 0.05) -> None:
    """The records spread evenly over ``seconds``, a slice every ``tick``.

    Evenly matters: in bursts a second apart, each burst's actions were all checkpointed before
    the next arrived, and a kill between bursts left nothing for the fence to do.
    """
    specs = load_topics(settings.topics_file)
    producer = kafka.producer(settings)
    await producer.start()
    try:
        ticks = round(seconds / tick)
        step = -(-len(records) // ticks)
        started = time.monotonic()
        for n, i in enumerate(range(0, len(records), step)):
            await send_produced(producer, settings, specs, records[i : i + step])
            await asyncio.sleep(max(0.0, started + (n + 1) * tick - time.monotonic()))
    finally:
        await producer.stop()


def create_topics(settings: Settings) -> None:
    drift = asyncio.run(apply_topics(settings, load_topics(settings.topics_file)))
    if drift:
        raise RuntimeError(f"topics drifted: {drift}")


def clean_run(settings: Settings, records: list[Produced], workdir: Path, catalogue: Path | None = None) -> Settings:
    """The input through one worker that nothing disturbs, on topics of its own; returns their settings.

    The worker's counters must account for every record (processed, duplicate or dead-lettered).
    """
    clean = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "clean.", "state_dir": workdir / "clean"})
    create_topics(clean)
    asyncio.run(produce_all(clean, records))
    worker = WorkerProcess.start(clean, workdir / "clean.log", catalogue)
    try:
        wait_drained(clean, [worker], len(records))
        counts = worker.metrics()
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-3000:]
    accounted = sum(counts.get(n, 0) for n in ("omni_events_processed_total", "omni_duplicates_total", "omni_deadletter_total"))
    assert accounted == len(records), f"the clean run accounts for {accounted} of {len(records)} records: {counts}"
    return clean


def wait_drained(settings: Settings, workers: list[WorkerProcess], produced: int) -> None:
    """Until the group has committed every input record and the workers' lag stayed 0 for two seconds."""
    quiet_since: list[float] = []
    last: dict[str, float] = {}

    def drained() -> bool:
        for w in workers:
            assert w.alive(), w.log.read_text()[-3000:]
        committed = asyncio.run(committed_inputs(settings))
        lag = sum(w.metrics().get("omni_consumer_lag", 1) for w in workers)
        last.update(committed=committed, lag=lag)
        if committed < produced or lag:
            quiet_since.clear()
            return False
        quiet_since.append(time.monotonic())
        return quiet_since[-1] - quiet_since[0] >= 2.0

    try:
        wait_until(drained, 180, "every input record to be processed and committed", poll_s=0.5)
    except TimeoutError as exc:
        lagging = [
            line for w in workers for line in urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics").read().decode().splitlines()
            if line.startswith("omni_consumer_lag{") and not line.endswith(" 0.0")
        ]  # fmt: skip
        raise AssertionError(f"{exc}: {produced} produced, last seen {last}; lagging: {lagging}") from None
    time.sleep(2 * settings.commit_interval_s)  # what the last records led to is checkpointed too


async def committed_inputs(settings: Settings) -> int:
    specs = load_topics(settings.topics_file)
    tps = [TopicPartition(settings.topic(t), p) for t in INPUT_TOPICS for p in range(specs[t].partitions)]
    consumer = kafka.consumer(settings, group_id=settings.group_id)
    await consumer.start()
    try:
        return sum([(await consumer.committed(tp)) or 0 for tp in tps])
    finally:
        await consumer.stop()


def live_profiles(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every live profile as of the last checkpoints, as stored (merged ones left out)."""
    out = {}
    for store in asyncio.run(changelog_state(settings)):
        for kind in IDENTIFIER_TYPES:
            for key, raw in store.items(f"{kind}:".encode()):
                p = orjson.loads(raw)
                if not is_tombstone(p) and "identifiers" in p:
                    out[key.decode()] = p
    return out


FULL_WINDOW = "(a full window: its contents follow arrival order)"


def comparable(live: dict[str, dict[str, Any]], settings: Settings) -> dict[str, dict[str, Any]]:
    """Live profiles (from :func:`live_profiles`) reduced to what the events put in them.

    Left out: timers, actions and waiting lists, which depend on wall-clock time and on the order
    in which different topics' records met; the merge history, for the same reason (a cookie seen
    before its login founds a profile that is merged, one seen after is claimed at once); and the
    event-id window's order (arrival order). And the contents of a full window (the last
    ``purchases_kept`` purchases, the last ``dedup_window`` event ids): which entries a full
    window kept depends on the order in which the channels' records met, in a clean run as in
    any other (a 30-minute campaign gives each customer about 900 events). The counters and the
    lifetime value still count every event and purchase, so an event applied twice shows there.
    """
    out = {}
    for pid, p in live.items():
        seen = p["seen_events"]
        digests = sorted(seen[i : i + DIGEST_CHARS] for i in range(0, len(seen), DIGEST_CHARS))
        purchases = sorted(orjson.dumps(x, option=orjson.OPT_SORT_KEYS) for x in p["purchases"])
        out[pid] = {
            "identifiers": {k: sorted(v) for k, v in p["identifiers"].items()},
            "counters": p["counters"],
            "lifetime_value": p["lifetime_value"],
            "purchases": FULL_WINDOW if len(purchases) >= settings.purchases_kept else purchases,
            "first_seen": p["first_seen"],
            "last_seen": p["last_seen"],
            "seen_events": FULL_WINDOW if len(digests) >= settings.dedup_window else digests,
        }
    return out


def differences(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> list[str]:
    out = [f"{pid}: only in the clean run" for pid in want.keys() - got.keys()]
    out += [f"{pid}: only in the disturbed run" for pid in got.keys() - want.keys()]
    for pid in sorted(want.keys() & got.keys()):
        out += [f"{pid}.{f}: {got[pid][f]} != {want[pid][f]}" for f in want[pid] if got[pid][f] != want[pid][f]]
    return out


def dead_lettered(settings: Settings) -> Counter[str]:
    """Dead-lettered inputs by reason, each input once (a replay may dead-letter it again)."""
    distinct = {
        (h["dlq.topic"].decode().removeprefix(settings.topic_prefix), h["dlq.partition"], h["dlq.offset"],
         h["dlq.reason"].decode())
        for h in (dict(r.headers) for r in asyncio.run(read_topic(settings, "deadletter")))
    }  # fmt: skip
    return Counter(f"{topic} {reason}" for topic, _, _, reason in distinct)


def sent_actions(settings: Settings) -> list[dict[str, Any]]:
    topics = [t for t in load_topics(settings.topics_file) if t.startswith(ACTION_TOPIC_PREFIX)]
    return [orjson.loads(r.value) for r in asyncio.run(read_topic(settings, *topics))]
