from pipeline.identity.resolve import profile_key, routing_key


def test_strongest_identifier_wins() -> None:
    assert profile_key({"cookie_id": "ck", "email": "a@b.co", "customer_id": "C1"}) == "customer_id:C1"
    assert profile_key({"cookie_id": "ck", "email": "a@b.co"}) == "email:a@b.co"
    assert profile_key({"cookie_id": "ck"}) == "cookie_id:ck"
    assert profile_key({}) is None


def test_product_events_route_by_sku() -> None:
    assert routing_key({"type": "inventory_update", "properties": {"sku": "BAG-100"}, "identifiers": {}}) == "sku:BAG-100"
