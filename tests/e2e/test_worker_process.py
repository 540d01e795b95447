"""The real `omni worker` process: SIGKILL and restart, metrics over HTTP, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from pipeline.ops.broker import free_port
from pipeline.ops.watch import scrape
from pipeline.settings import Settings
from tests.helpers import catalogue_with_delay, create_topics, produce, purchase, read_actions

ROOT = Path(__file__).resolve().parents[2]


def start_worker(settings: Settings, catalogue: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": settings.bootstrap or "",
        "OMNI_TOPIC_PREFIX": settings.topic_prefix,
        "OMNI_STATE_DIR": str(settings.state_dir),
        "OMNI_WEB_PORT": str(port),
        "OMNI_CATALOGUE_FILE": str(catalogue),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "worker"], env=env, cwd=ROOT,
        stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def metrics(port: int) -> dict[str, float]:
    try:
        return scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return {}


def wait_metric(port: int, proc: subprocess.Popen[bytes], check, timeout_s: float, what: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode} while waiting for {what}"
        m = metrics(port)
        if m and check(m):
            return m
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last metrics: {metrics(port)}")


async def test_sigkilled_worker_restarted_emits_pending_action_exactly_once(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    catalogue = catalogue_with_delay(tmp_path, "10s")
    await produce(settings, "channel.store", [orjson.dumps(purchase("K1", "ev-k1", ["PRN-300"], channel="store"))], key=b"K1")
    port = free_port()

    first = start_worker(settings, catalogue, port, tmp_path / "worker-1.log")
    try:
        m = wait_metric(port, first, lambda m: m.get("omni_timers_pending") == 1, 30, "the timer to be scheduled")
        # Two more checkpoints after the timer appeared: it is in RocksDB and the changelog.
        seen = m.get("omni_checkpoints_total", 0)
        wait_metric(port, first, lambda m: m.get("omni_checkpoints_total", 0) >= seen + 2, 10, "a checkpoint")
        assert m.get("omni_actions_total", 0) == 0, "the action must still be pending when the worker dies"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    second = start_worker(settings, catalogue, port, tmp_path / "worker-2.log")
    try:
        wait_metric(port, second, lambda m: m.get("omni_actions_total", 0) >= 1, 60, "the action after restart")
        time.sleep(2.0)  # give a second emission every chance to show up
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, (tmp_path / "worker-2.log").read_text()[-3000:]

    actions = await read_actions(settings)
    assert len(actions) == 1, actions
    assert actions[0]["trigger_event_ids"] == ["ev-k1"]
    assert actions[0]["offer"]["sku"] == "INK-300"


async def test_worker_serves_health_metrics_and_profiles(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    await produce(settings, "channel.web", [orjson.dumps(purchase("P1", "ev-p1", ["TSH-001"]))], key=b"P1")
    await produce(settings, "channel.web", [b"not json"], key=b"P1")
    port = free_port()
    worker = start_worker(settings, settings.catalogue_file, port, tmp_path / "worker.log")
    try:
        m = wait_metric(
            port, worker, lambda m: m.get("omni_events_processed_total", 0) >= 1 and m.get("omni_deadletter_total", 0) >= 1,
            30, "the events",
        )  # fmt: skip
        for name in ("omni_events_in_total", "omni_deadletter_total", "omni_event_latency_seconds_count",
                     "omni_consumer_lag", "omni_timers_pending", "omni_checkpoints_total"):  # fmt: skip
            assert name in m, f"{name} missing from /metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            assert orjson.loads(resp.read())["ready"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/profiles/customer_id:P1", timeout=2) as resp:
            profile = orjson.loads(resp.read())
        assert profile["lifetime_value"] == {"EUR": 10.0}
        assert "web" in profile["channels"]
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
