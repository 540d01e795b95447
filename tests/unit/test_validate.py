import time

import orjson
import pytest

from pipeline.ingest.validate import CleanEvent, Rejection, Validator
from pipeline.settings import Settings
from tests.helpers import event, purchase

NOW = time.time()


@pytest.fixture
def validate() -> Validator:
    return Validator(Settings(max_event_bytes=2_000))


def reason(result: object) -> str:
    assert isinstance(result, Rejection), result
    return result.reason


def test_valid_purchase_is_normalised(validate: Validator) -> None:
    raw = purchase("C1", "ev-1", ["VAC-100"], channel="store")
    raw["identifiers"]["email"] = "  C1@Example.com "
    result = validate("channel.store", orjson.dumps(raw), NOW)
    assert isinstance(result, CleanEvent)
    assert result.data["identifiers"] == {"customer_id": "C1", "email": "c1@example.com"}
    assert result.data["properties"]["items"][0]["sku"] == "VAC-100"
    assert result.data["ts"] == pytest.approx(time.time(), abs=2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", "malformed_json"),
        (b"{not json", "malformed_json"),
        (b'{"a": "\xff"}', "invalid_utf8"),
        (b"[1,2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (orjson.dumps({"type": "teleport"}), "unknown_type"),
        (orjson.dumps({"event_id": "e"}), "unknown_type"),
        (orjson.dumps(event("page_view", "web", {}, "e1")), "no_identifiers"),
        (orjson.dumps(event("page_view", "web", {"cookie_id": "undefined"}, "e1")), "no_identifiers"),
        (orjson.dumps(event("page_view", "store", {"customer_id": "C1"}, "e1")), "channel_mismatch"),
        (orjson.dumps({**event("page_view", "web", {"customer_id": "C1"}, "e1"), "occurred_at": "noon"}), "bad_timestamp"),
        (orjson.dumps({**event("page_view", "web", {"customer_id": "C1"}, "e1"), "occurred_at": "2026-01-01T00:00:00"}), "bad_timestamp"),
        (orjson.dumps(event("page_view", "web", {"customer_id": "C1"}, "e1", at=0.0)), "absurd_timestamp"),
        (orjson.dumps(event("page_view", "web", {"customer_id": "C1"}, "e1", at=NOW + 10 * 86400)), "absurd_timestamp"),
        (orjson.dumps(event("add_to_cart", "web", {"customer_id": "C1"}, "e1", sku="X")), "invalid_event"),
        (orjson.dumps(event("inventory_update", "web", {"customer_id": "C1"}, "e1", sku="X", available_qty=1)), "wrong_topic"),
        (orjson.dumps(event("page_view", "web", {"customer_id": "C1"}, "e1", blob="x" * 3000)), "oversized"),
        (orjson.dumps({**event("page_view", "web", {"customer_id": "C1"}, "e1"), "event_id": ""}), "invalid_event"),
        (orjson.dumps({**event("page_view", "web", {"customer_id": "C1"}, "e1"), "identifiers": {"passport": "x"}}), "invalid_event"),
    ],
)
def test_every_bad_input_has_a_reason(validate: Validator, value: bytes, expected: str) -> None:
    result = validate("channel.web", value, NOW)
    assert reason(result) == expected
    assert result.detail  # type: ignore[union-attr]


def test_product_events_need_no_identifier(validate: Validator) -> None:
    raw = event("inventory_update", "ops", {}, "inv-1", sku="BAG-100", available_qty=3)
    assert isinstance(validate("ops.inventory", orjson.dumps(raw), NOW), CleanEvent)


def test_order_events_on_ops_topic_need_a_customer(validate: Validator) -> None:
    raw = event("order_ready_for_pickup", "ops", {}, "o-1", order_id="O1", store_id="S1")
    assert reason(validate("ops.orders", orjson.dumps(raw), NOW)) == "no_identifiers"


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_refused(validate: Validator, number: bytes) -> None:
    raw = orjson.dumps(purchase("C1", "ev-1", ["VAC-100"])).replace(b'"total":', b'"total":' + number + b",\"was\":")
    assert reason(validate("channel.web", raw, NOW)) == "malformed_json"


def test_an_erasure_request_names_the_identifier_as_the_pipeline_spells_it() -> None:
    from pipeline.privacy.requests import erasure_request

    validator = Validator(Settings())
    key, request = validator.erasure(orjson.dumps(erasure_request("phone:+45 20 12 34 56", "r1")))  # type: ignore[misc]
    assert (key, request["request_id"]) == ("phone:+4520123456", "r1")
    bad_type = {**erasure_request("email:a@b.dk"), "identifier_type": "passport"}
    assert validator.erasure(orjson.dumps(bad_type)).reason == "invalid_event"  # type: ignore[union-attr]
    assert validator.erasure(orjson.dumps(erasure_request("email:not-an-address"))).reason == "no_identifiers"  # type: ignore[union-attr]
    assert validator.erasure(b"{").reason == "malformed_json"  # type: ignore[union-attr]
