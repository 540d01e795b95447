"""A checkpoint torn between two state partitions loses nothing: no customer split, no waiting list lost.

A checkpoint writes each state partition's changes to its own changelog partition. The
worker here is told to die after the first partition's part is acknowledged
(``OMNI_FAULT_TORN_CHECKPOINT``, ``pipeline.runtime.faults``), the window a kill hits
once in thousands. The event it was checkpointing ran its identity claim and its
back-in-stock interest at once, in this worker, in two other partitions: the profile's
part of the checkpoint landed, theirs did not. The restarted worker replays the event,
which the profile takes for a duplicate. It must still end as a clean run would: the
e-mail owned by the customer (so their next e-mail-only event is theirs, not a new
profile's), and the customer on the product's waiting list (so the restock reaches them).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import pytest

from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.identity.export import graph_entries
from pipeline.runtime.faults import TORN_EXIT
from pipeline.runtime.partitioner import partition_for
from pipeline.settings import Settings
from tests.helpers import create_topics, event, produce, read_actions

pytestmark = pytest.mark.skipif(bool(os.environ.get("OMNI_SKIP_FAULTS")), reason="fault tests switched off")

CUSTOMER, EMAIL, SKU = "C4", "c4@example.com", "PRN-300"
PARTITIONS = 4  # topics.yaml's default


def test_a_checkpoint_torn_between_partitions_splits_no_customer_and_loses_no_waiting_list(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile_p = partition_for(f"customer_id:{CUSTOMER}".encode(), PARTITIONS)
    email_p = partition_for(f"email:{EMAIL}".encode(), PARTITIONS)
    product_p = partition_for(f"sku:{SKU}".encode(), PARTITIONS)
    assert len({profile_p, email_p, product_p}) == 3, "the test needs the three in different partitions"
    settings = settings.model_copy(update={"commit_interval_s": 0.5})
    asyncio.run(create_topics(settings))

    def send(etype: str, topic: str, ids: dict[str, str], event_id: str, **props: object) -> None:
        raw = event(etype, "ops" if topic == "ops.inventory" else "web", ids, event_id, **props)
        asyncio.run(produce(settings, topic, [orjson.dumps(raw)], key=event_id.encode()))

    # The product sold out online, checkpointed alone (one partition: nothing to tear).
    monkeypatch.setenv("OMNI_FAULT_TORN_CHECKPOINT", str(profile_p))
    worker = WorkerProcess.start(settings, tmp_path / "torn.log")
    try:
        wait_ready([worker], PARTITIONS)
        send("inventory_update", "ops.inventory", {}, "inv-1", sku=SKU, available_qty=0)
        wait_until(lambda: worker.done() >= 1, 20, "the stock update")
        time.sleep(4 * settings.commit_interval_s)
        assert worker.alive(), worker.log.read_text()[-2000:]
        # The customer views it: profile, e-mail claim and interest change three partitions.
        send("product_view", "channel.web", {"customer_id": CUSTOMER, "email": EMAIL}, "view-1", sku=SKU)
        wait_until(lambda: not worker.alive(), 20, "the worker to tear its checkpoint and exit")
        assert worker.proc.returncode == TORN_EXIT, worker.log.read_text()[-2000:]
    finally:
        worker.stop()

    monkeypatch.delenv("OMNI_FAULT_TORN_CHECKPOINT")
    worker = WorkerProcess.start(settings, tmp_path / "restarted.log")  # over the same RocksDB directories
    try:
        wait_ready([worker], PARTITIONS)
        wait_until(lambda: worker.metrics().get("omni_duplicates_total", 0) >= 1, 20, "the view replayed as a duplicate")
        # The e-mail alone, on another device: the same customer, not a new one.
        send("product_view", "channel.web", {"email": EMAIL}, "view-2", sku="VAC-100")
        send("inventory_update", "ops.inventory", {}, "inv-2", sku=SKU, available_qty=5)
        wait_until(lambda: worker.done() >= 3, 20, "the replayed view, the e-mail's view and the restock")
        time.sleep(4 * settings.commit_interval_s)  # the action, if any, and the last checkpoint
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-2000:]

    owners = {(e["identifier_type"], e["identifier"]): e["profile_id"] for e in asyncio.run(graph_entries(settings))}
    assert owners == {
        ("customer_id", CUSTOMER): f"customer_id:{CUSTOMER}",
        ("email", EMAIL): f"customer_id:{CUSTOMER}",
    }, owners
    actions = asyncio.run(read_actions(settings))
    assert [(a["rule"], a["customer"]) for a in actions] == [("back_in_stock", f"customer_id:{CUSTOMER}")]
