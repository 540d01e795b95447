"""Segment calls as events of our contract (pipeline.collect.segment), and write keys (pipeline.collect.sources): no HTTP, no broker."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.collect.segment import PATHS, UNMAPPED, Mapped, Mapping, MappingError, Refused, Translator, segment_field
from pipeline.collect.sources import Source, Sources, SourcesError, basic_auth_user
from pipeline.ingest.validate import Validator
from pipeline.settings import PACKAGE_DATA, Settings

NOW = time.time()
WEB = Source(name="shop", channel="web", write_keys=("web-key-123",))
APP = Source(name="app", channel="app", write_keys=("app-key-123",))


@pytest.fixture(scope="module")
def translate() -> Translator:
    return Translator(Mapping.load(PACKAGE_DATA / "segment.yaml"), Validator(Settings()))


def event_of(result: Mapped | Refused) -> dict[str, Any]:
    assert isinstance(result, Mapped), result
    return orjson.loads(result.value)  # type: ignore[no-any-return]


def order(**props: Any) -> dict[str, Any]:
    return {
        "messageId": "m-1", "userId": "C1", "anonymousId": "anon-1", "event": "Order Completed",
        "timestamp": "2026-12-07T10:00:00.000Z", "context": {"traits": {"email": "Anna@Example.com"}},
        "properties": {"order_id": "O-1", "currency": "eur",
                       "products": [{"product_id": "VAC-100", "price": 249, "quantity": 1, "category": "floorcare"}],
                       **props},
    }  # fmt: skip


def test_order_completed_is_a_purchase_with_our_ids_items_and_the_message_id(translate: Translator) -> None:
    result = translate("track", order(), WEB, NOW)
    event = event_of(result)
    assert isinstance(result, Mapped) and result.topic == "channel.web" and result.event_id == "m-1"
    assert result.key == b"anon-1"  # one browser's calls share a partition, so they stay in order
    assert event == {
        "event_id": "m-1", "type": "purchase", "channel": "web", "occurred_at": "2026-12-07T10:00:00Z",
        "identifiers": {"customer_id": "C1", "cookie_id": "anon-1", "email": "Anna@Example.com"},
        "properties": {"order_id": "O-1", "items": [{"sku": "VAC-100", "qty": 1, "price": 249, "category": "floorcare"}],
                       "total": 249.0, "currency": "EUR"},
    }  # fmt: skip


def test_the_app_s_anonymous_id_is_the_device_and_revenue_stands_for_a_missing_total(translate: Translator) -> None:
    message = order(revenue=200.0, currency=None)
    event = event_of(translate("track", message, APP, NOW))
    assert event["channel"] == "app" and event["identifiers"]["device_id"] == "anon-1"
    assert event["properties"]["total"] == 200.0 and event["properties"]["currency"] == "USD"  # Segment's default


def test_the_e_commerce_events_map_to_ours(translate: Translator) -> None:
    base = {"messageId": "m", "anonymousId": "a1", "timestamp": "2026-12-07T10:00:00Z"}
    viewed = event_of(translate("track", {**base, "event": "Product Viewed", "properties": {"sku": "PRN-300", "name": "P"}}, WEB, NOW))
    assert (viewed["type"], viewed["properties"]) == ("product_view", {"sku": "PRN-300", "name": "P"})
    added = event_of(translate("track", {**base, "event": "Product Added", "properties": {"product_id": 42, "price": 9.5, "quantity": 2}}, WEB, NOW))
    assert (added["type"], added["properties"]) == ("add_to_cart", {"product_id": 42, "sku": "42", "qty": 2, "price": 9.5})
    removed = event_of(translate("track", {**base, "event": "Product Removed", "properties": {"sku": "MUG-002"}}, WEB, NOW))
    assert removed["type"] == "remove_from_cart"
    for name, ours in (("Checkout Started", "checkout_started"), ("Signed In", "login"), ("Email Opened", "email_open"),
                       ("Email Link Clicked", "email_click"), ("Unsubscribed", "unsubscribe")):  # fmt: skip
        assert event_of(translate("track", {**base, "event": name}, WEB, NOW))["type"] == ours


def test_page_and_screen_are_page_views_and_identify_links_traits(translate: Translator) -> None:
    page = event_of(translate("page", {"anonymousId": "a1", "name": "Home", "properties": {"path": "/"}}, WEB, NOW))
    assert (page["type"], page["properties"]) == ("page_view", {"path": "/", "name": "Home"})
    assert page["event_id"].startswith("h-")  # no messageId: one hashed from the content
    again = event_of(translate("page", {"anonymousId": "a1", "name": "Home", "properties": {"path": "/"}, "sentAt": "x"}, WEB, NOW))
    assert again["event_id"] == page["event_id"]  # a retry of the same body is the same event
    screen = event_of(translate("screen", {"messageId": "s", "userId": "C1", "name": "Cart"}, APP, NOW))
    assert screen["type"] == "page_view" and screen["properties"] == {"name": "Cart"}
    who = event_of(translate("identify", {"messageId": "i", "userId": "C1", "anonymousId": "a1",
                                          "traits": {"email": "a@b.dk", "phone": "+4520123456", "name": "Anna"}}, WEB, NOW))  # fmt: skip
    assert who["type"] == "login" and who["properties"] == {}  # traits are not copied into the event
    assert who["identifiers"] == {"customer_id": "C1", "cookie_id": "a1", "email": "a@b.dk", "phone": "+4520123456"}


def test_identify_with_a_locale_or_time_zone_is_a_signup_that_carries_them(translate: Translator) -> None:
    message = {"messageId": "i", "userId": "C1", "traits": {"timezone": "Europe/Copenhagen"}, "context": {"locale": "da-DK"}}
    event = event_of(translate("identify", message, WEB, NOW))
    assert event["type"] == "signup" and event["properties"] == {"locale": "da-DK", "time_zone": "Europe/Copenhagen"}
    signed_up = event_of(translate("track", {"messageId": "t", "userId": "C1", "event": "Signed Up", "context": {"locale": "sv"}}, WEB, NOW))
    assert signed_up["type"] == "signup" and signed_up["properties"] == {"locale": "sv"}


def test_alias_links_the_previous_id_to_the_user(translate: Translator) -> None:
    event = event_of(translate("alias", {"messageId": "al", "userId": "C1", "previousId": "anon-9"}, WEB, NOW))
    assert event["type"] == "login" and event["identifiers"] == {"customer_id": "C1", "cookie_id": "anon-9"}
    refused = translate("alias", {"messageId": "al", "userId": "C1"}, WEB, NOW)
    assert isinstance(refused, Refused) and refused.field == "previousId"


def test_an_event_or_call_that_maps_to_nothing_is_unmapped_not_the_callers_fault(translate: Translator) -> None:
    refused = translate("track", {**order(), "event": "Coupon Applied"}, WEB, NOW)
    assert isinstance(refused, Refused) and (refused.reason, refused.field) == (UNMAPPED, "event")
    assert not refused.client_error and "Coupon Applied" in refused.detail
    group = translate("group", {"messageId": "g", "userId": "C1", "groupId": "G1"}, WEB, NOW)
    assert isinstance(group, Refused) and group.reason == UNMAPPED


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"messageId": 7}, "invalid_call", "messageId"),
        ({"userId": None, "anonymousId": None, "context": {}}, "invalid_call", "userId"),
        ({"userId": {"id": 1}}, "invalid_call", "userId"),
        ({"timestamp": "yesterday"}, "bad_timestamp", "timestamp"),
        ({"timestamp": "1999-01-01T00:00:00Z"}, "absurd_timestamp", "timestamp"),
        ({"event": ""}, "invalid_call", "event"),
        ({"properties": [1]}, "invalid_call", "properties"),
        ({"context": "web"}, "invalid_call", "context"),
        ({"properties": {"products": [{"sku": "X", "price": 1}]}}, "invalid_call", "properties.order_id"),
        ({"properties": {"order_id": "O", "products": []}}, "invalid_call", "properties.products"),
        ({"properties": {"order_id": "O", "products": [{"price": 1}]}}, "invalid_call", "properties.products.0.sku"),
        ({"properties": {"order_id": "O", "products": [{"sku": "X"}]}}, "invalid_call", "properties.products.0.price"),
        ({"properties": {"order_id": "O", "products": [{"sku": "X", "price": -1}], "total": 1}}, "invalid_event", "properties.products.0.price"),
        ({"properties": {"order_id": "O", "products": [{"sku": "X", "price": 1, "quantity": 1.5}]}}, "invalid_event", "properties.products.0.quantity"),
        ({"properties": {"order_id": "O", "products": [{"sku": "X", "price": 1}], "currency": "euro"}}, "invalid_event", "properties.currency"),
        ({"userId": "undefined", "anonymousId": None, "context": {}}, "no_identifiers", "userId"),
    ],
)  # fmt: skip
def test_a_bad_call_is_refused_naming_the_segment_field(translate: Translator, change: dict[str, Any], reason: str, field: str) -> None:
    refused = translate("track", {**order(), **change}, WEB, NOW)
    assert isinstance(refused, Refused), refused
    assert (refused.reason, refused.field) == (reason, field), refused
    assert refused.client_error and refused.message.startswith(field)
    assert refused.at("batch[3]").field == f"batch[3].{field}"


def test_the_time_is_the_timestamp_else_the_original_corrected_by_sent_at(translate: Translator) -> None:
    received = 1_800_000_000.0
    base = {"messageId": "m", "userId": "C1", "event": "Signed In"}
    naive = event_of(translate("track", {**base, "timestamp": "2026-12-07T10:00:00"}, WEB, received))
    assert naive["occurred_at"] == "2026-12-07T10:00:00Z"  # a time without a zone is UTC
    # The device's clock is 100 s ahead: it sent at its 1_800_000_100 a call it made at its 1_800_000_090.
    skewed = {**base, "originalTimestamp": "2027-01-15T08:01:30+00:00", "sentAt": "2027-01-15T08:01:40+00:00"}
    assert event_of(translate("track", skewed, WEB, received))["occurred_at"] == "2027-01-15T07:59:50Z"
    assert event_of(translate("track", skewed, WEB, received, sent_at=None))["occurred_at"] == "2027-01-15T07:59:50Z"
    assert event_of(translate("track", base, WEB, received))["occurred_at"] == "2027-01-15T08:00:00Z"  # the arrival


def test_a_user_extends_the_mapping_with_renamed_properties(tmp_path: Path) -> None:
    path = tmp_path / "segment.yaml"
    path.write_text((PACKAGE_DATA / "segment.yaml").read_text().replace(
        "  Unsubscribed: unsubscribe\n",
        "  Unsubscribed: unsubscribe\n  Store Entered: {type: geofence_enter, properties: {store_id: store}}\n",
    ))  # fmt: skip
    translate = Translator(Mapping.load(path), Validator(Settings()))
    event = event_of(translate("track", {"messageId": "m", "userId": "C1", "event": "Store Entered", "properties": {"store": "store-cph-1"}}, APP, NOW))
    assert (event["type"], event["properties"]) == ("geofence_enter", {"store_id": "store-cph-1"})
    missing = translate("track", {"messageId": "m", "userId": "C1", "event": "Store Entered"}, APP, NOW)
    assert isinstance(missing, Refused) and (missing.reason, missing.field) == ("invalid_event", "properties.store_id")


def test_a_mapping_to_a_type_we_do_not_have_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "segment.yaml"
    path.write_text("track:\n  Order Completed: order_placed\n")
    with pytest.raises(MappingError, match="track.Order Completed.type.*order_placed"):
        Mapping.load(path)


def test_our_field_names_read_as_segments() -> None:
    assert segment_field("properties.items.2.qty") == "properties.products.2.quantity"
    assert segment_field("identifiers.email") == "traits.email"
    assert segment_field("event_id") == "messageId"


def test_every_endpoint_analytics_js_and_the_server_sdks_use_is_known() -> None:
    assert {PATHS[p] for p in ("track", "t", "identify", "i", "page", "p", "screen", "s", "alias", "a", "group", "g")} == {
        "track", "identify", "page", "screen", "alias", "group"}  # fmt: skip
    assert PATHS["batch"] == PATHS["b"] == PATHS["import"] == "batch"


# --- write keys ------------------------------------------------------------------------------


def test_write_keys_name_their_source_and_basic_auth_carries_the_key() -> None:
    sources = Sources.load(PACKAGE_DATA / "sources.yaml")
    assert sources.lookup("dev-web-write-key").channel == "web"  # type: ignore[union-attr]
    assert sources.lookup("dev-app-write-key").anonymous_type == "device_id"  # type: ignore[union-attr]
    assert sources.lookup("dev-store-write-key").anonymous_type == "device_id"  # type: ignore[union-attr]
    assert sources.lookup("nope") is None and sources.lookup(None) is None and sources.lookup("") is None
    header = "Basic " + base64.b64encode(b"dev-web-write-key:").decode()
    assert basic_auth_user(header) == "dev-web-write-key"
    assert basic_auth_user("Bearer dev-web-write-key") is None
    assert basic_auth_user("Basic %%%") is None
    assert basic_auth_user("Basic " + base64.b64encode(b":only-a-password").decode()) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources:\n  - {name: a, channel: web, write_keys: [k1234567]}\n  - {name: b, channel: app, write_keys: [k1234567]}\n", "also 'a'"),
        ("sources:\n  - {name: a, channel: ops, write_keys: [k1234567]}\n", "sources.0.channel"),
        ("sources:\n  - {name: a, channel: web, write_keys: [short]}\n", "at least 8"),
        ("sources: []\n", "sources"),
    ],
)  # fmt: skip
def test_a_bad_sources_file_is_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    with pytest.raises(SourcesError, match=message):
        Sources.load(path)
