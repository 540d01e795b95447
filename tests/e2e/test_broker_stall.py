"""The broker stalls for 20 seconds (SIGSTOP, then SIGCONT): the worker survives without a restart and catches up."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest

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
            m = worker.metrics()
            assert worker.alive() and worker.proc.pid == pid  # the same process: no restart
            assert m["omni_events_processed_total"] == 400 and m.get("omni_duplicates_total", 0) == 0
        finally:
            assert worker.stop() == 0, worker.log.read_text()[-3000:]
