"""The real `omni worker` process: SIGKILL and restart, metrics over HTTP, graceful stop."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

from pipeline.bench.workers import WorkerProcess
from pipeline.settings import Settings
from tests.helpers import catalogue_with_delay, create_topics, produce, purchase, read_actions


def wait_metric(worker: WorkerProcess, check: Callable[[dict[str, float]], bool], timeout_s: float, what: str) -> dict[str, float]:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), f"worker exited while waiting for {what}: {worker.log.read_text()[-2000:]}"
        m = worker.metrics()
        if m and check(m):
            return m
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last metrics: {worker.metrics()}")


async def test_sigkilled_worker_restarted_emits_pending_action_exactly_once(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"commit_interval_s": 1.0})  # checkpoints well before the timer is due
    await create_topics(settings)
    catalogue = catalogue_with_delay(tmp_path, "10s")
    await produce(settings, "channel.store", [orjson.dumps(purchase("K1", "ev-k1", ["PRN-300"], channel="store"))], key=b"K1")

    first = WorkerProcess.start(settings, tmp_path / "worker-1.log", catalogue)
    try:
        m = wait_metric(first, lambda m: m.get("omni_timers_pending") == 1, 30, "the timer to be scheduled")
        # Two more checkpoints after the timer appeared: it is in RocksDB and the changelog.
        seen = m.get("omni_checkpoints_total", 0)
        wait_metric(first, lambda m: m.get("omni_checkpoints_total", 0) >= seen + 2, 10, "a checkpoint")
        assert m.get("omni_actions_total", 0) == 0, "the action must still be pending when the worker dies"
    finally:
        first.stop(signal.SIGKILL)

    second = WorkerProcess.start(settings, tmp_path / "worker-2.log", catalogue)
    try:
        wait_metric(second, lambda m: m.get("omni_actions_total", 0) >= 1, 60, "the action after restart")
        time.sleep(2.0)  # give a second emission every chance to show up
    finally:
        assert second.stop() == 0, second.log.read_text()[-3000:]  # SIGTERM: a clean stop

    actions = await read_actions(settings)
    assert len(actions) == 1, actions
    assert actions[0]["trigger_event_ids"] == ["ev-k1"]
    assert actions[0]["offer"]["sku"] == "INK-300"


async def test_worker_serves_health_metrics_and_profiles(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    await produce(settings, "channel.web", [orjson.dumps(purchase("P1", "ev-p1", ["TSH-001"]))], key=b"P1")
    await produce(settings, "channel.web", [b"not json"], key=b"P1")
    worker = WorkerProcess.start(settings, tmp_path / "worker.log")
    try:
        m = wait_metric(
            worker, lambda m: m.get("omni_events_processed_total", 0) >= 1 and m.get("omni_deadletter_total", 0) >= 1,
            30, "the events",
        )  # fmt: skip
        for name in ("omni_events_in_total", "omni_deadletter_total", "omni_event_latency_seconds_count",
                     "omni_consumer_lag", "omni_timers_pending", "omni_checkpoints_total"):  # fmt: skip
            assert name in m, f"{name} missing from /metrics"
        # the one purchase applied and the one record dead-lettered: the progress the benchmark polls
        assert worker.health() == {"ready": True, "state_partitions": [0, 1, 2, 3], "records_done": 2.0}
        assert m["omni_partitions_owned"] == 4
        request = urllib.request.Request(f"http://127.0.0.1:{worker.port}/profiles/customer_id:P1", headers=settings.auth_headers)
        with urllib.request.urlopen(request, timeout=2) as resp:
            profile = orjson.loads(resp.read())
        assert profile["lifetime_value"] == {"EUR": 10.0}
        assert "web" in profile["channels"]
    finally:
        assert worker.stop() == 0
