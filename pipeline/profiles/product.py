"""Product state: availability per store (and online), fed by ``inventory_update``."""

from __future__ import annotations

from typing import Any

ONLINE = "online"


def new_product(key: str) -> dict[str, Any]:
    return {"id": key, "available": {}}


def apply_inventory(product: dict[str, Any], event: dict[str, Any]) -> None:
    props = event["properties"]
    location = props.get("store_id") or ONLINE
    current = product["available"].get(location)
    if current is not None and event["ts"] < current["ts"]:
        return  # an older stock level arriving late must not overwrite a newer one
    product["available"][location] = {"qty": props["available_qty"], "ts": event["ts"]}
