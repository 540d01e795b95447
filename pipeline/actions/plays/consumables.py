"""Consumables follow-up: a durable purchase schedules an offer on its consumable.

Bought a vacuum cleaner: some weeks later (the product catalogue's delay), an
offer on its bags. Buying the bags anywhere (web, app or store) before then
cancels it, because offering what the customer already bought is the spam we
exist to avoid.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pipeline.actions.catalogue import Catalogue
from pipeline.actions.durations import describe_duration
from pipeline.actions.plays.base import Draft, Play, Profile, Sends, Timers, new_purchase


def bought_since(profile: Profile, sku: str, since: float) -> bool:
    """Events from different channels arrive in any order: the bags may be seen before the vacuum."""
    return any(p["ts"] >= since and sku in p["skus"] for p in profile["purchases"])


class ConsumablesFollowUp(Play):
    triggers = frozenset({"purchase"})

    def __init__(self, name: str, rule: Any, products: Catalogue) -> None:
        super().__init__(name, rule, products)
        # (consumables, durables) of the product catalogue, worked out once: every purchase asks.
        durables = frozenset(sku for sku, product in products.products.items() if product.consumable)
        self.kinds = (products.consumable_skus(), durables)

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        bought = {item["sku"] for item in event["properties"]["items"]}
        consumables, durables = self.kinds
        if not (bought & consumables or bought & durables):
            return  # most purchases: nothing this play sells on or cancels
        purchase = new_purchase(profile, event)
        if purchase is None:
            return
        if bought & consumables:
            for timer_id, timer in timers.of_rule(self.name):
                if timer["consumable_sku"] in bought:
                    timers.cancel(timer_id)
        for sku in sorted(bought & durables):
            offer = self.products.consumable_for(sku)
            if offer is None:
                continue
            # One follow-up per durable product, not per order: a second vacuum cleaner moves the bags'
            # offer instead of adding another, so a profile's timers stay bounded however much it buys.
            timer_id = f"{self.name}:{sku}"
            current = timers.timers.get(timer_id)
            if (current is not None and current["purchased_at"] >= event["ts"]) or bought_since(profile, offer.sku, event["ts"]):
                continue  # a later purchase of the same product already set it, or the consumable came after
            timers.set(
                timer_id, event["ts"] + offer.delay_s, self.name,
                durable_sku=sku, consumable_sku=offer.sku, order_id=purchase["order_id"], purchased_at=event["ts"],
                purchase_channel=event["channel"], trigger_event_id=event["event_id"],
            )  # fmt: skip

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | str:
        offer = self.products.consumable_for(timer["durable_sku"])
        if offer is None or bought_since(profile, offer.sku, timer["purchased_at"]):
            return "obsolete"
        durable = self.product_name(timer["durable_sku"])
        bought_on = datetime.fromtimestamp(timer["purchased_at"], timezone.utc).strftime("%Y-%m-%d")
        return Draft(
            action="offer_consumable",
            cause=f"{timer_id}:{timer['order_id']}",
            fields={"consumable": offer.name, "durable": durable},
            reason=(
                f"bought {durable} ({timer['purchase_channel']}, {bought_on}); "
                f"{offer.name} due {describe_duration(offer.delay_s)} later and not bought since"
            ),
            trigger_event_ids=[timer["trigger_event_id"]],
            facts={k: timer[k] for k in ("durable_sku", "order_id", "purchased_at", "purchase_channel")},
            offer={"sku": offer.sku, "name": offer.name},
            messages=offer.message or None,  # the product catalogue's own words, when it has them
        )
