"""A worker whose checkpoint fails when its partitions are revoked stops owning them, and says so.

aiokafka logs an exception raised by a rebalance listener and goes on: before this was
handled, the worker kept the revoked partitions open, firing their timers and writing
their changelog, while their new owner restored them. Here the failure is injected
(``OMNI_FAULT_REVOKE_ERROR``) and a second worker joins: the first must exit non-zero,
and the second own every partition and process what arrives.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.settings import Settings
from tests.helpers import create_topics, event, produce

PARTITIONS = 4


def test_a_failed_checkpoint_at_revoke_gives_up_the_partitions_and_stops_the_worker(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(create_topics(settings))
    monkeypatch.setenv("OMNI_FAULT_REVOKE_ERROR", "1")
    failing = WorkerProcess.start(settings.model_copy(update={"state_dir": tmp_path / "a"}), tmp_path / "a.log")
    monkeypatch.delenv("OMNI_FAULT_REVOKE_ERROR")
    other = None
    try:
        wait_ready([failing], PARTITIONS)
        other = WorkerProcess.start(settings.model_copy(update={"state_dir": tmp_path / "b"}), tmp_path / "b.log")
        other_started = time.monotonic()
        wait_until(lambda: not failing.alive(), 60, "the failing worker to stop")
        assert failing.proc.returncode not in (0, None), failing.log.read_text()[-2000:]
        assert "giving up every partition" in failing.log.read_text()
        wait_ready([other], PARTITIONS, timeout_s=60)
        raw = event("page_view", "web", {"customer_id": "C1"}, "ev-1", url="/")
        asyncio.run(produce(settings, "channel.web", [orjson.dumps(raw)]))
        wait_until(lambda: other.done() >= 1, 20, "the other worker to process an event")
        assert time.monotonic() - other_started < 90
    finally:
        failing.stop()
        if other is not None:
            assert other.stop() == 0, other.log.read_text()[-2000:]
