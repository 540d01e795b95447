"""What every action goes through, whatever the play: channel, consent, quiet hours, frequency cap, words.

Decided when the action is due, from the profile as it is then, so an unsubscribe
or a withdrawn consent takes effect at once, also for actions scheduled long ago.
An action not sent always has a reason (:data:`REASONS`), which becomes the
``reason`` label of ``omni_actions_suppressed_total``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipeline.actions.channels import address_for, engagement
from pipeline.actions.model import Action, action_id
from pipeline.actions.plays.base import Draft, Play, Profile
from pipeline.actions.rules import CUSTOMER_CHANNELS, STAFF_CHANNELS, Defaults, language
from pipeline.measure.touches import add_touch, in_holdout
from pipeline.profiles.profile import time_zone

REASONS = (
    "rule_disabled",  # switched off (or removed) after the timer was set
    "obsolete",  # nothing left to say: the cart was bought, the order collected
    "already_sent",  # the same action id went out before (a replay, a repeated notice)
    "no_channel",  # no address for any of the rule's channels
    "no_consent",  # reachable, but consent withdrawn on every such channel
    "frequency_cap",  # the customer had enough marketing lately
    "quiet_hours_deferred",  # not dropped: due again when quiet hours end
    "waiting_list_full",  # back in stock: the product's waiting list was full when the customer looked
    "holdout",  # in the rule's holdout group: recorded as a would-be action, to measure the rule's effect
    "too_late",  # a moment that has passed: a store told of an arrival, an agent shown a call, hours later
    "error",  # deciding raised (a bug, or a rule the data breaks): logged, and the timer dropped
)
OFFERS_KEPT = 50


@dataclass(frozen=True, slots=True)
class Suppressed:
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class HeldOut:
    """The customer is in the rule's holdout group: the would-be action is recorded, not sent."""

    action: Action


@dataclass(frozen=True, slots=True)
class Deferred:
    rule: str
    until: float


class Policy:
    def __init__(self, defaults: Defaults, actions_kept: int = 100) -> None:
        self.defaults = defaults
        self.actions_kept = actions_kept
        self.default_lang = language(defaults.locale)
        self.longest_cap = max((c.period for c in defaults.frequency_caps), default=0.0)

    def decide(
        self, play: Play, profile: Profile, draft: Draft, due: float, now: float, origin: str
    ) -> Action | HeldOut | Suppressed | Deferred:
        """``origin``: the profile the timer was set for. The id derives from it, not from the profile holding
        the timer now, so an action keeps its id when a merge moves its timer to another profile."""
        rule = play.rule
        aid = action_id(play.name, origin, draft.cause)
        if aid in profile["actions"]:
            return Suppressed(play.name, "already_sent")
        channel = self.channel(profile, rule.channels)
        if channel in REASONS:
            return Suppressed(play.name, channel)
        if channel in CUSTOMER_CHANNELS:
            until = self.quiet_until(profile, now)
            if until is not None:
                return Deferred(play.name, until)
        if rule.kind == "marketing" and self.capped(profile, now):
            return Suppressed(play.name, "frequency_cap")
        locale = profile.get("locale") or self.defaults.locale
        action = Action(
            action_id=aid,
            rule=play.name,
            kind=rule.kind,
            action=draft.action,
            customer=profile["id"],
            channel=channel,  # type: ignore[arg-type]
            locale=locale,
            message=self.words(locale, draft.messages, rule.messages).format(**draft.fields),
            reason=draft.reason,
            trigger_event_ids=draft.trigger_event_ids,
            facts=draft.facts,
            offer=draft.offer and {**draft.offer, "valid_until": now + rule.offer_valid},
            address=draft.address if channel in STAFF_CHANNELS else address_for(profile, channel),
            created_at=now,
            due_at=due,
        )
        held = rule.holdout > 0 and in_holdout(profile, play.name, rule.holdout)
        add_touch(profile, aid, play.name, "holdout" if held else "treated", now, rule.attribution_window, channel, action.address)
        if held:
            remember_id(profile["actions"], aid, now, self.actions_kept)  # decided: a replay does not decide again
            return HeldOut(action)
        self.record(profile, action, now)
        return action

    def words(self, locale: str, *choices: dict[str, str] | None) -> str:
        """The text in the customer's language from the first set of messages that has it, else the default language."""
        texts = [c for c in choices if c]
        for lang in (language(locale), self.default_lang):
            for by_lang in texts:
                for key, text in reversed(by_lang.items()):  # of two spellings of one language, the last
                    if language(key) == lang:
                        return text
        return next(iter(texts[-1].values()))

    def channel(self, profile: Profile, candidates: tuple[str, ...]) -> str:
        """The consented, reachable candidate the customer engages with most (ties: the rule's order), or why none.

        Staff-facing channels (the store, the call centre) need neither consent nor an address.
        """
        if candidates[0] in STAFF_CHANNELS:  # a rule's channels are all staff or all customer (rules.py)
            return candidates[0]
        reachable = [c for c in candidates if address_for(profile, c) is not None]
        if not reachable:
            return "no_channel"
        consent = profile["consent"]
        usable = [c for c in reachable if consent.get(c, True)]
        if not usable:
            return "no_consent"
        return max(usable, key=lambda c: engagement(profile, c))  # max() keeps the first of equals

    def quiet_until(self, profile: Profile, now: float) -> float | None:
        """When quiet hours end, if it is quiet hours for the customer now."""
        quiet = self.defaults.quiet_hours
        if quiet is None:
            return None
        zone = time_zone(profile.get("time_zone") or self.defaults.time_zone) or time_zone(self.defaults.time_zone)
        local = datetime.fromtimestamp(now, zone)
        t = local.time()
        inside = (t >= quiet.start or t < quiet.end) if quiet.start > quiet.end else (quiet.start <= t < quiet.end)
        if not inside:
            return None
        end = local.replace(hour=quiet.end.hour, minute=quiet.end.minute, second=0, microsecond=0)
        if end <= local:
            end += timedelta(days=1)
        return end.timestamp()

    def capped(self, profile: Profile, now: float) -> bool:
        contacts: list[float] = profile.get("contacts", [])
        return any(sum(1 for t in contacts if t > now - cap.period) >= cap.count for cap in self.defaults.frequency_caps)

    def record(self, profile: Profile, action: Action, now: float) -> None:
        """Remember the action on the profile: its id (replays), marketing contacts (caps), the offer (web, call centre)."""
        remember_id(profile["actions"], action.action_id, now, self.actions_kept)
        if action.kind == "marketing":
            contacts = [t for t in profile.get("contacts", []) if t > now - self.longest_cap]
            contacts.append(now)
            profile["contacts"] = contacts
        if action.offer is not None:
            offers: dict[str, Any] = {k: o for k, o in profile.get("offers", {}).items() if o["until"] > now}
            offers[action.action_id] = {
                "rule": action.rule, "action": action.action, "channel": action.channel, "offer": action.offer,
                "message": action.message, "at": now, "until": action.offer["valid_until"],
            }  # fmt: skip
            while len(offers) > OFFERS_KEPT:
                del offers[next(iter(offers))]
            profile["offers"] = offers


def remember_id(actions: dict[str, float], action_id: str, now: float, keep: int) -> None:
    actions[action_id] = now
    while len(actions) > keep:
        del actions[next(iter(actions))]


def active_offers(profile: Profile, now: float) -> list[dict[str, Any]]:
    return [{"action_id": k, **o} for k, o in profile.get("offers", {}).items() if o["until"] > now]
