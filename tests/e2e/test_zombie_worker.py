"""A worker stopped past the session timeout and woken again sends nothing and writes nothing it no longer owns.

Two workers share eight partitions under steady load with follow-ups due every few
seconds. One is stopped (SIGSTOP) for twice the session timeout: the group gives its
partitions to the other, which restores them and fires their timers. Then it is woken
(SIGCONT). Its partitions' timers came due while it slept; without a fence it fired
them at once, beside their new owner, and wrote their changelog over the new owner's.
With membership held as a lease (``pipeline.runtime.lease``) it gives up what it held,
rejoins and restores. Against a clean run of the same input:

* no ``action_id`` twice on the action topics, nor one play for one trigger and person twice;
* the same profiles;
* each worker's RocksDB holds exactly what a fresh restore of its partitions' changelog holds.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from rocksdict import Options, Rdict

from pipeline.actions.catalogue import Catalogue
from pipeline.bench.workers import WorkerProcess, wait_ready
from pipeline.identity.export import changelog_state
from pipeline.runtime.state.base import OFFSET_KEY, TOPIC_KEY, WRITTEN_AT_KEY
from pipeline.settings import Settings
from pipeline.simulate.population import Population
from pipeline.chaos.invariants import (
    clean_run, comparable, differences, live_profiles, produce_steadily, sent_actions, topics_with, wait_drained,
)  # fmt: skip
from tests.helpers import catalogue_with_delay, create_topics

pytestmark = pytest.mark.slow

PARTITIONS = 8
RECORDS = 12_000
PRODUCE_S = 20.0


def test_a_worker_woken_after_losing_its_partitions_sends_and_writes_nothing_for_them(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"topics_file": topics_with(PARTITIONS, tmp_path), "commit_interval_s": 1.0})
    catalogue = catalogue_with_delay(tmp_path, "2s")
    population = Population(Catalogue.load(catalogue), customers=300, seed=11, bad_rate=0.0)
    records = list(itertools.islice(population.records(time.time()), RECORDS))

    want = comparable(live_profiles(clean_run(settings, records, tmp_path, catalogue)), settings)

    disturbed = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "zombie."})
    asyncio.run(create_topics(disturbed))
    dirs = [tmp_path / f"state-{n}" for n in range(2)]
    workers = [
        WorkerProcess.start(disturbed.model_copy(update={"state_dir": d}), tmp_path / f"worker-{n}.log", catalogue)
        for n, d in enumerate(dirs)
    ]
    try:
        wait_ready(workers, PARTITIONS)
        producer = threading.Thread(target=lambda: asyncio.run(produce_steadily(disturbed, records, PRODUCE_S)))
        producer.start()
        time.sleep(4.0)
        workers[0].proc.send_signal(signal.SIGSTOP)
        try:
            wait_ready(workers[1:], PARTITIONS)  # the group gave the sleeper's partitions away
            time.sleep(2 * settings.session_timeout_ms / 1000)  # their timers fire at the new owner
        finally:
            workers[0].proc.send_signal(signal.SIGCONT)
        producer.join(timeout=PRODUCE_S * 4)
        assert not producer.is_alive()
        wait_drained(disturbed, workers, len(records))
        owned = {n: w.health()["state_partitions"] for n, w in enumerate(workers)}  # type: ignore[index]
        lost = workers[0].metrics().get("omni_lease_lost_total", 0)
    finally:
        for w in workers:
            assert w.stop() == 0, w.log.read_text()[-3000:]

    actions = sent_actions(disturbed)
    ids = Counter(a["action_id"] for a in actions)
    assert len(ids) > 100
    assert {a: n for a, n in ids.items() if n > 1} == {}, "an action was sent by both workers"
    got = comparable(live_profiles(disturbed), disturbed)
    person = {f"{kind}:{v}": pid for pid, p in got.items() for kind, vs in p["identifiers"].items() for v in vs}
    causes = Counter((a["rule"], person.get(a["customer"], a["customer"]), tuple(a["trigger_event_ids"])) for a in actions)
    assert [c for c, n in causes.items() if n > 1] == []
    assert differences(got, want) == []

    changelog = asyncio.run(changelog_state(disturbed))
    for n, partitions in owned.items():
        for p in partitions:  # type: ignore[attr-defined]
            db = Rdict(str(dirs[n] / f"state-{p}"), options=Options(raw_mode=True))
            try:
                local = {k: v for k, v in db.items() if k not in (OFFSET_KEY, TOPIC_KEY, WRITTEN_AT_KEY)}
            finally:
                db.close()
            restored = dict(changelog[p].items(b""))
            assert local.keys() == restored.keys(), f"worker {n}, partition {p}: keys differ"
            assert [k for k in local if orjson.loads(local[k]) != orjson.loads(restored[k])] == [], f"worker {n}, partition {p}"
    print(f"\nzombie run: {len(ids)} actions, lease lost {lost:.0f} time(s), partitions at the end {owned}")
