from pipeline.profiles.merge import merge_profiles
from pipeline.profiles.product import apply_inventory, new_product
from pipeline.profiles.profile import ProfileLimits, apply_event, new_profile, seen_before
from tests.helpers import clean
from tests.helpers import event, purchase


def test_profile_remembers_channels_purchases_cart_and_value() -> None:
    limits = ProfileLimits()
    p = new_profile("customer_id:C1")
    for raw in (
        event("add_to_cart", "app", {"customer_id": "C1", "device_id": "d1"}, "e1", sku="VAC-100", qty=1, price=249.0),
        event("add_to_cart", "web", {"customer_id": "C1"}, "e2", sku="MUG-002", qty=2, price=9.0),
        purchase("C1", "e3", ["VAC-100"], channel="store", order_id="O1"),
        purchase("C1", "e4", ["VAC-100"], channel="store", order_id="O1"),  # same order re-sent
        event("consent_updated", "web", {"customer_id": "C1"}, "e5", channel="sms", granted=False),
    ):
        apply_event(p, clean(raw), limits, {})
    assert set(p["channels"]) == {"app", "web", "store"}
    assert list(p["cart"]) == ["MUG-002"] and p["cart"]["MUG-002"]["qty"] == 2
    assert len(p["purchases"]) == 1 and p["lifetime_value"] == {"EUR": 10.0}
    assert p["identifiers"] == {"customer_id": ["C1"]}  # others come through identity resolution
    assert p["consent"] == {"sms": False}
    assert p["counters"]["purchase"] == 2


def test_event_ids_are_processed_once_within_the_window() -> None:
    limits = ProfileLimits(dedup_window=3)
    p = new_profile("x")
    assert not seen_before(p, "a", limits)
    assert seen_before(p, "a", limits)
    for e in "bcd":
        seen_before(p, e, limits)
    assert not seen_before(p, "a", limits)  # fell out of the window


def test_a_profile_from_before_the_digest_window_still_deduplicates() -> None:
    limits = ProfileLimits(dedup_window=3)
    p = new_profile("x")
    del p["seen_events"]
    p["recent_events"] = {"old": 1}  # the shape written by earlier versions
    assert not seen_before(p, "a", limits)
    assert seen_before(p, "a", limits)
    assert "recent_events" not in p


def test_a_merge_into_a_busy_customer_keeps_the_merged_profiles_event_ids() -> None:
    # The survivor's window is full (a customer with as many events as the window holds); the
    # merged cookie profile's events must still be recognised when they are delivered again.
    limits = ProfileLimits(dedup_window=4)
    survivor, cookie = new_profile("customer_id:C1"), new_profile("cookie_id:k1")
    survivor["last_seen"], cookie["last_seen"] = 10.0, 20.0
    for e in ("s1", "s2", "s3", "s4"):
        seen_before(survivor, e, limits)
    for e in ("k1", "k2", "s4"):  # s4: one event both sides saw (a re-merge)
        seen_before(cookie, e, limits)
    merge_profiles(survivor, cookie, limits)
    assert all(seen_before(survivor, e, limits) for e in ("k1", "k2", "s1", "s2", "s3", "s4"))
    for e in ("n1", "n2", "n3", "n4"):  # new events push the oldest out, one for one
        assert not seen_before(survivor, e, limits)
    assert not seen_before(survivor, "s1", limits)
    assert seen_before(survivor, "k2", limits)


def test_late_or_repeated_stock_level_does_not_overwrite_newer_one() -> None:
    product = new_product("sku:BAG-100")
    assert apply_inventory(product, {"event_id": "a", "ts": 20.0, "properties": {"sku": "BAG-100", "available_qty": 5}})
    assert not apply_inventory(product, {"event_id": "b", "ts": 10.0, "properties": {"sku": "BAG-100", "available_qty": 0}})
    assert apply_inventory(product, {"event_id": "c", "ts": 15.0, "properties": {"sku": "BAG-100", "store_id": "S1", "available_qty": 2}})
    assert apply_inventory(product, {"event_id": "d", "ts": 20.0, "properties": {"sku": "BAG-100", "available_qty": 0}})
    # The first update again (same time as the last, sent twice): it must not flip the level back to 5.
    assert not apply_inventory(product, {"event_id": "a", "ts": 20.0, "properties": {"sku": "BAG-100", "available_qty": 5}})
    assert product["available"] == {
        "online": {"qty": 0, "ts": 20.0, "recent": ["a", "d"]}, "S1": {"qty": 2, "ts": 15.0, "recent": ["c"]},
    }
