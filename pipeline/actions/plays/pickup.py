"""Click and collect, and arrival at the store.

``order_ready_for_pickup`` tells the customer where and until when, and one
reminder follows if ``pickup_collected`` has not come within the window. When
the app reports the customer entering a store (``geofence_enter``) where an order
of theirs waits, the store is asked to bring it out (``actions.store``); with
no order waiting there, nothing is sent: a customer walking into a shop is not a
reason to write to them.

The orders waiting are profile facts (``profile["pickups"]``, kept by
:mod:`pipeline.profiles.profile`), so both plays read the same list.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pipeline.actions.plays.base import Draft, Play, Profile, Sends, Timers


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def waiting(profile: Profile, order_id: str) -> dict[str, Any] | None:
    """The order if it still waits at the store (known ready, not collected)."""
    order = profile.get("pickups", {}).get(order_id)
    return None if order is None or order.get("collected") or order.get("store_id") is None else order  # type: ignore[no-any-return]


class ClickAndCollect(Play):
    triggers = frozenset({"order_ready_for_pickup", "pickup_collected"})

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        order_id = event["properties"]["order_id"]
        ready, reminder = f"{self.name}:ready:{order_id}", f"{self.name}:reminder:{order_id}"
        if event["type"] == "pickup_collected":
            timers.cancel(ready)
            timers.cancel(reminder)
            return
        if waiting(profile, order_id) is None:
            return  # collected before this (late) message said it was ready
        common = {"order_id": order_id, "store_id": event["properties"]["store_id"], "trigger_event_id": event["event_id"]}
        timers.set(ready, event["ts"], self.name, step="ready", ready_at=event["ts"], **common)
        timers.set(reminder, event["ts"] + self.rule.remind_after, self.name, step="reminder", ready_at=event["ts"], **common)

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | str:
        order_id, store = timer["order_id"], timer["store_id"]
        if waiting(profile, order_id) is None:
            return "obsolete"
        until = timer["ready_at"] + self.rule.hold
        reminder = timer["step"] == "reminder"
        return Draft(
            action="pickup_reminder" if reminder else "pickup_ready",
            cause=timer_id,
            fields={"order": order_id, "store": store, "until": _when(until)},
            reason=(f"order {order_id} ready at {store} since {_when(timer['ready_at'])}"
                    + (" and not collected yet" if reminder else "")),
            trigger_event_ids=[timer["trigger_event_id"]],
            facts={"order_id": order_id, "store_id": store, "ready_at": timer["ready_at"], "until": until},
            messages=self.rule.reminder_messages if reminder else None,
        )  # fmt: skip


class Arrival(Play):
    triggers = frozenset({"geofence_enter"})

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        store = event["properties"]["store_id"]
        for order_id in list(profile.get("pickups", {})):
            order = waiting(profile, order_id)
            if order is not None and order["store_id"] == store:
                timers.set(
                    f"{self.name}:{order_id}:{event['event_id']}", event["ts"], self.name,
                    order_id=order_id, store_id=store, trigger_event_id=event["event_id"],
                )  # fmt: skip

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | str:
        order_id, store = timer["order_id"], timer["store_id"]
        order = waiting(profile, order_id)
        if order is None:
            return "obsolete"
        if now - timer["due"] > self.rule.max_delay:
            return "too_late"  # the customer has long walked in: telling the store now helps no one
        return Draft(
            action="prepare_order",
            cause=timer_id,
            fields={"order": order_id, "store": store},
            reason=f"the customer's app entered {store}, where order {order_id} waits to be collected",
            trigger_event_ids=[order["event_id"], timer["trigger_event_id"]],
            facts={"order_id": order_id, "store_id": store, "ready_at": order["ready_at"]},
            address=store,
        )
