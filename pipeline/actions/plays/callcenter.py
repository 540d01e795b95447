"""The call centre's screen: when a customer calls or chats, the agent sees who this is across channels.

Composed when the call arrives, from the profile as it is: identifiers, channels
and when each was last used, recent purchases online and in store, the open cart,
active offers (the same ones the e-mail and the web showed) and pending ones,
and the single next best action for the agent to take.
"""

from __future__ import annotations

from typing import Any

from pipeline.actions.plays.base import Draft, Play, Profile, Sends, Timers
from pipeline.actions.plays.pickup import waiting
from pipeline.actions.policy import active_offers


class CallCentreScreen(Play):
    triggers = frozenset({"call", "chat_message"})

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        timers.set(f"{self.name}:{event['event_id']}", event["ts"], self.name, via=event["type"], trigger_event_id=event["event_id"])

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | str:
        if now - timer["due"] > self.rule.max_delay:
            return "too_late"  # the call is long over
        purchases = [
            {k: p.get(k) for k in ("order_id", "ts", "channel", "store_id", "total", "currency", "skus")}
            for p in profile["purchases"][-self.rule.recent_purchases :]
        ]
        offers = active_offers(profile, now)
        pending = sorted(
            ({"rule": t["rule"], "due": t["due"], **({"sku": t[k]} if (k := _sku_field(t)) else {})}
             for tid, t in profile["timers"].items() if tid != timer_id),
            key=lambda t: t["due"],
        )  # fmt: skip
        next_best = self.next_best(profile, offers, pending)
        channels = ", ".join(sorted(profile["channels"], key=lambda c: -profile["channels"][c]))
        summary = (
            f"{profile['id']}: seen on {channels or 'no channel yet'}; {len(profile['purchases'])} purchase(s), "
            f"{len(profile['cart'])} item(s) in the cart, {len(offers)} active offer(s). Next: {next_best['say']}"
        )
        return Draft(
            action="agent_screen",
            cause=timer_id,
            fields={"summary": summary},
            reason=f"the customer started a {timer['via'].replace('_', ' ')}; next best action: {next_best['say']}",
            trigger_event_ids=[timer["trigger_event_id"]],
            facts={
                "identifiers": profile["identifiers"],
                "channels_last_seen": profile["channels"],
                "lifetime_value": profile["lifetime_value"],
                "loyalty": profile.get("loyalty"),
                "recent_purchases": purchases,
                "cart": profile["cart"],
                "active_offers": offers,
                "pending_offers": pending,
                "waiting_pickups": {o: w for o in profile.get("pickups", {}) if (w := waiting(profile, o))},
                "next_best_action": next_best,
            },
        )

    def next_best(self, profile: Profile, offers: list[dict[str, Any]], pending: list[dict[str, Any]]) -> dict[str, Any]:
        """One thing for the agent to do, the most useful first: service before selling."""
        for order_id in profile.get("pickups", {}):
            order = waiting(profile, order_id)
            if order is not None:
                return {"kind": "pickup", "say": f"order {order_id} is ready at {order['store_id']}", "order_id": order_id}
        if offers:
            latest = offers[-1]
            return {"kind": "offer", "say": f"mention the offer already sent: {latest['offer'].get('name')}", "action_id": latest["action_id"]}
        if profile["cart"]:
            names = ", ".join(self.product_name(s) for s in profile["cart"])
            return {"kind": "cart", "say": f"help complete the cart: {names}", "skus": sorted(profile["cart"])}
        for t in pending:
            if "sku" in t:
                return {"kind": "offer_early", "say": f"offer {self.product_name(t['sku'])} now", "rule": t["rule"], "sku": t["sku"]}
        return {"kind": "none", "say": "nothing pending; listen"}


def _sku_field(timer: dict[str, Any]) -> str | None:
    for k in ("consumable_sku", "sku"):
        if k in timer:
            return k
    return None
