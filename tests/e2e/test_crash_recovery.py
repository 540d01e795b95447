"""Three workers on twelve partitions under steady load; one SIGKILLed and restarted, one stopped gracefully.

The same simulator traffic runs twice on one broker: once through a single worker that is
never disturbed, once through three workers that are. Afterwards:

* every input is accounted for: the clean run's counters add up to what was produced
  (processed + duplicates + dead-lettered); the disturbed run dead-lettered the same inputs
  and holds the same profiles, event ids included (an event lost is missing from them, one
  applied twice counts twice);
* no ``action_id`` is on the action topics twice, nor one play for one trigger and person
  under two ids, although the killed worker's last actions were decided again by the replay
  (the output fence, ``pipeline.state.fence``, found them).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import TopicPartition

from pipeline import kafka
from pipeline.actions.catalogue import Catalogue
from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.identity.export import changelog_state
from pipeline.identity.protocol import is_tombstone
from pipeline.ingest.contract import IDENTIFIER_TYPES, INPUT_TOPICS
from pipeline.ops.topics import ACTION_TOPIC_PREFIX, load_topics
from pipeline.profiles.profile import DIGEST_CHARS
from pipeline.settings import Settings
from pipeline.simulate.population import Population, Produced
from pipeline.simulate.produce import produce_all, send_produced
from tests.helpers import catalogue_with_delay, create_topics, read_topic

pytestmark = pytest.mark.slow

PARTITIONS = 12
RECORDS = 24_000
PRODUCE_S = 24.0  # steady load: RECORDS over this long


def test_kill_restart_and_graceful_stop_lose_nothing_and_send_nothing_twice(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"topics_file": _topics_with(PARTITIONS, tmp_path), "commit_interval_s": 1.0})
    catalogue = catalogue_with_delay(tmp_path, "2s")  # follow-ups fire during the run, and across the crash
    records = list(itertools.islice(Population(Catalogue.load(catalogue), customers=400, seed=5, bad_rate=0.02).records(time.time()), RECORDS))  # fmt: skip

    clean = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "clean.", "state_dir": tmp_path / "clean"})
    asyncio.run(create_topics(clean))
    asyncio.run(produce_all(clean, records))
    worker = WorkerProcess.start(clean, tmp_path / "clean.log", catalogue)
    try:
        _wait_drained(clean, [worker], len(records))
        counts = worker.metrics()
    finally:
        assert worker.stop() == 0
    accounted = sum(counts.get(n, 0) for n in ("omni_events_processed_total", "omni_duplicates_total", "omni_deadletter_total"))  # fmt: skip
    assert accounted == len(records), counts

    disturbed = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "crash."})
    asyncio.run(create_topics(disturbed))

    def start(n: int) -> WorkerProcess:
        state = disturbed.model_copy(update={"state_dir": tmp_path / f"state-{n}"})
        return WorkerProcess.start(state, tmp_path / f"worker-{n}.log", catalogue)

    workers = [start(n) for n in range(3)]
    try:
        wait_ready(workers, PARTITIONS)
        producer = threading.Thread(target=lambda: asyncio.run(_produce_steadily(disturbed, records, PRODUCE_S)))
        producer.start()
        # Mid-stream: under steady load, actions have gone out since the worker's last checkpoint
        # (every second, on its own clock), and those are what the fence must find (asserted below).
        time.sleep(6.5 * disturbed.commit_interval_s)
        assert workers[0].stop(signal.SIGKILL) == -signal.SIGKILL
        wait_ready(workers[1:], PARTITIONS)  # the group noticed (session timeout) and the others took over
        fence = Counter(_fence_counts(workers[1]))
        assert workers[1].stop() == 0, workers[1].log.read_text()[-3000:]  # SIGTERM: checkpoints, leaves the group
        time.sleep(PRODUCE_S * 0.1)
        workers[0] = start(0)  # over its old RocksDB directory
        producer.join(timeout=PRODUCE_S * 4)
        assert not producer.is_alive()
        live = [workers[0], workers[2]]
        _wait_drained(disturbed, live, len(records))
        for w in live:
            fence.update(_fence_counts(w))
    finally:
        for w in workers:
            assert w.stop() in (0, -signal.SIGKILL), w.log.read_text()[-3000:]

    disturbed_live = _live_profiles(disturbed)
    clean_profiles, crash_profiles = _profiles(_live_profiles(clean)), _profiles(disturbed_live)
    assert len(clean_profiles) > 300
    differences = _differences(crash_profiles, clean_profiles)
    assert differences == [], "\n".join(differences[:20])

    assert _dead_lettered(disturbed) == _dead_lettered(clean)

    actions = _actions(disturbed)
    ids = Counter(a["action_id"] for a in actions)
    twice = {a: n for a, n in ids.items() if n > 1}
    assert not twice, f"{len(twice)} actions sent more than once: {list(twice.items())[:5]}"
    assert len(ids) > 100
    # Nor under another id: a replay that decided a play for another profile of the same person
    # (identity steps in another order) would give it a new one.
    person = {f"{kind}:{v}": pid for pid, p in crash_profiles.items() for kind, vs in p["identifiers"].items() for v in vs}
    causes = Counter((a["rule"], person.get(a["customer"], a["customer"]), tuple(a["trigger_event_ids"])) for a in actions)
    assert [c for c, n in causes.items() if n > 1] == []
    # Nor is one lost: every action a profile records as decided (sent, held out, or fenced as sent
    # before the crash) is on an action topic. A fence that took an unsent action for a sent one fails here.
    recorded = {aid for p in disturbed_live.values() for aid in p["actions"]}
    missing = recorded - ids.keys()
    assert not missing, f"{len(missing)} decided actions on no action topic: {sorted(missing)[:5]}"
    print(f"\ncrash run: {len(records)} records, {len(crash_profiles)} profiles, {len(ids)} actions; "
          f"{fence['found']:.0f} found sent after the last checkpoints, {fence['fenced']:.0f} of them decided "
          "again and not sent again")  # fmt: skip
    assert fence["found"] > 0, "the kill came between checkpoints: some actions went out after the last one"


def _fence_counts(worker: WorkerProcess) -> dict[str, float]:
    m = worker.metrics()
    return {"found": m.get("omni_fence_found_actions_total", 0), "fenced": m.get("omni_actions_fenced_total", 0)}


def _topics_with(partitions: int, tmp: Path) -> Path:
    doc = yaml.safe_load(Settings().topics_file.read_text())
    doc["defaults"]["partitions"] = partitions
    path = tmp / "topics.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _produce_steadily(settings: Settings, records: list[Produced], seconds: float, tick: float = 0.05) -> None:
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


def _wait_drained(settings: Settings, workers: list[WorkerProcess], produced: int) -> None:
    """Until the group has committed every input record and the workers' lag stayed 0 for two seconds."""
    quiet_since: list[float] = []
    last: dict[str, float] = {}

    def drained() -> bool:
        for w in workers:
            assert w.alive(), w.log.read_text()[-3000:]
        committed = asyncio.run(_committed_inputs(settings))
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


