"""A worker process fed garbage and near-valid events on every input topic: it never crashes, and every
record is accounted for (validated in, or dead-lettered with a reason)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson

from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.ingest.contract import INPUT_TOPICS
from pipeline.settings import Settings
from tests.helpers import create_topics, iso, produce, read_topic
from tests.unit.test_fuzz import IDS, PATHS, VALID, mutate

NASTY = [None, True, -1, 0, 2**63, 1e308, -0.0, "", " ", "\u0000", "\U0001f600" * 40, "null", "undefined", [], {},
         [1, [2, [3]]], {"a": {"b": {"c": None}}}, "2026-02-30T25:61:00Z", "x" * 5000]  # fmt: skip


def fuzzed(rng: random.Random, n: int) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice([*INPUT_TOPICS, "outcomes"]), rng.randbytes(rng.randint(0, 200))
    if roll < 0.35:
        report = {"action_id": f"a{n}", "customer": "customer_id:C1", "outcome": rng.choice(["opened", "eaten"]),
                  "occurred_at": iso(time.time()), rng.choice(["rule", "detail", "extra"]): rng.choice(NASTY)}  # fmt: skip
        return "outcomes", orjson.dumps(report)
    topic, body = rng.choice(VALID)
    doc = {"event_id": f"z-{n}", "occurred_at": iso(time.time() - n), "identifiers": dict(IDS), **body}
    for _ in range(rng.randint(0, 3)):
        doc = mutate(doc, rng.choice(PATHS), rng.choice(NASTY), rng.random() < 0.3)
    try:
        return topic, orjson.dumps(doc)
    except TypeError:
        return topic, repr(doc).encode()


async def test_garbage_never_crashes_the_worker_and_every_record_is_accounted_for(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    rng = random.Random(20261123)
    by_topic: dict[str, list[bytes]] = {}
    records = [fuzzed(rng, n) for n in range(600)]
    for topic, value in records:
        by_topic.setdefault(topic, []).append(value)
    for topic, values in by_topic.items():
        await produce(settings, topic, values)
    worker = WorkerProcess.start(settings, tmp_path / "worker.log")
    try:
        wait_ready([worker], 4)

        def accounted() -> float:
            m = worker.metrics()
            return m.get("omni_events_in_total", 0) + m.get("omni_deadletter_total", 0)

        wait_until(lambda: accounted() >= len(records), 60, "every record in or dead-lettered", poll_s=0.5)
        time.sleep(1.0)
        assert worker.alive(), worker.log.read_text()[-3000:]
        m = worker.metrics()
        assert accounted() == len(records)  # nothing lost, nothing counted twice
        assert m.get("omni_deadletter_total", 0) > 100 and m.get("omni_events_in_total", 0) > 100
        log = worker.log.read_text()
        assert "Traceback" not in log, log[-3000:]  # not even a processing_error: the data never hits a bug
    finally:
        assert worker.stop() == 0
    letters = await read_topic(settings, "deadletter", timeout_s=10)
    assert len(letters) == m["omni_deadletter_total"] and all(r.headers.get("dlq.reason") for r in letters)
