import pytest

from pipeline.identity.evaluate import score
from pipeline.identity.resolve import profile_key, routing_key
from pipeline.identity.rules import IdentityRules, identity_rules, order_key
from pipeline.ops.watch import format_merge
from pipeline.profiles.merge import merge_profiles
from pipeline.profiles.profile import ProfileLimits, new_profile
from pipeline.settings import Settings
from pipeline.simulate.identities import World


def test_strongest_identifier_wins() -> None:
    assert profile_key({"cookie_id": "ck", "email": "a@b.co", "customer_id": "C1"}) == "customer_id:C1"
    assert profile_key({"cookie_id": "ck", "email": "a@b.co"}) == "email:a@b.co"
    assert profile_key({"cookie_id": "ck"}) == "cookie_id:ck"
    assert profile_key({}) is None


def test_product_events_route_by_sku() -> None:
    assert routing_key({"type": "inventory_update", "properties": {"sku": "BAG-100"}, "identifiers": {}}) == "sku:BAG-100"


def test_survivor_order_is_strongest_type_then_value() -> None:
    ids = ["cookie_id:a", "customer_id:C2", "email:x@y.dk", "customer_id:C10"]
    assert sorted(ids, key=order_key) == ["customer_id:C10", "customer_id:C2", "email:x@y.dk", "cookie_id:a"]


def test_limits_name_the_strongest_type_that_breaks() -> None:
    rules = IdentityRules()
    a = {"customer_id": ["C1"], "device_id": ["tablet"]}
    assert rules.merge_breaks(a, {"customer_id": ["C2"], "device_id": ["tablet"]}) == "limit_customer_id"
    assert rules.merge_breaks(a, {"customer_id": ["C1"], "email": ["a@b.dk"]}) is None  # the same account
    assert rules.room_for({"email": ["1", "2", "3", "4", "5"]}, "email") == "limit_email"
    assert IdentityRules(max_identifiers=2).room_for({"email": ["1"], "phone": ["2"]}, "cookie_id") == "identifier_cap"


def test_identifier_limits_come_from_the_environment() -> None:
    rules = identity_rules(Settings.from_env({"OMNI_IDENTIFIER_LIMITS": "email=2, device_id=4"}))
    assert rules.limits["email"] == 2 and rules.limits["device_id"] == 4 and rules.limits["customer_id"] == 1
    with pytest.raises(ValueError, match="unknown identifier types"):
        identity_rules(Settings.from_env({"OMNI_IDENTIFIER_LIMITS": "fax=1"}))


def test_merging_profiles_sums_counters_and_counts_a_shared_order_once() -> None:
    limits = ProfileLimits()
    a, b = new_profile("customer_id:C1"), new_profile("cookie_id:ck")
    order = {"order_id": "O1", "ts": 1.0, "channel": "web", "total": 20.0, "currency": "EUR", "skus": ["MUG-002"],
             "store_id": None, "event_id": "e1"}  # fmt: skip
    a.update(counters={"purchase": 1}, purchases=[order], lifetime_value={"EUR": 20.0}, last_seen=5.0, consent={"email": True})
    b.update(counters={"purchase": 1, "product_view": 3}, purchases=[dict(order)], lifetime_value={"EUR": 20.0},
             cart={"MUG-002": {"qty": 1, "price": 10.0, "ts": 0.5}, "BAG-100": {"qty": 1, "price": 5.0, "ts": 2.0}},
             last_seen=9.0, consent={"email": False}, locale="da")  # fmt: skip
    merge_profiles(a, b, limits)
    assert a["counters"] == {"purchase": 2, "product_view": 3}
    assert len(a["purchases"]) == 1 and a["lifetime_value"] == {"EUR": 20.0}
    assert list(a["cart"]) == ["BAG-100"]  # the mug was bought after it was carted
    assert a["consent"] == {"email": False} and a["locale"] == "da" and a["last_seen"] == 9.0
    assert a["identifiers"] == {"customer_id": ["C1"], "cookie_id": ["ck"]}


