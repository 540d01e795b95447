"""What the engine does with records, with no Kafka in it.

1. ``ingest``: a raw record from an input topic becomes a validated, normalised
   event with the identifier it enters the identity graph by (or a rejection for
   the dead-letter topic).
2. ``handle``: one identity-protocol message for an identifier or a profile
   (``pipeline.identity.protocol``); an event reaching its profile is applied there
   and rules may schedule timers. ``fire_due`` turns due timers into actions.

Both return plain data; the engine decides where it goes and when it is durable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


from pipeline.actions.catalogue import Catalogue
from pipeline.actions.consumables import ConsumablesFollowUp, Suppressed, TimerChange
from pipeline.actions.model import Action
from pipeline.identity.protocol import IdentityProtocol, Message, Outbox, is_tombstone
from pipeline.identity.resolve import routing_key
from pipeline.ingest.validate import CleanEvent, Rejection, Validator
from pipeline.profiles.profile import ProfileLimits, apply_event, remember_action, seen_before
from pipeline.profiles.product import apply_inventory, new_product
from pipeline.settings import Settings
from pipeline.state.partition import PartitionState


@dataclass(slots=True)
class Tallies:
    """Counts gathered per batch and handed to Prometheus in one go."""

    events_in: Counter = field(default_factory=Counter)
    deadletter: Counter = field(default_factory=Counter)
    identifiers_dropped: Counter = field(default_factory=Counter)
    processed: Counter = field(default_factory=Counter)
    duplicates: int = 0
    actions: Counter = field(default_factory=Counter)
    suppressed: Counter = field(default_factory=Counter)


class Processor:
    def __init__(self, settings: Settings, catalogue: Catalogue) -> None:
        self.validate = Validator(settings)
        self.limits = ProfileLimits(
            dedup_window=settings.dedup_window,
            purchases_kept=settings.purchases_kept,
            views_kept=settings.views_kept,
        )
        self.rules = [ConsumablesFollowUp(catalogue)]
        self.identity = IdentityProtocol(settings.identity_rules(), self.limits, self._apply_to_profile)
        self.tally = Tallies()
        self.applied = 0  # events applied to state so far: the engine times each record that raised it

    # --- step 1: ingest ---------------------------------------------------------

    def ingest(self, logical_topic: str, value: bytes | None, now: float) -> tuple[str, dict[str, Any]] | Rejection:
        result = self.validate(logical_topic, value, now)
        if isinstance(result, Rejection):
            self.tally.deadletter[(result.reason, logical_topic)] += 1
            return result
        assert isinstance(result, CleanEvent)
        data = result.data
        for kind, reason in result.dropped_identifiers:
            self.tally.identifiers_dropped[(kind, reason)] += 1
        self.tally.events_in[(data["channel"], data["type"])] += 1
        return routing_key(data), data

    # --- step 2: apply to state ------------------------------------------------------

    def apply_product(self, state: PartitionState, key: str, event: dict[str, Any]) -> None:
        skey = key.encode()
        product = state.txn.get(skey) or new_product(key)
        apply_inventory(product, event)
        state.txn.set(skey, product)
        self.applied += 1
        self.tally.processed[event["type"]] += 1

    def handle(self, state: PartitionState, target: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        """One identity-protocol message (an event on its way to its profile, a claim, a merge step)."""
        self.identity.handle(state, target, msg, now, out, merges)

    def _apply_to_profile(self, state: PartitionState, pid: str, profile: dict[str, Any], event: dict[str, Any]) -> bool:
        if seen_before(profile, event["event_id"], self.limits):
            self.tally.duplicates += 1
            return False
        self.applied += 1
        apply_event(profile, event, self.limits)
        for rule in self.rules:
            for change in rule.on_event(profile, event):
                self._index_timer(state, pid, change)
        self.tally.processed[event["type"]] += 1
        return True

    def _index_timer(self, state: PartitionState, key: str, change: TimerChange) -> None:
        if change.added:
            state.schedule(change.due, key, change.timer_id)
        else:
            state.unschedule(change.due, key, change.timer_id)

    def fire_due(self, state: PartitionState, now: float) -> list[Action]:
        actions: list[Action] = []
        for due, key, timer_id in state.due(now):
            skey = key.encode()
            profile = state.txn.get(skey)
            timer = profile["timers"].get(timer_id) if profile and not is_tombstone(profile) else None
            if profile is None or timer is None or timer["due"] != due:
                continue  # cancelled or rescheduled since it was indexed
            del profile["timers"][timer_id]
            state.unschedule(due, key, timer_id)
            rule = next(r for r in self.rules if r.name == timer["rule"])
            outcome = rule.on_timer(profile, timer_id, timer, now)
            if isinstance(outcome, Suppressed):
                self.tally.suppressed[(outcome.rule, outcome.reason)] += 1
            else:
                remember_action(profile, outcome.action_id, now)
                self.tally.actions[(outcome.rule, outcome.channel)] += 1
                actions.append(outcome)
            state.txn.set(skey, profile)
        return actions
