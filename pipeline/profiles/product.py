"""Products as actors: availability per store (and online), and who waits for it to come back.

A product lives under ``sku:<sku>`` in the state partition that key hashes to. It
takes two messages: ``product`` (an ``inventory_update``) and ``interest`` (a
customer viewed or carted it). Only interest in an unavailable product is kept,
so the common case, a view of something in stock, writes nothing.
"""

from __future__ import annotations

from typing import Any

from pipeline.state.partition import PartitionState

ONLINE = "online"
PRODUCT_OPS = frozenset({"product", "interest"})


def new_product(key: str) -> dict[str, Any]:
    return {"id": key, "available": {}}


def available_at(product: dict[str, Any]) -> list[str]:
    return [location for location, level in product["available"].items() if level["qty"] > 0]


def apply_inventory(product: dict[str, Any], event: dict[str, Any]) -> None:
    props = event["properties"]
    location = props.get("store_id") or ONLINE
    current = product["available"].get(location)
    if current is not None and event["ts"] < current["ts"]:
        return  # an older stock level arriving late must not overwrite a newer one
    product["available"][location] = {"qty": props["available_qty"], "ts": event["ts"]}


def product_step(state: PartitionState, key: str, msg: dict[str, Any], out: list[tuple[str, dict[str, Any]]], max_waiting: int) -> bool:
    """Run one product message; True when it was a stock update applied to state.

    Back in stock: when an update makes an unavailable product available somewhere,
    every profile on its waiting list gets a ``notice`` with where it is now, and the
    list is cleared (each interest is answered once).
    """
    skey = key.encode()
    product = state.txn.get(skey)
    if msg["op"] == "interest":
        if product is None or available_at(product):
            return False  # in stock, or never reported: nothing to wait for
        waiting = product.setdefault("waiting", {})
        if msg["profile"] in waiting or len(waiting) < max_waiting:
            waiting[msg["profile"]] = [msg["ts"], msg["event_id"]]
            state.txn.set(skey, product)
        return False
    event = msg["event"]
    product = product or new_product(key)
    was_available = bool(available_at(product))
    apply_inventory(product, event)
    where = available_at(product)
    if where and not was_available and product.get("waiting"):
        sku = key.partition(":")[2]
        for profile, (interest_ts, interest_event) in product.pop("waiting").items():
            notice = {"op": "notice", "about": "back_in_stock", "sku": sku, "where": where, "ts": event["ts"],
                      "event_id": event["event_id"], "interest_ts": interest_ts, "interest_event_id": interest_event}  # fmt: skip
            out.append((profile, notice))
    state.txn.set(skey, product)
    return True
