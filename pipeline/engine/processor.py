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

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.actions.catalogue import Catalogue
from pipeline.actions.model import Action
from pipeline.actions.plays import build_plays
from pipeline.actions.plays.base import Play, Rearm, Timers, new_purchase
from pipeline.actions.policy import Deferred, HeldOut, Policy, Suppressed
from pipeline.actions.rules import RulesFile
from pipeline.identity.protocol import LOCK_TIMER, IdentityProtocol, Message, Outbox, is_tombstone
from pipeline.identity.resolve import routing_key
from pipeline.identity.rules import identity_rules
from pipeline.ingest.validate import CleanEvent, Rejection, Validator
from pipeline.measure import ledger
from pipeline.measure.touches import attribute, record_outcome
from pipeline.ops.topics import HOLDOUTS, OUTCOMES, PRIVACY_REQUESTS
from pipeline.profiles.product import ONLINE, PRODUCT_OPS, product_step
from pipeline.profiles.profile import ProfileLimits, apply_event, seen_before
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Tallies:
    """Counts gathered per batch and handed to Prometheus in one go."""

    events_in: Counter = field(default_factory=Counter)
    deadletter: Counter = field(default_factory=Counter)
    identifiers_dropped: Counter = field(default_factory=Counter)
    processed: Counter = field(default_factory=Counter)
    duplicates: int = 0
    fenced: int = 0  # actions decided again after a crash, already sent before it
    actions: Counter = field(default_factory=Counter)
    suppressed: Counter = field(default_factory=Counter)
    outcomes_unmatched: int = 0
    timer_errors: Counter = field(default_factory=Counter)
    trimmed: Counter = field(default_factory=Counter)  # what a profile's bounds dropped: cart, stores, purchases...


