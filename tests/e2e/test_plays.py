"""Every next-best-action play, and every rule all actions obey, driven through a real broker.

Each test starts a worker on fresh topics, produces the events of one scenario
to the channel and ops topics (waiting for each step to be applied where order
across topics matters), and asserts on what reaches the ``actions.*`` topics.
Windows are seconds here instead of hours; the rules are the default catalogue's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from pipeline.runtime.engine import Engine
from pipeline.settings import Settings
from tests.helpers import create_topics, event, produce, read_actions, running_engine, sample, wait_for, write_rules

ANNA = {"customer_id": "C1", "email": "anna@example.dk", "phone": "+45 20 12 34 56"}
TOPIC_OF = {"inventory_update": "ops.inventory", "order_ready_for_pickup": "ops.orders"}


class Scenario:
    """One worker on fresh topics, and the steps of a customer's story produced to it."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine, self.n = settings, engine, 0
        self.sent: list[dict[str, Any]] = []

    async def step(self, etype: str, channel: str, ids: dict[str, str], /, **props: Any) -> str:
        """Produce one event and wait until the worker has applied it."""
        self.n += 1
        raw = event(etype, channel, ids, f"ev-{self.n}", **props)
        self.sent.append(raw)
        await self.replay(raw)
        return raw["event_id"]

    async def replay(self, raw: dict[str, Any]) -> None:
        m = self.engine.metrics
        before = sample(m, "omni_events_processed_total") + sample(m, "omni_duplicates_total")
        topic = TOPIC_OF.get(raw["type"], f"channel.{raw['channel']}")
        await produce(self.settings, topic, [orjson.dumps(raw)], key=next(iter(raw["identifiers"].values()), "k").encode())
        await wait_for(
            lambda: sample(m, "omni_events_processed_total") + sample(m, "omni_duplicates_total") > before, 20, raw["type"]
        )

    async def buy(self, skus: list[str], channel: str = "web", ids: dict[str, str] = ANNA, **props: Any) -> str:
        items = [{"sku": s, "qty": 1, "price": 10.0} for s in skus]
        defaults = {"order_id": f"O-{self.n + 1}", "items": items, "total": 10.0 * len(skus), "currency": "EUR"}
        return await self.step("purchase", channel, ids, **{**defaults, **props})

    async def actions(self, count: int, settle_s: float = 1.0) -> list[dict[str, Any]]:
        """Every action on every action topic, once ``count`` went out and a moment passed for any extra."""
        await wait_for(lambda: sample(self.engine.metrics, "omni_actions_total") >= count, 20, f"{count} action(s)")
        await asyncio.sleep(settle_s)
        return await read_actions(self.settings)

    def suppressed(self, rule: str, reason: str) -> float:
        return sample(self.engine.metrics, "omni_actions_suppressed_total", {"rule": rule, "reason": reason})


async def start(settings: Settings, tmp_path: Path, defaults: dict[str, Any] | None = None, **rules: Any) -> Settings:
    settings = settings.model_copy(update={"rules_file": write_rules(tmp_path, defaults, **rules)})
    await create_topics(settings)
    return settings


# --- the plays (the consumables follow-up: tests/integration/test_actions.py) ---------------------------


async def test_abandoned_cart_one_reminder_across_devices_and_a_store_purchase_cancels(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path, abandoned_cart={"window": "2s"})
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.step("signup", "web", {**ANNA, "cookie_id": "ck-1"}, locale="da")
        await s.step("add_to_cart", "web", {"cookie_id": "ck-1"}, sku="TSH-001", price=19.0)  # the laptop
        await s.step("add_to_cart", "app", {"customer_id": "C1", "device_id": "dev-1"}, sku="MUG-002", price=9.0)  # the phone
        bob = {"customer_id": "C2", "email": "bob@example.dk"}
        await s.step("add_to_cart", "web", bob, sku="TSH-001", price=19.0)
        await s.buy(["TSH-001"], channel="store", ids={"customer_id": "C2"}, store_id="store-cph-1")
        actions = await s.actions(1, settle_s=3.0)
    (reminder,) = actions
    assert (reminder["rule"], reminder["customer"]) == ("abandoned_cart", "customer_id:C1")
    assert (reminder["channel"], reminder["address"]) == ("push", "dev-1")  # she uses the app; never opened an e-mail
    assert set(reminder["facts"]["cart"]) == {"TSH-001", "MUG-002"} and reminder["message"].startswith("Du glemte noget")


