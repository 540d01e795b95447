"""Products as actors: availability per store (and online), and who waits for it to come back.

A product lives under ``sku:<sku>`` in the state partition that key hashes to. It
takes two messages: ``product`` (an ``inventory_update``) and ``interest`` (a
customer viewed or carted it). Only interest in a product sold out online is kept,
so the common case, a view of something in stock, writes nothing.
"""

from __future__ import annotations

from typing import Any

from pipeline.runtime.state.partition import PartitionState

ONLINE = "online"
PRODUCT_OPS = frozenset({"product", "interest", "unwait"})
RECENT_UPDATES = 8  # update ids remembered per location, so a redelivered one is recognised
NOTIFIED_KEPT = 2  # restocks whose notices are kept, to send again when the update comes again


def new_product(key: str) -> dict[str, Any]:
    return {"id": key, "available": {}}


def available_at(product: dict[str, Any]) -> list[str]:
    return [location for location, level in product["available"].items() if level["qty"] > 0]


def sold_out_online(product: dict[str, Any]) -> bool:
    """Reported at zero online (a product never reported online counts as available there)."""
    level = product["available"].get(ONLINE)
    return level is not None and level["qty"] <= 0


def apply_inventory(product: dict[str, Any], event: dict[str, Any]) -> bool:
    """Record a stock level; False for one older than what is known, or the same update again."""
    props = event["properties"]
    location = props.get("store_id") or ONLINE
    current = product["available"].get(location)
    recent: list[str] = current.get("recent", []) if current else []
    if current is not None and (event["ts"] < current["ts"] or event["event_id"] in recent):
        return False  # a late older level must not overwrite a newer one, nor a redelivery flip it back
    recent = [*recent[-(RECENT_UPDATES - 1):], event["event_id"]]
    product["available"][location] = {"qty": props["available_qty"], "ts": event["ts"], "recent": recent}
    return True


def product_step(state: PartitionState, key: str, msg: dict[str, Any], out: list[tuple[str, dict[str, Any]]], max_waiting: int) -> str | None:
    """Run one product message: "stock" for a stock update applied, "waiting_full" for interest turned away.

    Back in stock: interest in a product sold out online puts the customer on its
    waiting list. When an update makes it available somewhere it was not, every
    waiting profile gets a ``notice`` with where it is now and decides for itself
    (a store it does not use is no news). The list is cleared when the product is
    back online, where everyone can buy it; a restock at one store leaves it as it is.
    """
    skey = key.encode()
    product = state.txn.get(skey)
    if msg["op"] == "unwait":  # an erased customer (and every profile merged into it) leaves the list
        waiting = (product or {}).get("waiting", {})
        gone = set(msg["profiles"])
        notified = (product or {}).get("notified", [])
        if gone & set(waiting) or any(profile in gone for n in notified for profile, _ in n["notices"]):
            for profile in gone:
                waiting.pop(profile, None)
            for n in notified:  # nor kept among the notices to send again
                n["notices"] = [(profile, notice) for profile, notice in n["notices"] if profile not in gone]
            state.txn.set(skey, product)
        return None
    if msg["op"] == "interest":
        if product is None or not sold_out_online(product):
            return None  # available online, or never reported: nothing to wait for
        waiting = product.setdefault("waiting", {})
        if msg["profile"] not in waiting and len(waiting) >= max_waiting:
            return "waiting_full"
        # The profile keeps a list of where it waits, so that erasure finds it. Told every time, not
        # only when it joins: the first notice may have run at once in this worker and been lost with
        # a torn checkpoint (the profile's changelog part lost, ours landed), and the profile's
        # replayed event sends its interest again; a repeat changes nothing at the profile.
        out.append((msg["profile"], {"op": "notice", "about": "waiting", "sku": key.partition(":")[2]}))
        waiting[msg["profile"]] = [msg["ts"], msg["event_id"]]
        state.txn.set(skey, product)
        return None
    event = msg["event"]
    product = product or new_product(key)
    before = set(available_at(product))
    if not apply_inventory(product, event):
        # An update applied before (a replay): its notices go out again. They may have run at once
        # in this worker and been lost with a torn checkpoint while the product's part landed; the
        # waiting list they came from may be gone (cleared by the restock), so they are kept.
        for notified in product.get("notified", ()):
            if notified["event_id"] == event["event_id"]:
                out.extend((profile, notice) for profile, notice in notified["notices"])
        return "stock"
    now_at = available_at(product)
    restocked = [location for location in now_at if location not in before]
    if restocked and product.get("waiting"):
        sku = key.partition(":")[2]
        notices = []
        for profile, (interest_ts, interest_event) in product["waiting"].items():
            notice = {"op": "notice", "about": "back_in_stock", "sku": sku, "where": now_at, "ts": event["ts"],
                      "event_id": event["event_id"], "interest_ts": interest_ts, "interest_event_id": interest_event}  # fmt: skip
            notices.append((profile, notice))
        out.extend(notices)
        kept = product.get("notified", [])[-(NOTIFIED_KEPT - 1):]
        product["notified"] = [*kept, {"event_id": event["event_id"], "notices": notices}]
        if ONLINE in restocked:
            del product["waiting"]
    state.txn.set(skey, product)
    return "stock"
