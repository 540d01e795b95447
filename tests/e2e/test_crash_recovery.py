"""Three workers on twelve partitions under steady load; one SIGKILLed and restarted, one stopped gracefully.

The same simulator traffic runs twice on one broker: once through a single worker that is
never disturbed, once through three workers that are. Afterwards:

* every input is accounted for: the clean run's counters add up to what was produced
  (processed + duplicates + dead-lettered); the disturbed run dead-lettered the same inputs
  and holds the same profiles, event ids included (an event lost is missing from them, one
  applied twice counts twice);
* no ``action_id`` is on the action topics twice, nor one play for one trigger and person
  under two ids, although the killed worker's last actions were decided again by the replay
  (the output fence, ``pipeline.runtime.state.fence``, found them).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.actions.catalogue import Catalogue
from pipeline.bench.workers import WorkerProcess, wait_ready
from pipeline.settings import Settings
from pipeline.simulate.population import Population
from pipeline.chaos.invariants import (
    clean_run, comparable, dead_lettered, differences, live_profiles, produce_steadily, sent_actions, topics_with,
    wait_drained,
)  # fmt: skip
from tests.helpers import catalogue_with_delay, create_topics

pytestmark = pytest.mark.slow

PARTITIONS = 12
RECORDS = 24_000
PRODUCE_S = 24.0  # steady load: RECORDS over this long


def test_kill_restart_and_graceful_stop_lose_nothing_and_send_nothing_twice(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"topics_file": topics_with(PARTITIONS, tmp_path), "commit_interval_s": 1.0})
    catalogue = catalogue_with_delay(tmp_path, "2s")  # follow-ups fire during the run, and across the crash
    records = list(itertools.islice(Population(Catalogue.load(catalogue), customers=400, seed=5, bad_rate=0.02).records(time.time()), RECORDS))  # fmt: skip

    clean = clean_run(settings, records, tmp_path, catalogue)  # every input accounted for, once

    disturbed = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "crash."})
    asyncio.run(create_topics(disturbed))

    def start(n: int) -> WorkerProcess:
        state = disturbed.model_copy(update={"state_dir": tmp_path / f"state-{n}"})
        return WorkerProcess.start(state, tmp_path / f"worker-{n}.log", catalogue)

    workers = [start(n) for n in range(3)]
    try:
        wait_ready(workers, PARTITIONS)
        producer = threading.Thread(target=lambda: asyncio.run(produce_steadily(disturbed, records, PRODUCE_S)))
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
        wait_drained(disturbed, live, len(records))
        for w in live:
            fence.update(_fence_counts(w))
    finally:
        for w in workers:
            assert w.stop() in (0, -signal.SIGKILL), w.log.read_text()[-3000:]

    disturbed_live = live_profiles(disturbed)
    clean_profiles, crash_profiles = comparable(live_profiles(clean), clean), comparable(disturbed_live, disturbed)
    assert len(clean_profiles) > 300
    differing = differences(crash_profiles, clean_profiles)
    assert differing == [], "\n".join(differing[:20])

    assert dead_lettered(disturbed) == dead_lettered(clean)

    actions = sent_actions(disturbed)
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


