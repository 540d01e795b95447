"""The webhook sender SIGKILLed mid-run and restarted, as a process: every action reaches the server, none twice
beyond the requests in flight at the kill (whose answers the sender never read: the Idempotency-Key is there for them)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.ops.broker import free_port
from pipeline.settings import Settings
from tests.helpers import create_topics, produce, read_json
from tests.integration.test_webhook import SECRET, Receiver, action, parsed, serving

ACTIONS = 300
CONCURRENCY = 4


def start_sender(settings: Settings, config: Path, state: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP": settings.bootstrap or "", "OMNI_TOPIC_PREFIX": settings.topic_prefix}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "send", "webhook", "--config", str(config), "--state-dir", str(state)],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


async def test_a_sender_killed_mid_run_and_restarted_calls_each_action_once(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    port = free_port()
    receiver = Receiver(script={"crm": lambda n: (200, {}, 0.02)})
    config = tmp_path / "webhooks.yaml"
    config.write_text(yaml.safe_dump({"destinations": [{
        "name": "crm", "url": f"http://127.0.0.1:{port}/crm", "topics": ["actions.sms"], "secret": SECRET,
        "timeout_s": 5, "concurrency": CONCURRENCY, "backoff_s": 0.05,
    }]}))  # fmt: skip
    await produce(settings, "actions.sms", [action(n) for n in range(ACTIONS)])
    state, log = tmp_path / "state-webhook", tmp_path / "sender.log"
    async with serving(receiver, port):
        sender = start_sender(settings, config, state, log)
        try:
            deadline = time.monotonic() + 40
            while len(receiver.calls) < ACTIONS // 3 and time.monotonic() < deadline and sender.poll() is None:
                await asyncio.sleep(0.01)
            assert len(receiver.calls) >= ACTIONS // 3, log.read_text()[-2000:]
        finally:
            sender.send_signal(signal.SIGKILL)  # mid-run: requests in flight, a batch not committed
            sender.wait(timeout=10)
        at_kill = len(receiver.calls)
        assert at_kill < ACTIONS, "the kill came after the end: nothing was tested"
        again = start_sender(settings, config, state, log)
        try:
            outcomes = await read_json(settings, "outcomes", until=lambda rs: len({o["action_id"] for o in parsed(rs)}) >= ACTIONS, timeout_s=45)
        finally:
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=20) == 0
    keys = receiver.keys("crm")
    expected = {f"act-abandoned_cart-{n:04d}" for n in range(ACTIONS)}
    assert set(keys) == expected, f"missing: {sorted(expected - set(keys))[:5]}"
    assert {o["action_id"] for o in outcomes} == expected and all(o["outcome"] == "delivered" for o in outcomes)
    assert all(ok for *_, ok in receiver.calls)
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    print(f"killed after {at_kill} of {ACTIONS} requests; repeated after the restart: {repeated}")
    # Only a request in flight at the kill can come again: at most the destination's concurrency, all among the last
    # requests before it; everything the sender had an answer for is remembered and not sent again.
    assert len(repeated) <= CONCURRENCY, repeated
    last_before_kill = set(keys[max(0, at_kill - 2 * CONCURRENCY) : at_kill])
    assert set(repeated) <= last_before_kill, (repeated, at_kill)
    assert all(keys.count(k) == 2 for k in repeated)
