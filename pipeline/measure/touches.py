"""What the profile remembers to measure the plays: holdout membership, touches, conversions, outcomes.

A *touch* is an action sent (group ``treated``) or one held back (group
``holdout``): the would-be action is decided exactly as a sent one, consent, cap
and quiet hours included, so the two groups are alike but for the action. A
purchase in any channel within the rule's attribution window after a touch is
that touch's conversion; the last touch before the purchase gets it (one purchase
is attributed once). Pure functions over the profile dict: no Kafka here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

Profile = dict[str, Any]
TOUCHES_KEPT = 50
OUTCOMES = ("delivered", "bounced", "opened", "clicked", "converted", "failed")


def in_holdout(profile: Profile, rule: str, share: float) -> bool:
    """Deterministic per profile and rule, and kept on the profile: the same answer after restarts and merges.

    Decided the first time the rule has something for the customer, from a hash of
    rule and profile id, then remembered: a later merge or a changed share does not
    move a customer who was already in one group into the other.
    """
    groups: dict[str, bool] = profile.setdefault("holdout", {})
    member = groups.get(rule)
    if member is None:
        digest = hashlib.blake2b(f"{rule}|{profile['id']}".encode(), digest_size=8).digest()
        member = groups[rule] = int.from_bytes(digest, "big") < share * 2**64
    return member


def add_touch(profile: Profile, action_id: str, rule: str, group: str, at: float, window: float,
              channel: str, address: str | None) -> None:  # fmt: skip
    if window <= 0:
        return  # a service message: nothing to measure
    touches: list[dict[str, Any]] = profile.setdefault("touches", [])
    touches.append({"id": action_id, "rule": rule, "group": group, "at": at, "until": at + window,
                    "channel": channel, "address": address, "converted": False, "outcomes": []})  # fmt: skip
    if len(touches) > TOUCHES_KEPT:
        del touches[0]


@dataclass(frozen=True, slots=True)
class Conversion:
    rule: str
    group: str
    first: bool  # the touch's first conversion (conversion rate counts touches, revenue every purchase)
    revenue: float
    currency: str


def attribute(profile: Profile, purchase: dict[str, Any]) -> Conversion | None:
    """Credit a new purchase to the last touch whose window holds it, if any."""
    ts = purchase["ts"]
    for touch in reversed(profile.get("touches", ())):
        if touch["at"] <= ts <= touch["until"]:
            first = not touch["converted"]
            touch["converted"] = True
            return Conversion(touch["rule"], touch["group"], first, purchase["total"], purchase["currency"])
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    rule: str
    group: str
    outcome: str


def record_outcome(profile: Profile, report: dict[str, Any]) -> Outcome | None:
    """A sender's report on an action: counted once per action and outcome; a bounce makes the address unusable."""
    for touch in reversed(profile.get("touches", ())):
        if touch["id"] == report["action_id"]:
            break
    else:
        return None  # not an action of this profile's, or too old to remember
    outcome = report["outcome"]
    if outcome in touch["outcomes"]:
        return None  # reported twice
    touch["outcomes"].append(outcome)
    if outcome == "bounced" and touch["address"]:
        profile.setdefault("unreachable", {})[touch["address"]] = report["ts"]
    return Outcome(touch["rule"], touch["group"], outcome)
