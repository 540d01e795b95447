"""Loyalty and repeat purchase: what buying again and again earns.

Loyalty: every purchase, in any channel, earns points into one balance on the
profile (``profile["loyalty"]``); each time the balance crosses a multiple of the
threshold, the reward is issued once. Repeat purchase: a customer who has bought
the same item ``min_purchases`` times is offered a one-step reorder when, going
by their own rhythm, they are about to run out.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.actions.plays.base import Draft, Play, Profile, Sends, Timers, new_purchase


class Loyalty(Play):
    triggers = frozenset({"purchase"})

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        purchase = new_purchase(profile, event)
        if purchase is None:
            return  # an order sent twice earns once
        balance = profile.setdefault("loyalty", {"points": 0, "rewards": 0})
        earned = math.floor(purchase["total"] * self.rule.points_per_unit)
        purchase["points"] = earned  # a merge that finds this order on both sides counts it once
        balance["points"] += earned
        while balance["points"] // self.rule.threshold > balance["rewards"]:
            balance["rewards"] += 1
            level = balance["rewards"]
            # Named by the purchase too: two profiles merging may each have a reward number 1 pending.
            timers.set(f"{self.name}:{event['event_id']}:{level}", event["ts"], self.name, level=level,
                       trigger_event_id=event["event_id"])  # fmt: skip

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | str:
        points = profile.get("loyalty", {}).get("points", 0)
        crossed = timer["level"] * self.rule.threshold
        return Draft(
            action="loyalty_reward",
            cause=f"reward:{timer['trigger_event_id']}:{timer['level']}",
            fields={"points": points, "reward": self.rule.reward},
            reason=f"the points balance crossed {crossed} (now {points}) with purchases in every channel",
            trigger_event_ids=[timer["trigger_event_id"]],
            facts={"points": points, "threshold": crossed, "reward_number": timer["level"]},
            offer={"name": self.rule.reward},
        )


class RepeatPurchase(Play):
    triggers = frozenset({"purchase"})

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        purchase = new_purchase(profile, event)
        if purchase is None:
            return
        purchases = profile["purchases"]
        if len(purchases) < self.rule.min_purchases:
            return  # most customers: too few purchases of anything to have a habit yet
        for sku in set(purchase["skus"]):
            times = sorted(p["ts"] for p in purchases if sku in p["skus"])
            if len(times) < self.rule.min_purchases:
                continue
            rhythm = (times[-1] - times[0]) / (len(times) - 1)
            timers.set(
                f"{self.name}:{sku}", times[-1] + max(rhythm, self.rule.min_interval), self.name,
                sku=sku, times=len(times), trigger_event_id=event["event_id"],
            )  # fmt: skip

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> Draft | str:
        sku = timer["sku"]
        name = self.product_name(sku)
        return Draft(
            action="offer_reorder",
            cause=f"{sku}:{timer['trigger_event_id']}",
            fields={"product": name},
            reason=f"bought {name} {timer['times']} times; the next one is about due",
            trigger_event_ids=[timer["trigger_event_id"]],
            facts={"sku": sku, "times_bought": timer["times"]},
            offer={"sku": sku, "name": name, "one_step_reorder": True},
        )
