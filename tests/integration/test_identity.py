"""Identity resolution on a real broker: late identity, merges published, the graph exported."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from pipeline.identity.export import graph_entries
from pipeline.identity.split import request_split
from pipeline.settings import Settings
from tests.helpers import (
    catalogue_with_delay, create_topics, event, produce, read_actions, read_json, running_engine, sample, wait_for,
)  # fmt: skip


async def test_an_anonymous_shopper_who_logs_in_brings_history_and_pending_offer(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    catalogue = catalogue_with_delay(tmp_path, "4s")
    async with running_engine(settings, catalogue) as engine:
        # Made now, not before the worker started: the offer is due 4 s after the purchase happened.
        anonymous = [
            event("product_view", "web", {"cookie_id": "ck-77"}, "e1", sku="MUG-002"),
            event("add_to_cart", "web", {"cookie_id": "ck-77"}, "e2", sku="MUG-002", qty=1, price=9.0),
            event("purchase", "web", {"cookie_id": "ck-77"}, "e3", order_id="O-77", total=249.0, currency="EUR",
                  items=[{"sku": "VAC-100", "qty": 1, "price": 249.0}], fulfilment="delivery"),  # fmt: skip
        ]
        await produce(settings, "channel.web", [orjson.dumps(e) for e in anonymous], key=b"ck-77")
        await wait_for(lambda: sample(engine.metrics, "omni_events_processed_total") >= 3, 10, "the anonymous events")
        assert sample(engine.metrics, "omni_timers_pending") == 2  # the bags' offer, and the cart's reminder in 4 h
        login = event("login", "web", {"cookie_id": "ck-77", "customer_id": "C77", "email": "Anna@Example.dk"}, "e4")
        await produce(settings, "channel.web", [orjson.dumps(login)], key=b"C77")
        await wait_for(lambda: sample(engine.metrics, "omni_identity_merges_total") >= 1, 10, "the merge")
        await wait_for(lambda: sample(engine.metrics, "omni_actions_total") >= 1, 10, "the follow-up offer")
        await asyncio.sleep(0.2)
    merges = await read_json(settings, "identity.merges")
    assert [(m["survivor"], m["merged"], m["trigger_event_id"]) for m in merges] == [("customer_id:C77", "cookie_id:ck-77", "e4")]
    (action,) = await read_actions(settings)
    assert action["customer"] == "customer_id:C77"  # scheduled for the cookie, sent for the customer
    assert action["address"] == "anna@example.dk" and action["trigger_event_ids"] == ["e3"]
    entries = {(e["identifier_type"], e["identifier"]): e["profile_id"] for e in await graph_entries(settings)}
    assert entries == {
        ("cookie_id", "ck-77"): "customer_id:C77",
        ("customer_id", "C77"): "customer_id:C77",
        ("email", "anna@example.dk"): "customer_id:C77",
    }


async def test_a_split_requested_through_the_topic_separates_the_profiles(settings: Settings) -> None:
    settings = settings.model_copy(update={"commit_interval_s": 1.0})  # the export reads checkpointed state
    await create_topics(settings)
    async with running_engine(settings) as engine:
        await produce(settings, "channel.web", [orjson.dumps(e) for e in (
            event("add_to_cart", "web", {"cookie_id": "shop-kiosk"}, "k1", sku="MUG-002", qty=1, price=9.0),
        )])  # fmt: skip
        await wait_for(lambda: sample(engine.metrics, "omni_events_processed_total") >= 1, 10, "the kiosk visit")
        await produce(settings, "channel.web", [orjson.dumps(event("login", "web", {"customer_id": "C5", "cookie_id": "shop-kiosk"}, "k2"))])
        await wait_for(lambda: sample(engine.metrics, "omni_identity_merges_total") >= 1, 10, "the wrong merge")
        assert await request_split(settings, "customer_id:C5", "cookie_id:shop-kiosk") == "cookie_id:shop-kiosk"
        await asyncio.sleep(0.5)  # the split's two steps through the topic
        done = sample(engine.metrics, "omni_checkpoints_total")
        await wait_for(lambda: sample(engine.metrics, "omni_checkpoints_total") >= done + 2, 10, "checkpoints after the split")
        split_records = [m for m in await read_json(settings, "identity.merges") if m.get("split")]
    assert [(m["survivor"], m["separated"]) for m in split_records] == [("customer_id:C5", "cookie_id:shop-kiosk")]
    entries = {(e["identifier_type"], e["identifier"]): e["profile_id"] for e in await graph_entries(settings)}
    assert entries == {("cookie_id", "shop-kiosk"): "cookie_id:shop-kiosk", ("customer_id", "C5"): "customer_id:C5"}
