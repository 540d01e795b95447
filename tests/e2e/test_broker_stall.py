"""The broker stalls for 20 seconds (SIGSTOP, then SIGCONT): the worker survives without a restart, catches up, counts each event once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from pipeline.identity.export import changelog_state
from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.ops.broker import EmbeddedBroker
from pipeline.settings import Settings
from tests.helpers import create_topics, event, produce, write_rules

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP")), reason="stalls a broker process of its own: the embedded one"
)


def visits(tag: str, n: int) -> list[bytes]:
    return [orjson.dumps(event("page_view", "web", {"customer_id": f"C{i}"}, f"{tag}-{i}")) for i in range(n)]


async def test_a_20_second_broker_stall_is_survived_and_caught_up(tmp_path: Path) -> None:
    with EmbeddedBroker(Settings()) as broker:
        assert broker.proc is not None
        settings = Settings(
            bootstrap=broker.bootstrap, topic_prefix="stall.", state_dir=tmp_path / "state",
            rules_file=write_rules(tmp_path), commit_interval_s=1.0,
        )  # fmt: skip
        await create_topics(settings)
        worker = WorkerProcess.start(settings, tmp_path / "worker.log")
        try:
            wait_ready([worker], 4)
            await produce(settings, "channel.web", visits("before", 200))
            wait_until(lambda: worker.metrics().get("omni_events_processed_total", 0) >= 200, 30, "the first events")
            pid = worker.proc.pid
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(20)
                assert worker.alive(), worker.log.read_text()[-3000:]
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
            await produce(settings, "channel.web", visits("after", 200))
            wait_until(lambda: worker.metrics().get("omni_events_processed_total", 0) >= 400, 90, "catching up")
            checkpoints = worker.metrics()["omni_checkpoints_total"]
            wait_until(lambda: worker.metrics()["omni_checkpoints_total"] > checkpoints, 30, "a checkpoint after the stall")
            assert worker.alive() and worker.proc.pid == pid  # the same process: no restart
            # Past a session timeout without an answered heartbeat the worker cannot know it still
            # owns its partitions: if it tried to send or write then, it gave them up and restored
            # them (pipeline.runtime.lease), and processed again what it had not checkpointed; if a
            # heartbeat was answered first, it went on. Either way each visit counts once:
        finally:
            assert worker.stop() == 0, worker.log.read_text()[-3000:]
        visits_counted = {
            key.decode(): orjson.loads(raw)["counters"]
            for store in await changelog_state(settings) for key, raw in store.items(b"customer_id:")
        }  # fmt: skip
        assert visits_counted == {f"customer_id:C{i}": {"page_view": 2} for i in range(200)}
