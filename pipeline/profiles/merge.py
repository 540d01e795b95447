"""Folding one customer profile into another when identity resolution links them.

Everything moves: nothing the merged profile knew may be lost, and nothing may
count twice. The identity protocol decides *whether* two profiles merge; this
module only says what the merged profile looks like.
"""

from __future__ import annotations

from typing import Any

from pipeline.measure.touches import TOUCHES_KEPT
from pipeline.profiles.profile import DIGEST_CHARS, ProfileLimits, trim_cart, trim_stores


def merge_profiles(
    survivor: dict[str, Any], merged: dict[str, Any], limits: ProfileLimits, dropped: dict[str, int] | None = None
) -> None:
    """Fold ``merged`` into ``survivor`` in place; what the bounds on the union drop is counted in ``dropped``.

    Rules: identifiers and carts are united, counters and lifetime value summed
    (an order both profiles hold is counted once), first/last seen and per-channel
    last seen take the earlier/later time, purchases and views keep the most recent.
    Consent withdrawn in either profile stays withdrawn: without the time of each
    decision, sending to someone who said no is the worse mistake.
    """
    newer, older = (merged, survivor) if (merged["last_seen"] or 0) > (survivor["last_seen"] or 0) else (survivor, merged)

    for kind, values in merged["identifiers"].items():
        mine = survivor["identifiers"].setdefault(kind, [])
        mine.extend(v for v in values if v not in mine)

    if merged["first_seen"] is not None and (survivor["first_seen"] is None or merged["first_seen"] < survivor["first_seen"]):
        survivor["first_seen"] = merged["first_seen"]
    if merged["last_seen"] is not None and (survivor["last_seen"] is None or merged["last_seen"] > survivor["last_seen"]):
        survivor["last_seen"] = merged["last_seen"]
    for channel, ts in merged["channels"].items():
        if ts > survivor["channels"].get(channel, 0.0):
            survivor["channels"][channel] = ts
    for name, count in merged["counters"].items():
        survivor["counters"][name] = survivor["counters"].get(name, 0) + count

    orders = {p["order_id"] for p in survivor["purchases"]}
    counted_twice = sum(p.get("points", 0) for p in merged["purchases"] if p["order_id"] in orders)
    _merge_purchases(survivor, merged, limits)

    for sku, line in merged["cart"].items():
        mine = survivor["cart"].get(sku)
        if mine is None or line["ts"] > mine["ts"]:
            survivor["cart"][sku] = line
    for sku, line in list(survivor["cart"].items()):
        if _bought_after(survivor, sku, line["ts"]):  # carted as one identity, bought as the other
            del survivor["cart"][sku]
    over = trim_cart(survivor["cart"], limits.cart_kept)
    if over and dropped is not None:
        dropped["cart"] = dropped.get("cart", 0) + over

    viewed = [s for s in older["viewed"] if s not in newer["viewed"]] + list(newer["viewed"])
    survivor["viewed"] = viewed[-limits.views_kept :]

    for channel, granted in merged["consent"].items():
        survivor["consent"][channel] = granted and survivor["consent"].get(channel, True)
    survivor["locale"] = newer["locale"] or older["locale"]

    waiting_on = survivor.setdefault("waiting_on", [])  # products whose waiting lists hold either id
    waiting_on.extend(sku for sku in merged.get("waiting_on", ()) if sku not in waiting_on)

    survivor["timers"].update({tid: t for tid, t in merged["timers"].items() if tid not in survivor["timers"]})
    actions = {**merged["actions"], **survivor["actions"]}
    survivor["actions"] = dict(sorted(actions.items(), key=lambda kv: kv[1])[-limits.actions_kept :])

    survivor["seen_events"] = _merge_seen(survivor.get("seen_events", ""), merged.get("seen_events", ""), limits)
    _merge_play_state(survivor, merged, newer, older, counted_twice)
    over = trim_stores(survivor["stores"], limits.stores_kept)
    if over and dropped is not None:
        dropped["stores"] = dropped.get("stores", 0) + over


