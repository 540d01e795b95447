"""The consumables follow-up: a durable purchase schedules an offer on its consumable.

Bought a vacuum cleaner: some weeks later, an offer on its bags. Buying the
bags anywhere (web, app or store) before then cancels the offer, because
offering what the customer already bought is exactly the spam we exist to avoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline.actions.catalogue import Catalogue
from pipeline.actions.channels import address_for, choose_channel
from pipeline.actions.durations import describe_duration
from pipeline.actions.model import Action, action_id

RULE = "consumables_follow_up"


@dataclass(frozen=True, slots=True)
class TimerChange:
    timer_id: str
    due: float
    added: bool


@dataclass(frozen=True, slots=True)
class Suppressed:
    rule: str
    reason: str


def _bought_since(profile: dict[str, Any], sku: str, since: float) -> bool:
    """Events from different channels arrive in any order: the bags may be seen before the vacuum."""
    return any(p["ts"] >= since and sku in p["skus"] for p in profile["purchases"])


class ConsumablesFollowUp:
    name = RULE

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def on_event(self, profile: dict[str, Any], event: dict[str, Any]) -> list[TimerChange]:
        if event["type"] != "purchase":
            return []
        changes: list[TimerChange] = []
        bought = {item["sku"] for item in event["properties"]["items"]}
        timers: dict[str, dict[str, Any]] = profile["timers"]
        for timer_id, timer in list(timers.items()):
            if timer["rule"] == RULE and timer["consumable_sku"] in bought:
                del timers[timer_id]
                changes.append(TimerChange(timer_id, timer["due"], added=False))
        order_id = event["properties"]["order_id"]
        for sku in sorted(bought):
            offer = self.catalogue.consumable_for(sku)
            if offer is None:
                continue
            timer_id = f"{RULE}:{order_id}:{sku}"
            if timer_id in timers or _bought_since(profile, offer.sku, event["ts"]):
                continue
            due = event["ts"] + offer.delay_s
            timers[timer_id] = {
                "rule": RULE,
                "due": due,
                "durable_sku": sku,
                "consumable_sku": offer.sku,
                "order_id": order_id,
                "purchased_at": event["ts"],
                "purchase_channel": event["channel"],
                "trigger_event_id": event["event_id"],
            }
            changes.append(TimerChange(timer_id, due, added=True))
        return changes

    def on_timer(self, profile: dict[str, Any], timer_id: str, timer: dict[str, Any], now: float) -> Action | Suppressed:
        channel = choose_channel(profile)
        if channel is None:
            return Suppressed(RULE, "no_channel")
        durable = self.catalogue.products[timer["durable_sku"]]
        offer = self.catalogue.consumable_for(timer["durable_sku"])
        assert offer is not None
        locale = profile.get("locale") or self.catalogue.default_locale
        lang = locale.split("-")[0].split("_")[0]
        template = offer.message.get(lang) or offer.message.get(self.catalogue.default_locale) or "{consumable}"
        bought_on = datetime.fromtimestamp(timer["purchased_at"], timezone.utc).strftime("%Y-%m-%d")
        return Action(
            action_id=action_id(RULE, profile["id"], timer_id),
            rule=RULE,
            action="offer_consumable",
            customer=profile["id"],
            channel=channel,  # type: ignore[arg-type]
            locale=locale,
            message=template.format(consumable=offer.name, durable=durable.name),
            reason=(
                f"bought {durable.name} ({timer['purchase_channel']}, {bought_on}); "
                f"{offer.name} due {describe_duration(offer.delay_s)} later and not bought since"
            ),
            trigger_event_ids=[timer["trigger_event_id"]],
            facts={
                "durable_sku": timer["durable_sku"],
                "order_id": timer["order_id"],
                "purchased_at": timer["purchased_at"],
                "purchase_channel": timer["purchase_channel"],
            },
            offer={"sku": offer.sku, "name": offer.name},
            address=address_for(profile, channel),
            created_at=now,
            due_at=timer["due"],
        )