def test_score_counts_fused_people_and_missed_links() -> None:
    world = World(
        owner={"customer_id:A": 1, "email:a@x.dk": 1, "cookie_id:k": 1, "customer_id:B": 2, "device_id:tab": 1},
        shared={"device_id:tab"},
        links=[["customer_id:A", "email:a@x.dk"], ["email:a@x.dk", "cookie_id:k"], ["customer_id:B", "device_id:tab"]],
    )
    graph = [
        {"identifier_type": "customer_id", "identifier": "A", "profile_id": "customer_id:A"},
        {"identifier_type": "email", "identifier": "a@x.dk", "profile_id": "customer_id:A"},
        {"identifier_type": "cookie_id", "identifier": "k", "profile_id": "customer_id:B"},  # fused with B, split from A
        {"identifier_type": "customer_id", "identifier": "B", "profile_id": "customer_id:B"},
        {"identifier_type": "device_id", "identifier": "tab", "profile_id": "customer_id:B"},  # shared: not counted
    ]
    s = score(graph, world)
    assert (s.pairs_in_profiles, s.wrong_pairs, s.precision) == (2, 1, 0.5)
    assert (s.linkable_pairs, s.linked_pairs, s.recall) == (3, 1, round(1 / 3, 6))


def test_the_live_view_shows_merges_and_splits() -> None:
    merge = {"survivor": "customer_id:C1", "merged": "cookie_id:ck9", "identifiers": {"cookie_id": ["ck9"]}, "trigger_event_id": "e4"}
    assert "cookie_id:ck9 into customer_id:C1" in format_merge(merge) and "e4" in format_merge(merge)
    split = {"split": True, "survivor": "customer_id:C1", "separated": "cookie_id:ck9", "identifiers": {}, "by": "operator"}
    assert "cookie_id:ck9 out of customer_id:C1" in format_merge(split)


def test_merging_keeps_what_the_plays_remember() -> None:
    a, b = new_profile("customer_id:C1"), new_profile("cookie_id:ck1")
    a.update(last_seen=10.0, loyalty={"points": 400, "rewards": 0}, contacts=[5.0], stores={"s1": 3.0},
             plays={"abandoned_cart": {"reminded_at": 4.0}}, offers={"x": {"at": 5.0, "until": 99.0}})  # fmt: skip
    b.update(last_seen=20.0, time_zone="Europe/Oslo", loyalty={"points": 700, "rewards": 1}, contacts=[6.0],
             stores={"s1": 8.0, "s2": 1.0}, pickups={"O1": {"store_id": "s2", "ready_at": 2.0, "event_id": "e"}},
             plays={"abandoned_cart": {"reminded_at": 9.0}, "back_in_stock": {"told": {"P": 7.0}}},
             offers={"y": {"at": 6.0, "until": 99.0}})  # fmt: skip
    merge_profiles(a, b, ProfileLimits())
    assert a["loyalty"] == {"points": 1100, "rewards": 1} and a["contacts"] == [5.0, 6.0]
    assert a["stores"] == {"s1": 8.0, "s2": 1.0} and list(a["pickups"]) == ["O1"] and a["time_zone"] == "Europe/Oslo"
    assert a["plays"] == {"abandoned_cart": {"reminded_at": 9.0}, "back_in_stock": {"told": {"P": 7.0}}}
    assert list(a["offers"]) == ["x", "y"]


def test_merging_keeps_holdout_groups_touches_and_bounced_addresses() -> None:
    a, b = new_profile("customer_id:C1"), new_profile("cookie_id:ck1")
    a.update(holdout={"abandoned_cart": False}, touches=[{"id": "t1", "at": 5.0}], unreachable={"x@y.z": 1.0})
    b.update(holdout={"abandoned_cart": True, "back_in_stock": True}, touches=[{"id": "t0", "at": 2.0}])
    merge_profiles(a, b, ProfileLimits())
    assert a["holdout"] == {"abandoned_cart": False, "back_in_stock": True}  # the survivor's group stands
    assert [t["id"] for t in a["touches"]] == ["t0", "t1"] and a["unreachable"] == {"x@y.z": 1.0}
