"""Identity resolution on a real broker: late identity, merges published, the graph exported."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from pipeline.identity.export import graph_entries
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
        assert sample(engine.metrics, "omni_timers_pending") == 1
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
