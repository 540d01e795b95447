"""The consumables follow-up on a real broker: scheduled, emitted once, cancelled, durable."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import orjson

from pipeline.actions.model import Action
from pipeline.settings import Settings
from tests.helpers import (
    catalogue_with_delay, create_topics, produce, purchase, read_actions, read_topic, running_engine, sample, wait_for,
)  # fmt: skip


async def test_durable_purchase_yields_consumable_offer_after_delay(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    catalogue = catalogue_with_delay(tmp_path, "2s")
    started = time.time()
    await produce(settings, "channel.store", [orjson.dumps(purchase("C1", "ev-1", ["VAC-100"], channel="store"))], key=b"C1")
    async with running_engine(settings, catalogue) as engine:
        await wait_for(lambda: sample(engine.metrics, "omni_actions_total") >= 1, 20, "the follow-up action")
        await asyncio.sleep(0.5)
    records = await read_topic(settings, "actions.email")
    assert len(records) == 1
    record = records[0]
    assert record.key == b"customer_id:C1"  # keyed by customer
    action = Action.model_validate_json(record.value)
    assert action.rule == "consumables_follow_up"
    assert action.trigger_event_ids == ["ev-1"]
    assert action.offer is not None and (action.offer["sku"], action.offer["name"]) == ("BAG-100", "Dust bags for V100 (10 pack)")
    assert "Vacuum cleaner V100" in action.reason and "store" in action.reason
    assert action.address == "c1@example.com"
    assert action.created_at >= started + 2.0  # not before the delay


async def test_buying_the_consumable_anywhere_cancels_the_offer(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    catalogue = catalogue_with_delay(tmp_path, "2s")
    await produce(settings, "channel.web", [orjson.dumps(purchase("C2", "ev-a", ["VAC-100"], channel="web"))], key=b"C2")
    await produce(settings, "channel.store", [orjson.dumps(purchase("C2", "ev-b", ["BAG-100"], channel="store"))], key=b"C2")
    async with running_engine(settings, catalogue) as engine:
        await wait_for(lambda: sample(engine.metrics, "omni_events_processed_total") >= 2, 20, "both purchases")
        await asyncio.sleep(3.0)  # past the delay
        assert sample(engine.metrics, "omni_actions_total") == 0
        assert sample(engine.metrics, "omni_timers_pending") == 0
    assert await read_actions(settings) == []


async def test_pending_action_survives_losing_the_local_disk(settings: Settings, tmp_path: Path) -> None:
    """A new worker with an empty state directory rebuilds state from the changelog and fires once."""
    catalogue = await _leave_a_pending_timer(settings, tmp_path, "C3", "ev-3", "6s")
    assert await read_actions(settings) == []

    fresh = settings.model_copy(update={"state_dir": tmp_path / "another-disk"})
    async with running_engine(fresh, catalogue) as engine:
        assert sample(engine.metrics, "omni_state_restored_records_total") >= 2  # profile + timer index
        await wait_for(lambda: sample(engine.metrics, "omni_actions_total") >= 1, 20, "the action after restore")
        await asyncio.sleep(1.0)
    actions = await read_actions(settings)
    assert [a["trigger_event_ids"] for a in actions] == [["ev-3"]]


async def test_a_state_directory_from_other_topics_is_rebuilt_not_trusted(settings: Settings, tmp_path: Path) -> None:
    """The same disk under a new topic prefix: the store mirrored another changelog and is rebuilt."""
    catalogue = await _leave_a_pending_timer(settings, tmp_path, "C4", "ev-4", "60s")

    elsewhere = settings.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}."})
    await create_topics(elsewhere)
    async with running_engine(elsewhere, catalogue) as engine:
        assert sample(engine.metrics, "omni_timers_pending") == 0
        assert all(state.txn.get(b"customer_id:C4") is None for state in engine.state.values())


async def _leave_a_pending_timer(settings: Settings, tmp_path: Path, customer: str, event_id: str, delay: str) -> Path:
    """Run a worker until a durable purchase by ``customer`` has scheduled its follow-up; return the catalogue."""
    await create_topics(settings)
    catalogue = catalogue_with_delay(tmp_path, delay)
    await produce(settings, "channel.web", [orjson.dumps(purchase(customer, event_id, ["COF-200"]))], key=customer.encode())
    async with running_engine(settings, catalogue) as engine:
        await wait_for(lambda: sample(engine.metrics, "omni_timers_pending") == 1, 20, "the timer")
    return catalogue
