"""Back in stock: a customer who viewed or carted a product while it was sold out is told when it returns.

Availability lives with the product (an actor keyed ``sku:<sku>``, fed by
``inventory_update``), not on the profile, so the profile tells the product it is
interested (``interest``); a product sold out online keeps the customer on its
waiting list, one available online forgets it at once. When an update makes it
available somewhere new the product sends each waiting profile a ``notice``, and
the profile decides: told if it is back online or at a store the customer uses,
once per interest; else it stays on the list for the next restock.
"""

from __future__ import annotations

from typing import Any

from pipeline.actions.plays.base import Draft, Play, Profile, Sends, Timers
from pipeline.profiles.product import ONLINE

NOTICE = "back_in_stock"


class BackInStock(Play):
    triggers = frozenset({"product_view", "add_to_cart"})
    notices = frozenset({NOTICE})

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        sends.append(_interest(profile, event))

    def send_again(self, profile: Profile, event: dict[str, Any], sends: Sends) -> None:
        sends.append(_interest(profile, event))  # the product keeps one entry per profile: a repeat changes nothing

    def on_notice(self, profile: Profile, notice: dict[str, Any], timers: Timers) -> None:
        sku = notice["sku"]
        if self.where(profile, notice["where"]) is None:
            return  # only at stores they do not use: the product keeps them waiting for more
        told = self.state_of(profile).setdefault("told", {})
        if notice["interest_ts"] <= told.get(sku, 0.0):
            return  # a repeated notice, or interest already answered
        told[sku] = notice["interest_ts"]
        timers.set(
            f"{self.name}:{sku}:{notice['event_id']}", notice["ts"], self.name,
            sku=sku, where=notice["where"], trigger_event_id=notice["event_id"], interest_event_id=notice["interest_event_id"],
        )  # fmt: skip

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | str:
        where = self.where(profile, timer["where"]) or ONLINE
        sku = timer["sku"]
        name = self.product_name(sku)
        place = "online" if where == ONLINE else f"at {where}"
        return Draft(
            action="back_in_stock",
            cause=timer_id,
            fields={"product": name, "where": place},
            reason=f"viewed {name} while it was sold out online; it is available again {place}",
            trigger_event_ids=[timer["interest_event_id"], timer["trigger_event_id"]],
            facts={"sku": sku, "available_at": where},
            offer={"sku": sku, "name": name},
        )

    @staticmethod
    def where(profile: Profile, available: list[str]) -> str | None:
        """Online if it is back online, else the store the customer used last among those that have it."""
        if ONLINE in available:
            return ONLINE
        stores = profile.get("stores", {})
        theirs = [s for s in available if s in stores]
        return max(theirs, key=lambda s: stores[s]) if theirs else None


def _interest(profile: Profile, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    sku = event["properties"]["sku"]
    return f"sku:{sku}", {"op": "interest", "profile": profile["id"], "ts": event["ts"], "event_id": event["event_id"]}
