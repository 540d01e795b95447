"""What a play is: it reacts to events on one profile by setting timers, and composes an action when one is due.

A play never sends anything itself. Every action, immediate or delayed, is a
timer on the profile (an immediate one is due at the event's time), and when it
comes due the play composes a :class:`Draft` from the profile as it is *then*;
:mod:`pipeline.actions.policy` decides whether, where and when it goes out. So a
purchase, an unsubscribe or a merge that happens in between always counts, and
timers are durable state that survives restarts and follows merges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.actions.catalogue import Catalogue
from pipeline.runtime.state.partition import PartitionState

Profile = dict[str, Any]
Sends = list[tuple[str, dict[str, Any]]]  # (key of another actor, message), e.g. interest in a product


@dataclass(slots=True)
class Draft:
    """An action a play wants to send, before channel, consent, cap and quiet hours are decided."""

    action: str
    cause: str  # unique per customer and rule: the action id derives from it, so a replay repeats it
    fields: dict[str, Any]  # the message's placeholders
    reason: str
    trigger_event_ids: list[str]
    facts: dict[str, Any]
    offer: dict[str, Any] | None = None
    messages: dict[str, str] | None = None  # instead of the rule's (a reminder has its own words)
    address: str | None = None  # for a staff-facing channel, where it is meant (a store)


@dataclass(frozen=True, slots=True)
class Rearm:
    """Not yet: the timer comes due again at ``until`` (a cart still being filled)."""

    until: float


class Timers:
    """A profile's timers and its partition's due-time index, changed together."""

    __slots__ = ("state", "pid", "timers")

    def __init__(self, state: PartitionState, pid: str, profile: Profile) -> None:
        self.state, self.pid, self.timers = state, pid, profile["timers"]

    def set(self, timer_id: str, due: float, rule: str, **data: Any) -> None:
        """Schedule, or move an existing timer of the same id (its data is replaced).

        ``origin`` is the profile it was first set for: it travels with the timer through merges
        and splits, and the action's id derives from it.
        """
        self.cancel(timer_id)
        self.timers[timer_id] = {"rule": rule, "due": due, "origin": self.pid, **data}
        self.state.schedule(due, self.pid, timer_id)

    def cancel(self, timer_id: str) -> bool:
        timer = self.timers.pop(timer_id, None)
        if timer is None:
            return False
        self.state.unschedule(timer["due"], self.pid, timer_id)
        return True

    def of_rule(self, rule: str) -> list[tuple[str, dict[str, Any]]]:
        return [(tid, t) for tid, t in self.timers.items() if t["rule"] == rule]


class Play:
    """One rule of the catalogue at work. Subclasses name the event types they react to."""

    triggers: ClassVar[frozenset[str]] = frozenset()
    notices: ClassVar[frozenset[str]] = frozenset()  # messages from other actors (a product back in stock)

    def __init__(self, name: str, rule: Any, products: Catalogue) -> None:
        self.name, self.rule, self.products = name, rule, products

    def on_event(self, profile: Profile, event: dict[str, Any], timers: Timers, sends: Sends) -> None:
        """React to an event just applied to ``profile``."""

    def send_again(self, profile: Profile, event: dict[str, Any], sends: Sends) -> None:
        """An event applied before came again (a replay): send again what ``on_event`` sent to other actors.

        Those messages may run at once in this worker, in another state partition, and a crash
        can land the profile's part of a checkpoint without the other's: only a second send
        restores them. Every receiver takes a repeat as a repeat.
        """

    def on_notice(self, profile: Profile, notice: dict[str, Any], timers: Timers) -> None:
        """React to a message from another actor."""

    def on_decided(self, profile: Profile, timer: dict[str, Any], action: Any) -> None:
        """The action went out (or, held out, would have): what the play remembers of it."""

    def compose(self, profile: Profile, timer_id: str, timer: dict[str, Any], now: float) -> "Draft | Rearm | str":
        """The action a due timer stands for, a later time to ask again, or why there is none (``policy.REASONS``)."""
        raise NotImplementedError

    # --- helpers shared by plays ---------------------------------------------------------

    def product_name(self, sku: str) -> str:
        product = self.products.products.get(sku)
        return product.name if product else sku

    def state_of(self, profile: Profile) -> dict[str, Any]:
        """This rule's own memory on the profile (what it reminded, notified...)."""
        return profile.setdefault("plays", {}).setdefault(self.name, {})  # type: ignore[no-any-return]


def new_purchase(profile: Profile, event: dict[str, Any]) -> dict[str, Any] | None:
    """The purchase this event recorded, or None when its order was already known (sent twice)."""
    order_id = event["properties"]["order_id"]
    for p in reversed(profile["purchases"]):
        if p["order_id"] == order_id:
            return p if p["event_id"] == event["event_id"] else None
    return None