class Processor:
    def __init__(self, settings: Settings, catalogue: Catalogue) -> None:
        self.settings = settings
        self.validate = Validator(settings)
        self.limits = ProfileLimits(
            dedup_window=settings.dedup_window,
            purchases_kept=settings.purchases_kept,
            views_kept=settings.views_kept,
            cart_kept=settings.cart_kept,
            stores_kept=settings.stores_kept,
        )
        self.catalogue = catalogue
        self.rules = RulesFile(settings.rules_file)
        self._use_rules()
        self.identity = IdentityProtocol(
            identity_rules(settings), self.limits, self._apply_to_profile, self._notice, settings.erasure_salt,
            lock_timeout=settings.merge_lock_timeout_s, queue_limit=settings.merge_queue_limit,
            tombstone_keep=settings.tombstone_state_keep_s,
        )
        self.tally = Tallies()
        self.applied = 0  # events applied to state so far: the engine times each record that raised it

    def _use_rules(self) -> None:
        self.plays: dict[str, Play] = build_plays(self.rules.catalogue, self.catalogue)
        self.policy = Policy(self.rules.catalogue.defaults, self.limits.actions_kept)
        # Dispatch by event type, built once per catalogue: most events concern one play or none.
        self.by_trigger: dict[str, list[Play]] = {}
        for play in self.plays.values():
            for etype in play.triggers | {f"notice:{n}" for n in play.notices}:
                self.by_trigger.setdefault(etype, []).append(play)

    def reload_rules(self) -> bool:
        """Pick up a changed rules file (a rule switched off, a window changed) without a restart."""
        if self.rules.reload_if_changed():
            self._use_rules()
            return True
        return False

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

    def ingest_outcome(self, value: bytes | None, now: float) -> tuple[str, Message] | Rejection:
        """A sender's report from ``outcomes``: routed to the action's customer, like an event to its profile."""
        result = self.validate.outcome(value, now)
        if isinstance(result, Rejection):
            self.tally.deadletter[(result.reason, OUTCOMES)] += 1
            return result
        self.tally.events_in[("outcomes", result["outcome"])] += 1
        return result["customer"], {"op": "notice", "about": "outcome", "report": result}

    def ingest_erasure(self, value: bytes | None, now: float) -> tuple[str, Message] | Rejection:
        """A person's erasure request: to the identifier it names, which passes it to its profile."""
        result = self.validate.erasure(value)
        if isinstance(result, Rejection):
            self.tally.deadletter[(result.reason, PRIVACY_REQUESTS)] += 1
            return result
        key, request = result
        self.tally.events_in[("privacy", "erasure_request")] += 1
        return key, {"op": "erase", "request_id": request["request_id"], "subject": key, "at": now}

    # --- step 2: apply to state ------------------------------------------------------

    def handle(self, state: PartitionState, target: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        """One message for an actor: a product (stock, interest in it) or the identity graph and its profiles."""
        if msg["op"] in PRODUCT_OPS:
            result = product_step(state, target, msg, out, self.settings.max_waiting_per_product)
            if result == "stock":
                self.applied += 1
                self.tally.processed[msg["event"]["type"]] += 1
            elif result == "waiting_full":
                self.tally.suppressed[("back_in_stock", "waiting_list_full")] += 1
        else:
            self.identity.handle(state, target, msg, now, out, merges)

    def _apply_to_profile(self, state: PartitionState, pid: str, profile: dict[str, Any], event: dict[str, Any], out: Outbox) -> bool:
        if seen_before(profile, event["event_id"], self.limits):
            self.tally.duplicates += 1
            for play in self.by_trigger.get(event["type"], ()):
                play.send_again(profile, event, out)  # what a torn checkpoint may have lost (Play.send_again)
            return False
        self.applied += 1
        apply_event(profile, event, self.limits, self.tally.trimmed)
        if event["type"] == "purchase" and "touches" in profile:
            self._attribute(state, profile, event)
        plays = self.by_trigger.get(event["type"])
        if plays:
            timers = Timers(state, pid, profile)
            for play in plays:
                play.on_event(profile, event, timers, out)
        self.tally.processed[event["type"]] += 1
        return True

    def _notice(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message) -> None:
        if msg["about"] == "waiting":  # on a sold-out product's waiting list: erasure will take us off it
            waiting_on = profile.setdefault("waiting_on", [])
            if msg["sku"] not in waiting_on:
                waiting_on.append(msg["sku"])
            return
        if msg["about"] == "back_in_stock" and ONLINE in msg["where"] and msg["sku"] in profile.get("waiting_on", ()):
            profile["waiting_on"].remove(msg["sku"])  # back online: the product has cleared its list
        if msg["about"] == "outcome":
            outcome = record_outcome(profile, msg["report"])
            if outcome is None:
                self.tally.outcomes_unmatched += 1
            else:
                ledger.count(state, outcome.rule, outcome.group, outcome.outcome)
            return
        for play in self.by_trigger.get(f"notice:{msg['about']}", ()):
            play.on_notice(profile, msg, Timers(state, pid, profile))

    def _attribute(self, state: PartitionState, profile: dict[str, Any], event: dict[str, Any]) -> None:
        purchase = new_purchase(profile, event)
        conversion = attribute(profile, purchase) if purchase is not None else None
        if conversion is not None:
            if conversion.first:
                ledger.count(state, conversion.rule, conversion.group, "conversions")
            ledger.count(state, conversion.rule, conversion.group, "revenue", conversion.revenue)

    # --- step 3: due timers become actions ------------------------------------------------

    def fire_due(self, state: PartitionState, now: float, sends: Outbox, merges: list[Message]) -> list[tuple[str, Action]]:
        """Due timers become actions: (logical topic, action) for each sent or held out.

        A profile's lock timer (``LOCK_TIMER``) is the identity protocol's: opening the lock adds
        protocol messages to ``sends`` (and records for ``identity.merges`` or ``privacy.audit``
        to ``merges``), which the caller delivers.
        """
        actions: list[tuple[str, Action]] = []
        for due, key, timer_id in state.due(now):
            if timer_id == LOCK_TIMER:
                sent, recorded = len(sends), len(merges)
                try:
                    self.identity.lock_due(state, key, due, now, sends, merges)
                except Exception:  # as for a play's timer: never a crash loop on one
                    log.exception("opening the lock of %s failed", key)
                    self.tally.timer_errors[LOCK_TIMER] += 1
                    del sends[sent:], merges[recorded:]  # half a step's outputs must not go out
                continue
            skey = key.encode()
            profile = state.txn.get(skey)
            timer = profile["timers"].get(timer_id) if profile and not is_tombstone(profile) else None
            if profile is None or timer is None or timer["due"] != due:
                continue  # cancelled, moved or merged away since it was indexed (its index entry went then)
            timers = Timers(state, key, profile)
            timers.cancel(timer_id)
            try:
                outcome = self._decide(profile, timer_id, timer, due, now, key)
            except Exception:  # a bug, or a rule the data breaks: never a crash loop on one timer
                log.exception("deciding timer %s of %s failed; the timer is dropped", timer_id, key)
                self.tally.timer_errors[timer["rule"]] += 1
                outcome = Suppressed(timer["rule"], "error")
            if isinstance(outcome, (Deferred, Rearm)):
                timers.set(timer_id, outcome.until, timer["rule"], **{k: v for k, v in timer.items() if k not in ("rule", "due")})
                if isinstance(outcome, Deferred):
                    self.tally.suppressed[(outcome.rule, "quiet_hours_deferred")] += 1
            elif isinstance(outcome, Suppressed):
                self.tally.suppressed[(outcome.rule, outcome.reason)] += 1
                ledger.count(state, outcome.rule, "suppressed", outcome.reason)
            else:
                action = outcome.action if isinstance(outcome, HeldOut) else outcome
                self.plays[action.rule].on_decided(profile, timer, action)
                held = isinstance(outcome, HeldOut)
                self._count_touch(state, action, "holdout" if held else "treated", "held" if held else "sent")
                if state.sent_before(action.action_id):
                    # Sent before a crash, after the checkpoint this state came from
                    # (pipeline.runtime.state.fence): recorded again, not sent again.
                    self.tally.fenced += 1
                elif held:
                    self.tally.suppressed[(action.rule, "holdout")] += 1
                    actions.append((HOLDOUTS, action))
                else:
                    self.tally.actions[(action.rule, action.channel)] += 1
                    actions.append((f"actions.{action.channel}", action))
            state.txn.set(skey, profile)
        return actions

    def _count_touch(self, state: PartitionState, action: Action, group: str, what: str) -> None:
        ledger.count(state, action.rule, group, what)
        if self.plays[action.rule].rule.attribution_window > 0:
            ledger.count(state, action.rule, group, "touches")

    def _decide(
        self, profile: dict[str, Any], timer_id: str, timer: dict[str, Any], due: float, now: float, pid: str
    ) -> Action | HeldOut | Suppressed | Deferred | Rearm:
        play = self.plays.get(timer["rule"])
        if play is None:
            return Suppressed(timer["rule"], "rule_disabled")  # switched off or removed since it was set
        draft = play.compose(profile, timer_id, timer, now)
        if isinstance(draft, str):
            return Suppressed(play.name, draft)
        if isinstance(draft, Rearm):
            return draft
        return self.policy.decide(play, profile, draft, due, now, timer.get("origin", pid))
