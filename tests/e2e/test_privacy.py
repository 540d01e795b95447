"""Erasure through a real worker: nothing of the person in the profile API, the changelog or RocksDB, and a replay does not bring them back."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from pathlib import Path
from typing import Any

import orjson

from pipeline.bench.workers import WorkerProcess, wait_until
from pipeline.privacy.export import export_person
from pipeline.privacy.requests import request_erasure
from pipeline.runtime.state.rocksdb import RocksDBStore
from pipeline.settings import Settings
from tests.e2e.test_profile_lookup import get, get_when_found
from tests.helpers import create_topics, event, produce, read_json, read_topic
from tests.unit.test_erasure import ANNA_SEEN, anna_events, bob_events

ANNA_IDS = {"customer_id": "C1", "loyalty_id": "L1", "email": "anna@example.dk", "phone": "+4520123456",
            "device_id": "dev-a", "cookie_id": "ck-a1"}  # fmt: skip


def traces(text: str) -> list[str]:
    return [needle for needle in ANNA_SEEN if needle in text]


async def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    for e in events:  # one at a time, in order: each channel's topic is its own queue
        await produce(settings, f"channel.{e['channel']}", [orjson.dumps(e)], key=e["event_id"].encode())


def processed(worker: WorkerProcess) -> float:
    m = worker.metrics()
    return m.get("omni_events_processed_total", 0) + m.get("omni_erased_messages_dropped_total", 0)


async def test_erasure_leaves_nothing_of_the_person_and_a_replay_does_not_bring_them_back(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"commit_interval_s": 0.5})
    await create_topics(settings)
    then = time.time() - 60
    sold_out = event("inventory_update", "ops", {}, "inv1", at=then - 1, sku="BLD-400", available_qty=0)
    await produce(settings, "ops.inventory", [orjson.dumps(sold_out)], key=b"BLD-400")
    worker = WorkerProcess.start(settings, tmp_path / "worker-1.log")
    try:
        # The blender is sold out before Anna looks at it: she joins its waiting list.
        wait_until(lambda: processed(worker) >= 1, 60, "the inventory update")
        events = anna_events(then) + bob_events(then)
        await produce_events(settings, events)
        anna = get_when_found(worker, "customer_id=C1", until=lambda p: len(p["merges"]) >= 3 and bool(p["timers"]))
        for kind, value in ANNA_IDS.items():
            assert get_when_found(worker, f"{kind}={urllib.parse.quote(value)}")["id"] == anna["id"]
        held = await _until_exported(settings, "email:anna@example.dk", found=True)
        assert held["waiting_lists"] and held["identifier_entries"]
        assert await _changelog_traces(settings), "the search finds her while she is there"

        request_id = await request_erasure(settings, "phone:+4520123456")
        (audit,) = await read_json(settings, "privacy.audit", until=lambda r: len(r) >= 1, timeout_s=30)
        assert audit["request_id"] == request_id and audit["result"] == "erased"
        assert not traces(orjson.dumps(audit).decode()), "the audit records what was removed, never the data"
        for kind, value in ANNA_IDS.items():
            status, _ = get(worker, f"{kind}={urllib.parse.quote(value)}")
            assert status == 404, (kind, status)
        assert get_when_found(worker, "customer_id=C2")["identifiers"]["email"] == ["bob@example.dk"]
        await _until_exported(settings, "email:anna@example.dk", found=False)
        assert await _changelog_traces(settings) == []
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-3000:]
    assert _rocksdb_traces(settings.state_dir) == []

    # A replay of the input topics: every one of her events arrives again, to a restarted worker.
    await produce_events(settings, anna_events(then))
    replayed = WorkerProcess.start(settings, tmp_path / "worker-2.log")
    try:
        wait_until(lambda: replayed.metrics().get("omni_erased_messages_dropped_total", 0) >= len(anna_events(then)), 60,
                   "the replayed events to be dropped")  # fmt: skip
        await asyncio.sleep(4 * settings.commit_interval_s)  # anything they led to is checkpointed by now
        for kind, value in ANNA_IDS.items():
            status, _ = get(replayed, f"{kind}={urllib.parse.quote(value)}")
            assert status == 404, (kind, status)
        assert (await export_person(settings, "email:anna@example.dk"))["found"] is False
        assert await _changelog_traces(settings) == []
    finally:
        assert replayed.stop() == 0, replayed.log.read_text()[-3000:]
    assert _rocksdb_traces(settings.state_dir) == []


async def _until_exported(settings: Settings, identifier: str, found: bool, timeout_s: float = 30) -> dict[str, Any]:
    """``omni privacy export`` reads the changelog: it sees what the last checkpoint made durable."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = await export_person(settings, identifier)
        if held["found"] is found:
            return held
        assert time.monotonic() < deadline, f"export still says found={held['found']} after {timeout_s}s"
        await asyncio.sleep(0.5)


async def _changelog_traces(settings: Settings) -> list[str]:
    """Traces of Anna in the changelog as compaction would leave it: the latest record of each key."""
    latest: dict[bytes | None, bytes | None] = {}
    for r in await read_topic(settings, "internal.state-changelog"):
        latest[r.key] = r.value
    return [
        f"{key!r}: {found}"
        for key, value in latest.items()
        if value is not None and (found := traces((key or b"").decode(errors="replace") + value.decode(errors="replace")))
    ]


def _rocksdb_traces(state_dir: Path) -> list[str]:
    out = []
    for path in sorted(state_dir.glob("state-*")):
        store = RocksDBStore(path)
        try:
            for key, value in store.items(b""):
                if found := traces(key.decode(errors="replace") + value.decode(errors="replace")):
                    out.append(f"{path.name} {key!r}: {found}")
        finally:
            store.close()
    return out
