"""Abandoned cart: items added and not bought within the window get one reminder.

The window restarts with every item added (a cart still being filled is not
abandoned). A purchase in any channel, the store included, takes its items out
of the cart, and an empty cart cancels the reminder. Identity resolution merges
carts from different devices, so the reminder covers the customer's whole cart;
the lines it covered are not reminded again (marked once the reminder is sent,
or held out: not when it is only put off by quiet hours).
"""

from __future__ import annotations

from typing import Any

from pipeline.actions.plays.base import Draft, Play, Profile, Rearm, Sends, Timers


class AbandonedCart(Play):
    triggers = frozenset({"add_to_cart", "remove_from_cart", "purchase"})

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        timer_id = self.name
        if event["type"] == "add_to_cart":
            # Set once per cart, not moved with every item: when it comes due it looks at the
            # last item added and, if the window has not passed since, waits that much longer.
            # Moving it would cost two writes to the timer index per item, on the hot path.
            if timer_id not in timers.timers:
                timers.set(timer_id, event["ts"] + self.rule.window, self.name, trigger_event_id=event["event_id"])
        elif not self._unreminded(profile) and timer_id in timers.timers:
            timers.cancel(timer_id)

    @staticmethod
    def _unreminded(profile: Profile) -> dict[str, Any]:
        # Marked per line: a merge unites carts line by line, and each line keeps its mark.
        return {sku: line for sku, line in profile["cart"].items() if not line.get("reminded")}

    def on_decided(self, profile: Profile, timer: dict[str, Any], action: Any) -> None:
        for sku in action.facts["cart"]:
            if sku in profile["cart"]:
                profile["cart"][sku]["reminded"] = True

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | Rearm | str:
        lines = self._unreminded(profile)
        if not lines:
            return "obsolete"
        last_added = max(line["ts"] for line in lines.values())
        if last_added + self.rule.window > now:
            return Rearm(last_added + self.rule.window)  # still being filled
        names = [self.product_name(sku) for sku in lines]
        return Draft(
            action="cart_reminder",
            cause=timer["trigger_event_id"],
            fields={"items": ", ".join(names), "count": len(names)},
            reason=f"{len(names)} item(s) in the cart for {self.rule.window:g}s since the last was added, not bought in any channel",
            trigger_event_ids=[timer["trigger_event_id"]],
            facts={"cart": {sku: {"qty": line["qty"], "price": line["price"]} for sku, line in lines.items()}},
            offer={"skus": sorted(lines), "name": "your cart"},
        )
