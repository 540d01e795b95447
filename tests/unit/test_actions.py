"""Durations, the product catalogue and the rules catalogue: validated whole, errors that name the place."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.actions.catalogue import Catalogue
from pipeline.actions.durations import describe_duration, parse_duration
from pipeline.actions.rules import RulesCatalogue, RulesError, RulesFile
from pipeline.settings import PACKAGE_DATA
from tests.helpers import write_rules


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("2s", 2), ("15m", 900), ("48h", 172800), ("60d", 5184000), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_names_the_text() -> None:
    with pytest.raises(ValueError, match="'soon'"):
        parse_duration("soon")
    assert describe_duration(60 * 86400) == "60d"


def test_bad_product_catalogue_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("products:\n  VAC-1:\n    name: V\n    category: c\n    price: 1\n    consumable: {sku: BAG, name: B, delay: soon}\n")
    with pytest.raises(ValidationError) as info:
        Catalogue.load(path)
    assert "VAC-1" in str(info.value) and "delay" in str(info.value)


@pytest.mark.parametrize("name", ["rules.yaml", "rules.demo.yaml"])
def test_shipped_rules_catalogues_load_with_every_play(name: str) -> None:
    rules = RulesCatalogue.load(PACKAGE_DATA / name)
    assert {r.play for r in rules.rules.values()} == {
        "consumables_follow_up", "abandoned_cart", "back_in_stock", "click_and_collect", "arrival", "loyalty",
        "repeat_purchase", "callcenter_screen",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"abandoned_cart": {"window": "soon"}}, "rule 'abandoned_cart', field 'window'"),
        ({"loyalty": {"threshold": 0}}, "rule 'loyalty', field 'threshold'"),
        ({"back_in_stock": {"colour": "red"}}, "rule 'back_in_stock', field 'colour'"),
        ({"back_in_stock": {"messages": {"en": "{product} now {price}"}}}, "rule 'back_in_stock'"),
        ({"arrival": {"play": "teleport"}}, "rule 'arrival'"),
        ({"repeat_purchase": {"channels": ["pigeon"]}}, "rule 'repeat_purchase', field 'channels.0'"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_rule_and_field(tmp_path: Path, change: dict, expected: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(RulesError) as info:
        RulesCatalogue.load(write_rules(tmp_path, **change))
    assert expected in str(info.value)


def test_unknown_placeholder_is_named(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"messages.en uses unknown \['price'\]"):
        RulesCatalogue.load(write_rules(tmp_path, back_in_stock={"messages": {"en": "{product} now {price}"}}))


def test_bad_defaults_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="time_zone"):
        RulesCatalogue.load(write_rules(tmp_path, defaults={"time_zone": "Mars/Olympus"}))
    with pytest.raises(RulesError, match="frequency_caps"):
        RulesCatalogue.load(write_rules(tmp_path, defaults={"frequency_caps": ["often"]}))


def test_a_running_worker_takes_a_good_change_and_keeps_its_rules_on_a_bad_one(tmp_path: Path) -> None:
    path = write_rules(tmp_path)
    live = RulesFile(path)
    assert live.reload_if_changed() is False
    doc = yaml.safe_load(path.read_text())
    doc["rules"]["abandoned_cart"]["enabled"] = False
    path.write_text(yaml.safe_dump(doc) + "\n")
    assert live.reload_if_changed() is True
    assert "abandoned_cart" not in live.catalogue.enabled
    doc["rules"]["loyalty"]["threshold"] = -5
    path.write_text(yaml.safe_dump(doc) + "\n\n")
    assert live.reload_if_changed() is False
    assert live.failed is not None and "loyalty" in live.failed
    assert live.catalogue.rules["loyalty"].threshold == 1000  # the whole previous catalogue stays


def test_reminders_need_the_default_language_and_times_need_quotes(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="reminder_messages has no text in the default language"):
        RulesCatalogue.load(write_rules(tmp_path, click_and_collect={"reminder_messages": {"da": "Husk {order}"}}))
    path = write_rules(tmp_path)
    path.write_text(path.read_text().replace("quiet_hours: null", "quiet_hours: {start: 21:00, end: '08:00'}"))
    with pytest.raises(RulesError, match="in quotes"):
        RulesCatalogue.load(path)


def test_a_rule_mixing_staff_and_customer_channels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="mixes staff channels"):
        RulesCatalogue.load(write_rules(tmp_path, arrival={"channels": ["store", "sms"]}))