async def test_back_in_stock_when_inventory_makes_it_available(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path)
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.step("inventory_update", "ops", {}, sku="PRN-300", available_qty=0)
        await s.step("product_view", "web", ANNA, sku="PRN-300")
        await s.step("inventory_update", "ops", {}, sku="PRN-300", available_qty=12)
        (action,) = await s.actions(1)
    assert action["action"] == "back_in_stock" and action["facts"] == {"sku": "PRN-300", "available_at": "online"}
    assert action["trigger_event_ids"] == ["ev-2", "ev-3"]


async def test_click_and_collect_ready_and_one_reminder_unless_collected(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path, click_and_collect={"remind_after": "2s"})
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.step("order_ready_for_pickup", "ops", ANNA, order_id="O-1", store_id="store-cph-1")
        await s.step("order_ready_for_pickup", "ops", ANNA, order_id="O-2", store_id="store-aar-2")
        await s.step("pickup_collected", "store", {"customer_id": "C1"}, order_id="O-1")
        actions = await s.actions(3, settle_s=3.0)
    got = sorted((a["action"], a["facts"]["order_id"]) for a in actions)
    assert got == [("pickup_ready", "O-1"), ("pickup_ready", "O-2"), ("pickup_reminder", "O-2")]
    assert {a["channel"] for a in actions} == {"sms"} and all(a["kind"] == "transactional" for a in actions)
    assert "store-aar-2" in next(a["message"] for a in actions if a["action"] == "pickup_reminder")


async def test_arrival_at_the_store_where_an_order_waits_tells_the_store(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path, click_and_collect={"enabled": False})
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        app = {"customer_id": "C1", "device_id": "dev-1"}
        await s.step("geofence_enter", "app", app, store_id="store-osl-1")  # no order there: nothing
        await s.step("order_ready_for_pickup", "ops", ANNA, order_id="O-9", store_id="store-osl-1")
        await s.step("geofence_enter", "app", app, store_id="store-osl-1")
        (action,) = await s.actions(1)
    assert (action["channel"], action["action"], action["address"]) == ("store", "prepare_order", "store-osl-1")
    assert action["facts"]["order_id"] == "O-9"


async def test_loyalty_points_from_web_and_store_cross_the_threshold_once(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path, loyalty={"threshold": 500})
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.buy(["VAC-100"], channel="web", total=249.0)
        await s.buy(["COF-200"], channel="store", ids={"customer_id": "C1"}, total=399.0, store_id="store-cph-1")
        await s.buy(["TSH-001"], channel="app", ids={"customer_id": "C1"}, total=19.0)
        actions = await s.actions(1)
        profile = next(st.txn.get(b"customer_id:C1") for st in engine.state.values() if st.txn.get(b"customer_id:C1"))
    rewards = [a for a in actions if a["rule"] == "loyalty"]
    assert len(rewards) == 1 and rewards[0]["facts"]["points"] == 648
    assert profile["loyalty"] == {"points": 667, "rewards": 1}


async def test_repeat_purchase_offers_a_one_step_reorder(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path, repeat_purchase={"min_interval": "2s"}, consumables_follow_up=None)
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        for channel in ("web", "store", "app"):
            await s.buy(["BAG-100"], channel=channel)
        (action,) = await s.actions(1)
    assert action["action"] == "offer_reorder" and action["offer"]["one_step_reorder"] is True
    assert action["facts"] == {"sku": "BAG-100", "times_bought": 3}


async def test_a_call_puts_the_customer_on_the_agents_screen(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path)
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.buy(["VAC-100"], channel="web")
        await s.buy(["TSH-001"], channel="store", ids={"customer_id": "C1"}, store_id="store-cph-1")
        await s.step("add_to_cart", "app", {"customer_id": "C1"}, sku="MUG-002", price=9.0)
        await s.step("call", "callcenter", {"phone": "+45 20 12 34 56"}, reason="delivery status")
        (screen,) = await s.actions(1)
    assert screen["channel"] == "callcenter" and screen["customer"] == "customer_id:C1"
    facts = screen["facts"]
    assert {p["channel"] for p in facts["recent_purchases"]} == {"web", "store"}
    assert set(facts["cart"]) == {"MUG-002"} and facts["next_best_action"]["kind"] == "cart"
    assert {p["rule"] for p in facts["pending_offers"]} >= {"consumables_follow_up", "abandoned_cart"}


