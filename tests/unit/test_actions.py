import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.actions.catalogue import Catalogue
from pipeline.actions.channels import choose_channel
from pipeline.actions.consumables import ConsumablesFollowUp, Suppressed
from pipeline.actions.durations import describe_duration, parse_duration
from pipeline.actions.model import Action
from pipeline.profiles.profile import ProfileLimits, apply_event, new_profile
from pipeline.settings import PACKAGE_DATA
from tests.helpers import event, purchase

CATALOGUE = Catalogue.load(PACKAGE_DATA / "catalogue.yaml")
LIMITS = ProfileLimits()


def clean(raw: dict) -> dict:  # type: ignore[type-arg]
    """What the validator hands on: a ts and normalised identifiers."""
    from datetime import datetime

    return {**raw, "ts": datetime.fromisoformat(raw["occurred_at"].replace("Z", "+00:00")).timestamp()}


def profile_after(*events: dict) -> tuple[dict, list]:  # type: ignore[type-arg]
    rule = ConsumablesFollowUp(CATALOGUE)
    profile = new_profile("customer_id:C1")
    changes = []
    for raw in events:
        e = clean(raw)
        apply_event(profile, e, LIMITS)
        for kind, value in e["identifiers"].items():  # what identity resolution would add
            if value not in profile["identifiers"].setdefault(kind, []):
                profile["identifiers"][kind].append(value)
        changes.extend(rule.on_event(profile, e))
    return profile, changes


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("2s", 2), ("15m", 900), ("48h", 172800), ("60d", 5184000), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_names_the_text() -> None:
    with pytest.raises(ValueError, match="'soon'"):
        parse_duration("soon")
    assert describe_duration(60 * 86400) == "60d"


def test_bad_catalogue_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("products:\n  VAC-1:\n    name: V\n    category: c\n    price: 1\n    consumable: {sku: BAG, name: B, delay: soon}\n")
    with pytest.raises(ValidationError) as info:
        Catalogue.load(path)
    assert "VAC-1" in str(info.value) and "delay" in str(info.value)


def test_durable_purchase_schedules_its_consumable() -> None:
    profile, changes = profile_after(purchase("C1", "e1", ["VAC-100", "TSH-001"]))
    assert [c.added for c in changes] == [True]
    (timer,) = profile["timers"].values()
    assert timer["consumable_sku"] == "BAG-100"
    assert timer["due"] == pytest.approx(time.time() + 60 * 86400, abs=5)


def test_consumable_bought_cancels_and_out_of_order_never_schedules() -> None:
    profile, changes = profile_after(purchase("C1", "e1", ["VAC-100"]), purchase("C1", "e2", ["BAG-100"]))
    assert [c.added for c in changes] == [True, False] and profile["timers"] == {}
    later = time.time()
    bags_first = purchase("C1", "e2", ["BAG-100"])
    bags_first["occurred_at"] = event("login", "web", {}, "x", at=later + 10)["occurred_at"]
    profile, changes = profile_after(bags_first, purchase("C1", "e1", ["VAC-100"]))
    assert changes == [] and profile["timers"] == {}


def test_timer_becomes_an_action_in_the_customers_language() -> None:
    profile, _ = profile_after(
        event("signup", "web", {"customer_id": "C1", "email": "c1@example.com"}, "e0", locale="da"),
        purchase("C1", "e1", ["VAC-100"], channel="store"),
    )
    rule = ConsumablesFollowUp(CATALOGUE)
    (timer_id, timer), = profile["timers"].items()
    action = rule.on_timer(profile, timer_id, timer, time.time())
    assert isinstance(action, Action)
    assert action.channel == "email" and action.locale == "da"
    assert action.message.startswith("Tid til nye Dust bags")
    assert action.trigger_event_ids == ["e1"]
    again = rule.on_timer(profile, timer_id, timer, time.time() + 5)
    assert isinstance(again, Action) and again.action_id == action.action_id  # deterministic


def test_no_consented_channel_suppresses() -> None:
    profile, _ = profile_after(
        purchase("C1", "e1", ["VAC-100"]),
        event("unsubscribe", "email", {"customer_id": "C1"}, "e2"),
    )
    (timer_id, timer), = profile["timers"].items()
    assert ConsumablesFollowUp(CATALOGUE).on_timer(profile, timer_id, timer, time.time()) == Suppressed(
        "consumables_follow_up", "no_channel"
    )


def test_channel_choice_follows_consent_reachability_and_engagement() -> None:
    profile = new_profile("customer_id:C1")
    assert choose_channel(profile) is None
    profile["identifiers"] = {"email": ["a@b.co"], "device_id": ["d1"], "phone": ["+4520123456"]}
    assert choose_channel(profile) == "email"
    profile["channels"]["app"] = 1.0
    assert choose_channel(profile) == "push"  # the app is used, e-mail never opened
    profile["counters"]["email_open"] = 3
    assert choose_channel(profile) == "email"
    profile["consent"] = {"email": False, "push": False}
    assert choose_channel(profile) == "sms"