def _merge_play_state(
    survivor: dict[str, Any], merged: dict[str, Any], newer: dict[str, Any], older: dict[str, Any], counted_twice: int
) -> None:
    """What the next-best-action plays keep on a profile (``pipeline.actions``): kept so that no play repeats itself."""
    zone = newer.get("time_zone") or older.get("time_zone")
    if zone:
        survivor["time_zone"] = zone
    stores = survivor.setdefault("stores", {})
    for store, ts in merged.get("stores", {}).items():
        stores[store] = max(ts, stores.get(store, 0.0))
    pickups = survivor.setdefault("pickups", {})
    for order_id, theirs in merged.get("pickups", {}).items():
        pickups[order_id] = {**theirs, **pickups.get(order_id, {})}  # a collection either side knew of stays
        if theirs.get("collected") and not pickups[order_id].get("collected"):
            pickups[order_id]["collected"] = theirs["collected"]
    if "loyalty" in merged:  # one balance: points add up (an order both held, once), and so do rewards issued
        balance = survivor.setdefault("loyalty", {"points": 0, "rewards": 0})
        balance["points"] += merged["loyalty"]["points"] - counted_twice
        balance["rewards"] += merged["loyalty"]["rewards"]
    # Measurement (pipeline.measure): a customer keeps the survivor's holdout groups, and the merged
    # profile's for rules the survivor had none for; touches from both sides can still earn conversions;
    # an address that bounced on either side stays unusable.
    groups = survivor.setdefault("holdout", {})
    for rule, member in merged.get("holdout", {}).items():
        groups.setdefault(rule, member)
    both = {t["id"]: t for t in merged.get("touches", []) + survivor.get("touches", [])}  # once each, after a re-merge
    touches = sorted(both.values(), key=lambda t: t["at"])
    survivor["touches"] = touches[-TOUCHES_KEPT:]
    survivor["unreachable"] = {**merged.get("unreachable", {}), **survivor.get("unreachable", {})}
    # Marketing contacts add up against the frequency cap; offers either side made stay active.
    survivor["contacts"] = sorted(survivor.get("contacts", []) + merged.get("contacts", []))
    survivor["offers"] = dict(sorted({**merged.get("offers", {}), **survivor.get("offers", {})}.items(), key=lambda kv: kv[1]["at"]))
    plays = survivor.setdefault("plays", {})
    for rule, theirs in merged.get("plays", {}).items():
        mine = plays.setdefault(rule, {})
        for key, value in theirs.items():  # reminded_at (a time), told (sku -> time): the later wins
            if isinstance(value, dict):
                told = mine.setdefault(key, {})
                for k, v in value.items():
                    told[k] = max(v, told.get(k, v))
            else:
                mine[key] = max(value, mine.get(key, value))


def _merge_seen(mine: str, theirs: str, limits: ProfileLimits) -> str:
    """Both windows of event digests, whole (up to twice the window): the survivor's, then the merged profile's.

    Keeping only the last ``dedup_window`` digests of the two dropped every digest of the
    merged profile whenever the survivor's window was full (any customer with 256 events),
    and an event of the merged profile delivered again after the merge (a crash replaying
    it) was applied a second time: a 30-minute fault campaign counted events, purchases
    and loyalty rewards twice. Past the window, ``seen_before`` drops one digest for each
    new one, so a merged window shrinks back only as new events push the oldest out.
    """
    known = {mine[i : i + DIGEST_CHARS] for i in range(0, len(mine), DIGEST_CHARS)}
    new = "".join(
        digest for i in range(0, len(theirs), DIGEST_CHARS) if (digest := theirs[i : i + DIGEST_CHARS]) not in known
    )
    return (mine + new)[-2 * limits.dedup_window * DIGEST_CHARS :]


def _merge_purchases(survivor: dict[str, Any], merged: dict[str, Any], limits: ProfileLimits) -> None:
    mine = {p["order_id"] for p in survivor["purchases"]}
    ltv = survivor["lifetime_value"]
    for currency, total in merged["lifetime_value"].items():
        ltv[currency] = round(ltv.get(currency, 0.0) + total, 2)
    for p in merged["purchases"]:
        if p["order_id"] in mine:  # one order seen under both identities: counted once
            ltv[p["currency"]] = round(ltv[p["currency"]] - p["total"], 2)
    purchases = survivor["purchases"] + [p for p in merged["purchases"] if p["order_id"] not in mine]
    purchases.sort(key=lambda p: p["ts"])
    survivor["purchases"] = purchases[-limits.purchases_kept :]


def _bought_after(profile: dict[str, Any], sku: str, since: float) -> bool:
    return any(sku in p["skus"] and p["ts"] >= since for p in profile["purchases"])


def unmerge_profiles(survivor: dict[str, Any], separated: dict[str, Any]) -> None:
    """Take back out of ``survivor`` what ``separated`` brought when it was merged in (an operator's split).

    What the separated profile held at its merge leaves with it: its counts, its orders
    and their value, its cart lines, its pending timers (the caller moves those), its
    emitted actions and offers, its loyalty points and waiting orders. What cannot be
    told apart stays with the survivor: events that
    reached the merged profile afterwards, through any identifier, are not traced to
    one side; first and last seen, per-channel last seen, viewed products, consent,
    locale and the event-id window stay as they are.
    """
    for name, count in separated["counters"].items():
        left = survivor["counters"].get(name, 0) - count
        if left > 0:
            survivor["counters"][name] = left
        else:
            survivor["counters"].pop(name, None)
    their_orders = {p["order_id"] for p in separated["purchases"]}
    survivor["purchases"] = [p for p in survivor["purchases"] if p["order_id"] not in their_orders]
    ltv = survivor["lifetime_value"]
    for currency, total in separated["lifetime_value"].items():
        ltv[currency] = round(max(0.0, ltv.get(currency, 0.0) - total), 2)
    for sku, line in separated["cart"].items():
        if survivor["cart"].get(sku) == line:  # unchanged since: it was theirs
            del survivor["cart"][sku]
    for action_id in separated["actions"]:
        survivor["actions"].pop(action_id, None)
        survivor.get("offers", {}).pop(action_id, None)
    if "loyalty" in separated and "loyalty" in survivor:
        mine, theirs = survivor["loyalty"], separated["loyalty"]
        mine["points"] = max(0, mine["points"] - theirs["points"])
        mine["rewards"] = max(0, mine["rewards"] - theirs["rewards"])
    for order_id in separated.get("pickups", {}):
        survivor.get("pickups", {}).pop(order_id, None)