# --- every action, whatever the play -----------------------------------------------------------


async def test_frequency_cap_and_consent_withdrawn_after_scheduling(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path, defaults={"frequency_caps": ["1/1d"]}, abandoned_cart={"window": "2s"})
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.step("add_to_cart", "web", ANNA, sku="TSH-001", price=19.0)
        await s.step("inventory_update", "ops", {}, sku="PRN-300", available_qty=0)
        await s.step("product_view", "web", ANNA, sku="PRN-300")
        await s.step("inventory_update", "ops", {}, sku="PRN-300", available_qty=3)  # back in stock: the first
        bob = {"customer_id": "C2", "email": "bob@example.dk"}
        await s.step("add_to_cart", "web", bob, sku="MUG-002", price=9.0)
        await s.step("unsubscribe", "email", {"customer_id": "C2"})  # after the reminder was scheduled
        actions = await s.actions(1, settle_s=3.0)
        capped, no_consent = s.suppressed("abandoned_cart", "frequency_cap"), s.suppressed("abandoned_cart", "no_consent")
    assert [(a["rule"], a["customer"]) for a in actions] == [("back_in_stock", "customer_id:C1")]
    assert capped == 1 and no_consent == 1


async def test_quiet_hours_defer_the_action_to_the_customers_morning(settings: Settings, tmp_path: Path) -> None:
    hour_utc = time.gmtime().tm_hour
    zone = f"Etc/GMT{'-' if (23 - hour_utc) % 24 <= 12 else '+'}{min((23 - hour_utc) % 24, 24 - (23 - hour_utc) % 24)}"
    settings = await start(settings, tmp_path, defaults={"quiet_hours": {"start": "22:00", "end": "07:00"}})
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.step("signup", "web", ANNA, time_zone=zone)  # where it is 23:00 now (Etc/GMT signs are inverted)
        await s.step("order_ready_for_pickup", "ops", ANNA, order_id="O-1", store_id="store-cph-1")
        await wait_for(lambda: s.suppressed("click_and_collect", "quiet_hours_deferred") >= 1, 10, "the deferral")
        await asyncio.sleep(1.0)
        profile = next(st.txn.get(b"customer_id:C1") for st in engine.state.values() if st.txn.get(b"customer_id:C1"))
    assert await read_actions(settings) == []
    due = profile["timers"]["click_and_collect:ready:O-1"]["due"]
    assert 6 * 3600 <= due - time.time() <= 9 * 3600  # 07:00 local, seven to eight hours on (the hour may turn)


async def test_replaying_the_input_emits_nothing_new_and_offers_show_on_the_profile(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path)
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.step("inventory_update", "ops", {}, sku="RAZ-400", available_qty=0)
        await s.step("add_to_cart", "app", ANNA, sku="RAZ-400", price=89.0)
        await s.step("inventory_update", "ops", {}, sku="RAZ-400", available_qty=1)
        (first,) = await s.actions(1)
        for raw in list(s.sent):  # the same records again, as after a crash before the commit
            await s.replay(raw)
        await asyncio.sleep(1.0)
        profile = next(st.txn.get(b"customer_id:C1") for st in engine.state.values() if st.txn.get(b"customer_id:C1"))
    assert [a["action_id"] for a in await read_actions(settings)] == [first["action_id"]]
    assert list(profile["offers"]) == [first["action_id"]] and profile["offers"][first["action_id"]]["channel"] == "email"


async def test_a_rule_switched_off_in_the_file_stops_without_a_restart(settings: Settings, tmp_path: Path) -> None:
    settings = await start(settings, tmp_path)
    async with running_engine(settings) as engine:
        s = Scenario(settings, engine)
        await s.step("call", "callcenter", ANNA, reason="invoice")
        await s.actions(1)
        doc = yaml.safe_load(settings.rules_file.read_text())
        doc["rules"]["callcenter_screen"]["enabled"] = False
        settings.rules_file.write_text(yaml.safe_dump(doc))
        await wait_for(lambda: "callcenter_screen" not in engine.job.processor.plays, 5, "the reload")  # type: ignore[attr-defined]
        await s.step("call", "callcenter", ANNA, reason="return")
        await asyncio.sleep(1.0)
    assert [a["trigger_event_ids"] for a in await read_actions(settings)] == [["ev-1"]]
