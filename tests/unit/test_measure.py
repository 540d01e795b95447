"""Holdouts, touches, attribution, outcomes and uplift, through the real processor with no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.measure import ledger
from pipeline.measure.touches import in_holdout
from pipeline.measure.uplift import figures, interval
from pipeline.profiles.profile import new_profile
from tests.unit.shop import ANNA, DAY, T0, Shop


def test_holdout_membership_is_deterministic_remembered_and_near_the_share() -> None:
    members = sum(in_holdout(new_profile(f"customer_id:C{i}"), "abandoned_cart", 0.2) for i in range(5000))
    assert 900 < members < 1100
    profile = new_profile("customer_id:C7")
    first = in_holdout(profile, "abandoned_cart", 0.2)
    assert in_holdout(new_profile("customer_id:C7"), "abandoned_cart", 0.2) == first  # a function of profile and rule
    assert in_holdout(profile, "abandoned_cart", 0.9 if not first else 0.0) == first  # remembered, not recomputed


def holdout_shop(tmp_path: Path, held: bool) -> Shop:
    """A shop where C1 is certainly in (or out of) the cart rule's holdout group."""
    return Shop(tmp_path, abandoned_cart={"holdout": 0.5 if held else 0.0}, loyalty=None, repeat_purchase=None)


def test_a_held_out_customer_gets_no_action_but_the_would_be_action_is_recorded(tmp_path: Path) -> None:
    shop = holdout_shop(tmp_path, held=True)
    assert in_holdout(new_profile("customer_id:C1"), "abandoned_cart", 0.5)  # C1's hash falls in a 50 % holdout
    shop.send("add_to_cart", "web", ANNA, T0, sku="TSH-001", price=19.0)
    assert shop.fire(T0 + DAY) == []
    (would_be,) = shop.held
    assert would_be.rule == "abandoned_cart" and would_be.channel == "email"
    assert shop.suppressed == {("abandoned_cart", "holdout"): 1}
    (touch,) = shop.profile()["touches"]
    assert touch["group"] == "holdout" and touch["id"] == would_be.action_id
    assert shop.profile().get("offers", {}) == {} and shop.profile().get("contacts", []) == []


def test_a_purchase_in_the_window_is_a_conversion_of_the_last_touch_once(tmp_path: Path) -> None:
    shop = holdout_shop(tmp_path, held=False)
    shop.send("add_to_cart", "web", ANNA, T0, sku="TSH-001", price=19.0)
    (reminder,) = shop.fire(T0 + 4 * 3600)
    shop.buy(["TSH-001"], T0 + 5 * 3600, channel="store", store_id="store-cph-1", total=19.0)
    shop.buy(["MUG-002"], T0 + 6 * 3600, channel="web", total=9.0)
    shop.buy(["MUG-002"], T0 + 9 * DAY, channel="web", total=9.0, order_id="late")  # past the 7-day window
    counts = ledger.read(shop.state)["abandoned_cart"]["treated"]
    assert counts == {"sent": 1, "touches": 1, "conversions": 1, "revenue": 28.0}


def test_outcomes_are_counted_once_and_a_bounce_stops_using_the_address(tmp_path: Path) -> None:
    shop = holdout_shop(tmp_path, held=False)
    shop.send("add_to_cart", "web", ANNA, T0, sku="TSH-001", price=19.0)
    (reminder,) = shop.fire(T0 + 4 * 3600)
    for outcome in ("delivered", "opened", "opened", "clicked"):
        shop.outcome(reminder, outcome, T0 + 4 * 3600 + 60)
    counts = ledger.read(shop.state)["abandoned_cart"]["treated"]
    assert (counts["delivered"], counts["opened"], counts["clicked"]) == (1, 1, 1)
    shop.outcome(reminder, "bounced", T0 + 4 * 3600 + 90)
    assert "anna@example.dk" in shop.profile()["unreachable"]
    shop.send("add_to_cart", "web", ANNA, T0 + 2 * DAY, sku="MUG-002", price=9.0)
    (next_one,) = shop.fire(T0 + 2 * DAY + 4 * 3600)
    assert (next_one.channel, next_one.address) == ("push", "dev-1")  # the e-mail bounced; the app still works


def test_an_outcome_for_no_known_action_is_counted_as_unmatched(tmp_path: Path) -> None:
    shop = holdout_shop(tmp_path, held=False)
    shop.send("login", "web", ANNA, T0)
    from pipeline.actions.model import Action

    stranger = Action(action_id="nope", rule="abandoned_cart", kind="marketing", action="x", customer="customer_id:C1",
                      channel="email", locale="en", message="", reason="", trigger_event_ids=[], facts={}, created_at=T0)  # fmt: skip
    shop.outcome(stranger, "delivered", T0 + 10)
    assert shop.processor.tally.outcomes_unmatched == 1 and ledger.read(shop.state) == {}


def test_bad_outcome_reports_are_rejected_with_a_reason(tmp_path: Path) -> None:
    shop = holdout_shop(tmp_path, held=False)
    validate = shop.processor.validate.outcome
    assert validate(b"{not json", T0).reason == "malformed_json"  # type: ignore[union-attr]
    assert validate(b"[1]", T0).reason == "not_an_object"  # type: ignore[union-attr]
    bad = b'{"action_id": "a", "customer": "c", "outcome": "eaten", "occurred_at": "2026-11-23T10:00:00Z"}'
    assert validate(bad, T0 + DAY).reason == "invalid_event"  # type: ignore[union-attr]
    late = b'{"action_id": "a", "customer": "c", "outcome": "opened", "occurred_at": "yesterday"}'
    assert validate(late, T0).reason == "bad_timestamp"  # type: ignore[union-attr]


def test_uplift_and_its_interval() -> None:
    uplift, low, high = interval(300, 1000, 100, 1000)  # type: ignore[misc]
    assert uplift == pytest.approx(0.2) and low == pytest.approx(0.2 - 1.96 * 0.01732, abs=1e-3) and high > uplift
    assert interval(10, 100, 0, 0) is None
    ledger_ = {"bad": {"treated": {"touches": 2000, "conversions": 100}, "holdout": {"touches": 2000, "conversions": 200}}}
    (row,) = figures(ledger_, ["bad"])
    assert row.negative and row.uplift == pytest.approx(-0.05)