async def _committed_inputs(settings: Settings) -> int:
    specs = load_topics(settings.topics_file)
    tps = [TopicPartition(settings.topic(t), p) for t in INPUT_TOPICS for p in range(specs[t].partitions)]
    consumer = kafka.consumer(settings, group_id=settings.group_id)
    await consumer.start()
    try:
        return sum([(await consumer.committed(tp)) or 0 for tp in tps])
    finally:
        await consumer.stop()


def _live_profiles(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every live profile as of the last checkpoints, as stored (merged ones left out)."""
    out = {}
    for store in asyncio.run(changelog_state(settings)):
        for kind in IDENTIFIER_TYPES:
            for key, raw in store.items(f"{kind}:".encode()):
                p = orjson.loads(raw)
                if not is_tombstone(p) and "identifiers" in p:
                    out[key.decode()] = p
    return out


def _profiles(live: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Live profiles (from :func:`_live_profiles`) reduced to what the events put in them.

    Left out: timers, actions and waiting lists, which depend on wall-clock time and on the order
    in which different topics' records met; the merge history, for the same reason (a cookie seen
    before its login founds a profile that is merged, one seen after is claimed at once); and the
    event-id window's order (arrival order).
    """
    out = {}
    for pid, p in live.items():
        seen = p["seen_events"]
        out[pid] = {
            "identifiers": {k: sorted(v) for k, v in p["identifiers"].items()},
            "counters": p["counters"],
            "lifetime_value": p["lifetime_value"],
            "purchases": sorted(orjson.dumps(x, option=orjson.OPT_SORT_KEYS) for x in p["purchases"]),
            "first_seen": p["first_seen"],
            "last_seen": p["last_seen"],
            "seen_events": sorted(seen[i : i + DIGEST_CHARS] for i in range(0, len(seen), DIGEST_CHARS)),
        }
    return out


def _differences(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> list[str]:
    out = [f"{pid}: only in the clean run" for pid in want.keys() - got.keys()]
    out += [f"{pid}: only in the disturbed run" for pid in got.keys() - want.keys()]
    for pid in sorted(want.keys() & got.keys()):
        out += [f"{pid}.{f}: {got[pid][f]} != {want[pid][f]}" for f in want[pid] if got[pid][f] != want[pid][f]]
    return out


def _dead_lettered(settings: Settings) -> Counter[str]:
    """Dead-lettered inputs by reason, each input once (a replay may dead-letter it again)."""
    distinct = {
        (r.headers["dlq.topic"].decode().removeprefix(settings.topic_prefix), r.headers["dlq.partition"],
         r.headers["dlq.offset"], r.headers["dlq.reason"].decode())
        for r in asyncio.run(read_topic(settings, "deadletter"))
    }  # fmt: skip
    return Counter(f"{topic} {reason}" for topic, _, _, reason in distinct)


def _actions(settings: Settings) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value)  # type: ignore[arg-type]
        for topic in load_topics(settings.topics_file)
        if topic.startswith(ACTION_TOPIC_PREFIX)
        for r in asyncio.run(read_topic(settings, topic))
    ]
