"""Every play and every cross-cutting rule, through the real processor with no broker.

``Shop`` runs the processor over one in-memory state partition and delivers every
message at once, so these tests pin down the decisions; ``tests/e2e/test_plays.py``
drives the same scenarios through a real broker.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import event
from tests.unit.shop import ANNA, DAY, T0, Shop


# --- the plays ---------------------------------------------------------------------------


def test_consumables_follow_up_after_the_catalogues_delay_in_the_customers_language(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("signup", "web", ANNA, T0, locale="da")
    shop.buy(["VAC-100"], T0, channel="store", store_id="store-cph-1")
    assert shop.fire(T0 + 59 * DAY) == []
    (action,) = shop.fire(T0 + 61 * DAY)
    assert (action.rule, action.action, action.channel, action.kind) == ("consumables_follow_up", "offer_consumable", "email", "marketing")
    assert action.message.startswith("Tid til nye Dust bags") and action.locale == "da"
    assert action.offer is not None and action.offer["sku"] == "BAG-100"
    assert "store" in action.reason and action.trigger_event_ids == ["e2"]


def test_buying_the_consumable_anywhere_cancels_the_follow_up(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.buy(["VAC-100"], T0, channel="web")
    shop.buy(["BAG-100"], T0 + 10, channel="store", store_id="store-cph-1")
    assert shop.fire(T0 + 90 * DAY) == [] and shop.profile()["timers"] == {}


def test_abandoned_cart_gets_one_reminder_and_a_store_purchase_cancels_it(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("add_to_cart", "web", ANNA, T0, sku="TSH-001", price=19.0)
    shop.send("add_to_cart", "app", ANNA, T0 + 60, sku="MUG-002", price=9.0)
    assert shop.fire(T0 + 60 + 4 * 3600 - 1) == []  # the window restarts with each item added
    (reminder,) = shop.fire(T0 + 60 + 4 * 3600)
    assert reminder.action == "cart_reminder" and set(reminder.facts["cart"]) == {"TSH-001", "MUG-002"}
    shop.send("page_view", "web", ANNA, T0 + 5 * 3600)
    assert shop.fire(T0 + 30 * DAY) == []  # one reminder

    other = Shop(tmp_path)
    other.send("add_to_cart", "web", ANNA, T0, sku="TSH-001", price=19.0)
    other.buy(["TSH-001"], T0 + 600, channel="store", store_id="store-aar-2")
    assert other.profile()["timers"] == {} and other.fire(T0 + DAY) == []


def test_the_cart_follows_the_customer_across_devices(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("add_to_cart", "web", {"cookie_id": "ck-1"}, T0, sku="TSH-001", price=19.0)  # anonymous on the laptop
    shop.send("add_to_cart", "app", {"customer_id": "C1", "device_id": "dev-1"}, T0 + 30, sku="MUG-002", price=9.0)
    shop.send("login", "web", {"customer_id": "C1", "cookie_id": "ck-1", "email": "anna@example.dk"}, T0 + 60)
    assert set(shop.profile()["cart"]) == {"TSH-001", "MUG-002"}
    actions = shop.fire(T0 + DAY)
    assert len(actions) == 1 and set(actions[0].facts["cart"]) == {"TSH-001", "MUG-002"}
    assert actions[0].customer == "customer_id:C1"


def test_back_in_stock_online_or_at_a_store_they_use(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("inventory_update", "ops", {}, T0, sku="PRN-300", available_qty=0)
    shop.send("product_view", "web", ANNA, T0 + 10, sku="PRN-300")
    shop.send("inventory_update", "ops", {}, T0 + 20, sku="PRN-300", available_qty=5)
    (action,) = shop.fire(time.time())
    assert action.action == "back_in_stock" and action.facts == {"sku": "PRN-300", "available_at": "online"}
    assert "back in stock online" in action.message
    shop.send("inventory_update", "ops", {}, T0 + 30, sku="PRN-300", available_qty=3)
    assert shop.fire(time.time()) == []  # told once

    stores = Shop(tmp_path)
    stores.send("loyalty_scan", "store", {"customer_id": "C1"}, T0, store_id="store-osl-1")
    stores.send("inventory_update", "ops", {}, T0, sku="INK-300", available_qty=0)
    stores.send("add_to_cart", "app", ANNA, T0 + 10, sku="INK-300", price=29.0)
    stores.send("inventory_update", "ops", {}, T0 + 20, sku="INK-300", store_id="store-cph-1", available_qty=4)
    assert stores.fire(time.time()) == []  # only at a store she never uses: no news, and she keeps waiting
    stores.send("inventory_update", "ops", {}, T0 + 30, sku="INK-300", store_id="store-osl-1", available_qty=2)
    (action,) = stores.fire(time.time())
    assert action.facts["available_at"] == "store-osl-1" and "at store-osl-1" in action.message
    stores.send("inventory_update", "ops", {}, T0 + 40, sku="INK-300", available_qty=9)  # then online too
    assert stores.fire(time.time()) == []  # told once per interest
    assert "waiting" not in stores.state.txn.get(b"sku:INK-300")  # back online: the list is done


def test_viewing_a_product_in_stock_leaves_no_trace(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("inventory_update", "ops", {}, T0, sku="PRN-300", available_qty=7)
    shop.send("product_view", "web", ANNA, T0 + 10, sku="PRN-300")
    assert "waiting" not in shop.state.txn.get(b"sku:PRN-300")


def test_click_and_collect_ready_now_and_one_reminder_unless_collected(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("order_ready_for_pickup", "ops", {"customer_id": "C1"}, T0, order_id="O-1", store_id="store-cph-1")
    shop.send("order_ready_for_pickup", "ops", {"customer_id": "C1"}, T0, order_id="O-2", store_id="store-cph-1")
    shop.send("signup", "web", ANNA, T0)
    ready = shop.fire(T0 + 1)
    assert [a.action for a in ready] == ["pickup_ready", "pickup_ready"]
    assert ready[0].kind == "transactional" and "store-cph-1" in ready[0].message and "until" in ready[0].message
    shop.send("pickup_collected", "store", {"customer_id": "C1"}, T0 + 3600, order_id="O-1")
    (reminder,) = shop.fire(T0 + 49 * 3600)
    assert reminder.action == "pickup_reminder" and reminder.facts["order_id"] == "O-2"
    assert reminder.message.startswith("Reminder: order O-2")


def test_arrival_with_an_order_to_collect_asks_that_store_to_prepare_it(tmp_path: Path) -> None:
    shop = Shop(tmp_path, click_and_collect={"enabled": False})
    shop.send("order_ready_for_pickup", "ops", {"customer_id": "C1"}, T0, order_id="O-7", store_id="store-aar-2")
    shop.send("geofence_enter", "app", {"customer_id": "C1", "device_id": "dev-1"}, T0 + 60, store_id="store-cph-1")
    assert shop.fire(T0 + 61) == []  # not where the order waits: nothing
    shop.send("geofence_enter", "app", {"customer_id": "C1", "device_id": "dev-1"}, T0 + 120, store_id="store-aar-2")
    (action,) = shop.fire(T0 + 121)
    assert (action.channel, action.action, action.address) == ("store", "prepare_order", "store-aar-2")
    assert action.facts["order_id"] == "O-7"
    shop.send("pickup_collected", "store", {"customer_id": "C1"}, T0 + 200, order_id="O-7")
    shop.send("geofence_enter", "app", {"customer_id": "C1", "device_id": "dev-1"}, T0 + 900, store_id="store-aar-2")
    assert shop.fire(T0 + 901) == []


def test_loyalty_points_from_every_channel_into_one_balance_and_one_reward_per_threshold(tmp_path: Path) -> None:
    shop = Shop(tmp_path, loyalty={"threshold": 500})
    shop.buy(["VAC-100"], T0, channel="web", total=249.0)
    shop.buy(["COF-200"], T0 + 10, channel="store", store_id="store-cph-1", total=399.0)  # 648
    shop.buy(["COF-200"], T0 + 10, channel="store", store_id="store-cph-1", order_id="O-e2", total=399.0)  # the same order again
    assert shop.profile()["loyalty"] == {"points": 648, "rewards": 1}
    rewards = [a for a in shop.fire(T0 + 20) if a.rule == "loyalty"]
    assert len(rewards) == 1 and rewards[0].facts["points"] == 648 and "voucher" in rewards[0].message


def test_repeat_purchase_offers_a_one_step_reorder(tmp_path: Path) -> None:
    shop = Shop(tmp_path, consumables_follow_up={"enabled": False})
    for i in range(3):
        shop.buy(["BAG-100"], T0 + i * 20 * DAY)
    timer = shop.profile()["timers"]["repeat_purchase:BAG-100"]
    assert timer["due"] == pytest.approx(T0 + 60 * DAY)  # their own rhythm: every 20 days
    (offer,) = shop.fire(T0 + 60 * DAY)
    assert offer.action == "offer_reorder" and offer.offer == {**offer.offer, "sku": "BAG-100", "one_step_reorder": True}


def test_a_call_shows_the_agent_the_customer_across_channels(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.buy(["VAC-100"], T0, channel="web")
    shop.buy(["TSH-001"], T0 + 10, channel="store", store_id="store-cph-1")
    shop.send("add_to_cart", "app", ANNA, T0 + 20, sku="MUG-002", price=9.0)
    shop.fire(T0 + 30)
    shop.send("call", "callcenter", {"phone": "+45 20 12 34 56", "customer_id": "C1"}, T0 + 40, reason="delivery status")
    (screen,) = [a for a in shop.fire(T0 + 41) if a.rule == "callcenter_screen"]
    assert screen.channel == "callcenter" and screen.kind == "transactional"
    facts = screen.facts
    assert {p["channel"] for p in facts["recent_purchases"]} == {"web", "store"}
    assert set(facts["cart"]) == {"MUG-002"}
    assert [p["rule"] for p in facts["pending_offers"]][:1] == ["abandoned_cart"]
    assert facts["next_best_action"]["kind"] == "cart"
    assert "customer_id:C1" in screen.message


# --- every action, whatever the play ---------------------------------------------------------


def test_channel_follows_consent_reachability_and_engagement(tmp_path: Path) -> None:
    shop = Shop(tmp_path, defaults={"frequency_caps": []})
    shop.send("login", "web", {"customer_id": "C1", "email": "anna@example.dk", "phone": "+45 20 12 34 56"}, T0)
    shop.buy(["VAC-100"], T0, ids={"customer_id": "C1"})
    shop.buy(["COF-200"], T0, ids={"customer_id": "C1"})
    shop.buy(["PRN-300"], T0, ids={"customer_id": "C1"})
    shop.send("consent_updated", "email", {"customer_id": "C1"}, T0 + 1, channel="email", granted=False)
    first = shop.fire(T0 + 46 * DAY)  # the printer's ink: email withdrawn, phone known
    assert [(a.channel, a.address) for a in first] == [("sms", "+4520123456")]
    shop.send("consent_updated", "app", {"customer_id": "C1"}, T0 + 2, channel="sms", granted=False)
    assert shop.fire(T0 + 61 * DAY) == []
    assert shop.suppressed[("consumables_follow_up", "no_consent")] == 1
    lonely = Shop(tmp_path)
    lonely.buy(["VAC-100"], T0, ids={"customer_id": "C9"})
    assert lonely.fire(T0 + 61 * DAY) == [] and lonely.suppressed == {("consumables_follow_up", "no_channel"): 1}


def test_marketing_is_capped_across_channels_and_transactional_is_not(tmp_path: Path) -> None:
    shop = Shop(tmp_path, defaults={"frequency_caps": ["1/1d"]})
    shop.buy(["VAC-100", "COF-200"], T0)  # two follow-ups; VAC in 60 days, COF in 90
    shop.send("add_to_cart", "web", ANNA, T0 + 60 * DAY - 3600, sku="TSH-001", price=19.0)
    actions = shop.fire(T0 + 60 * DAY + 3 * 3600)
    assert [a.rule for a in actions] == ["consumables_follow_up"]
    assert shop.suppressed == {("abandoned_cart", "frequency_cap"): 1}
    shop.send("order_ready_for_pickup", "ops", {"customer_id": "C1"}, T0 + 60 * DAY + 4 * 3600, order_id="O-1", store_id="store-cph-1")
    assert [a.action for a in shop.fire(T0 + 60 * DAY + 4 * 3600)] == ["pickup_ready"]


def test_quiet_hours_defer_in_the_customers_time_zone_instead_of_dropping(tmp_path: Path) -> None:
    shop = Shop(tmp_path, defaults={"quiet_hours": {"start": "21:00", "end": "08:00"}})
    shop.send("signup", "web", ANNA, T0, time_zone="Asia/Tokyo")
    eleven_pm_tokyo = 1_800_000_000 - (1_800_000_000 + 9 * 3600) % DAY + 23 * 3600  # 23:00 in Tokyo (UTC+9)
    shop.send("order_ready_for_pickup", "ops", {"customer_id": "C1"}, eleven_pm_tokyo - 60, order_id="O-1", store_id="store-cph-1")
    assert shop.fire(eleven_pm_tokyo) == []
    assert shop.suppressed == {("click_and_collect", "quiet_hours_deferred"): 1}
    eight_am = eleven_pm_tokyo + 9 * 3600
    assert shop.profile()["timers"]["click_and_collect:ready:O-1"]["due"] == eight_am
    (action,) = shop.fire(eight_am)
    assert action.action == "pickup_ready" and action.due_at == eight_am


def test_action_ids_are_deterministic_and_a_replay_emits_nothing_new(tmp_path: Path) -> None:
    runs = []
    for _ in range(2):
        shop = Shop(tmp_path)
        shop.send("order_ready_for_pickup", "ops", {"customer_id": "C1", "email": "anna@example.dk"}, T0, order_id="O-1", store_id="store-cph-1")
        runs.append(shop.fire(T0 + 1))
        replay = event("order_ready_for_pickup", "ops", {"customer_id": "C1"}, "e1", at=T0, order_id="O-1", store_id="store-cph-1")
        shop.raw(replay)  # the same event again: a duplicate, no new timer
        assert shop.fire(T0 + 2) == []
    assert runs[0][0].action_id == runs[1][0].action_id


def test_every_offer_is_on_the_profile_for_the_web_and_the_call_centre(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.buy(["VAC-100"], T0)
    (offer,) = shop.fire(T0 + 61 * DAY)
    (kept,) = shop.profile()["offers"].values()
    assert kept["offer"]["sku"] == "BAG-100" and kept["channel"] == "email" and kept["until"] > T0 + 61 * DAY
    shop.send("chat_message", "chat", {"customer_id": "C1"}, T0 + 61 * DAY + 5)
    (screen,) = shop.fire(T0 + 61 * DAY + 6)
    assert [o["action_id"] for o in screen.facts["active_offers"]] == [offer.action_id]
    assert screen.facts["next_best_action"]["kind"] == "offer"


def test_a_switched_off_rule_schedules_nothing_and_its_pending_timers_say_so(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("add_to_cart", "web", ANNA, T0, sku="TSH-001", price=19.0)
    path = shop.processor.rules.path
    path.write_text(path.read_text().replace("window: 4h", "window: 4h\n    enabled: false") + "\n")
    assert shop.processor.reload_rules()
    shop.send("add_to_cart", "web", ANNA, T0 + 1, sku="MUG-002", price=9.0)
    assert shop.fire(T0 + DAY) == []
    assert shop.suppressed == {("abandoned_cart", "rule_disabled"): 1}


# --- what a reviewer found: each of these failed before its fix ------------------------------------


def test_a_cart_reminder_put_off_by_quiet_hours_still_goes_out_in_the_morning(tmp_path: Path) -> None:
    shop = Shop(tmp_path, defaults={"quiet_hours": {"start": "21:00", "end": "08:00"}})
    shop.send("signup", "web", ANNA, T0, time_zone="UTC")
    ten_pm = 1_800_000_000 - 1_800_000_000 % DAY + 22 * 3600
    shop.send("add_to_cart", "web", ANNA, ten_pm - 4 * 3600, sku="TSH-001", price=19.0)
    assert shop.fire(ten_pm) == [] and shop.suppressed == {("abandoned_cart", "quiet_hours_deferred"): 1}
    (reminder,) = shop.fire(ten_pm + 10 * 3600)
    assert reminder.action == "cart_reminder" and shop.profile()["cart"]["TSH-001"]["reminded"] is True


def test_a_time_zone_that_names_a_folder_is_ignored_not_a_crash(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("signup", "web", ANNA, T0, time_zone="Europe")  # ZoneInfo raises IsADirectoryError on 3.11
    assert "time_zone" not in shop.profile()


def test_replaying_an_event_is_a_duplicate_and_sets_no_timer(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    raw = event("add_to_cart", "web", ANNA, "e-cart", at=T0, sku="TSH-001", price=19.0)
    shop.raw(raw)
    timers = dict(shop.profile()["timers"])
    shop.raw(raw)
    assert shop.processor.tally.duplicates == 1 and shop.profile()["timers"] == timers


def test_a_timer_that_cannot_be_decided_is_dropped_and_counted_not_a_crash(tmp_path: Path) -> None:
    shop = Shop(tmp_path)
    shop.send("add_to_cart", "web", ANNA, T0, sku="TSH-001", price=19.0)
    shop.send("call", "callcenter", ANNA, T0, reason="invoice")

    # Data the rule cannot read (the state a bug could leave, or a hand-edited profile): composing the
    # reminder raises. The play is compiled, so the test breaks the data rather than patching the code.
    shop.profile()["cart"]["TSH-001"]["ts"] = "yesterday"
    actions = shop.fire(T0 + DAY)
    assert [a.rule for a in actions] == []  # the call's screen is too late by now; the cart's timer broke
    assert shop.suppressed == {("abandoned_cart", "error"): 1, ("callcenter_screen", "too_late"): 1}
    assert shop.profile()["timers"] == {} and shop.processor.tally.timer_errors == {"abandoned_cart": 1}


def test_loyalty_rewards_pending_on_both_merging_profiles_are_both_kept(tmp_path: Path) -> None:
    shop = Shop(tmp_path, loyalty={"threshold": 100})
    shop.buy(["VAC-100"], T0, ids={"customer_id": "C1", "email": "anna@example.dk"}, total=150.0)
    shop.buy(["COF-200"], T0, ids={"cookie_id": "ck-1"}, total=150.0, order_id="O-other")
    shop.send("login", "web", {"customer_id": "C1", "cookie_id": "ck-1"}, T0 + 1)
    profile = shop.profile()
    assert profile["loyalty"] == {"points": 300, "rewards": 2}
    rewards = [a for a in shop.fire(T0 + 2) if a.rule == "loyalty"]
    assert len(rewards) == 2 and len({a.action_id for a in rewards}) == 2


def test_an_order_both_merging_profiles_hold_earns_its_points_once(tmp_path: Path) -> None:
    shop = Shop(tmp_path, loyalty={"threshold": 1000})
    shop.buy(["VAC-100"], T0, ids={"customer_id": "C1"}, total=150.0, order_id="O-same")
    shop.buy(["VAC-100"], T0, ids={"cookie_id": "ck-1"}, total=150.0, order_id="O-same")
    shop.send("login", "web", {"customer_id": "C1", "cookie_id": "ck-1"}, T0 + 1)
    assert shop.profile()["loyalty"]["points"] == 150
