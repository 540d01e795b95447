"""Identity resolution across partitions: identifiers and profiles as actors.

Every identifier (``email:anna@example.dk``) and every profile has a key, and a key
lives in the state partition its name hashes to. An identifier's entry holds the id
of the profile that owns it; a profile holds its identifiers. Nothing reads another
partition's state: actors change only their own entry and send messages, which the
engine delivers through the repartition topic (or at once, when this worker owns
the target). A profile's id is its founding identifier, so a customer who is never
merged has identifier and profile in the same partition and costs no extra hop.

The protocol, one event at a time:

1. ``ev`` goes to the event's strongest identifier. Unowned, it founds a profile
   with its own name; either way the event goes on to the owner as ``apply``.
2. ``apply`` updates the profile and claims each identifier of the event the profile
   does not hold yet (``claim``), adding it at once so actions can use it.
3. An unowned identifier accepts the claim (``claimed``). One owned by another
   profile answers ``conflict``: the event links two profiles, and they merge.
4. Of two profiles the one with the smaller id (:func:`rules.order_key`) survives.
   It locks itself, so that it judges one merge at a time against the identifiers
   it really has, and asks the other to ``absorb`` into it. The other checks the
   limits on the union; if they hold it sends its whole state (``absorbed``) and
   becomes a tombstone pointing at the survivor, else it answers ``refused`` and the
   identifier that linked them is left out. The survivor unlocks and repoints every
   identifier of the merged profile to itself.
5. A lock has a bound (``OMNI_MERGE_LOCK_TIMEOUT_S``): a timer on the profile (deferred:
   in memory until a checkpoint finds the lock held, then in the partition's timer index
   like a play's) opens it if no answer came (one dead-lettered, or held up behind a backlog). The merge counts as refused (``lock_timeout``: the
   identifier that linked them is left out), the other side is told (``abandon``: a
   queued ``absorb`` is struck off, and a profile that had merged already sends its state
   again), and what waited runs. An answer that comes after that is still taken: an
   ``absorbed`` merges whenever it arrives (the sender is a tombstone forwarding to us,
   so refusing it would lose its state), a late ``unmerged`` finishes its split.

Erasure (a person's request, ``privacy.requests``): ``erase`` goes to the identifier
named in the request, which passes it to its profile as ``erase_profile``. The profile
unschedules its timers, tells each of its identifiers and merged profiles to ``forget``
it and each product it waits for to ``unwait`` it, deletes itself and reports to
``privacy.audit``. Every erased identifier leaves only a keyed hash behind
(``pipeline.privacy.erasure``), which stops a replay of old events founding it again.
An erasure never waits for a lock: see :meth:`IdentityProtocol._p_erase_profile` for
what becomes of the merge or split it interrupts.

Why it converges: a message for a tombstone is forwarded to its survivor, and
survivors only ever have smaller ids, so forwarding ends. A profile that is itself
merging defers an ``absorb`` until it is done; it waits only on larger ids, so no
two profiles wait on each other. Every message can arrive twice after a crash
(outputs are at-least-once): each handler recognises a repeat (events by id, merges
by the survivor's history, claims and repoints by the current owner).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.identity.rules import IdentityRules, order_key, split_id
from pipeline.privacy.erasure import audit_record, erased_at, mark_erased
from pipeline.profiles import census
from pipeline.profiles.merge import merge_profiles, unmerge_profiles
from pipeline.profiles.profile import ProfileLimits, new_profile
from pipeline.runtime.state.base import EXPIRY_PREFIX, IDENTIFIER_PREFIX
from pipeline.runtime.state.partition import PartitionState

ID_PREFIX = IDENTIFIER_PREFIX
IDENTIFIER_OPS = frozenset({"ev", "claim", "repoint", "release", "erase", "forget"})
# What a tombstone answers itself instead of forwarding to its survivor: about the merge it was part of.
TOMBSTONE_OPS = frozenset({"absorb", "unmerge", "abandon", "resend"})
# What a key holding no profile ignores, rather than founding one: nobody to tell.
IGNORED_IF_ABSENT = frozenset({"notice", "abandon", "resend"})
# The id, in the partition's timer index, of the timer that bounds a profile's lock: never a play's
# (their ids are rule names, or a rule name and a product).
LOCK_TIMER = "identity:lock"

Message = dict[str, Any]
Outbox = list[tuple[str, Message]]  # (key of the target actor, message)
ApplyEvent = Callable[[PartitionState, str, dict[str, Any], dict[str, Any], "Outbox"], bool]
Notice = Callable[[PartitionState, str, dict[str, Any], Message], None]


def id_key(identifier: str) -> bytes:
    return ID_PREFIX + identifier.encode()


def expiry_key(due: float, pid: str) -> bytes:
    """When merged profile ``pid`` drops its copy of the state: time first, so the store keeps them in order."""
    return EXPIRY_PREFIX + f"{int(due * 1000):015d}|{pid}".encode()


def is_tombstone(value: dict[str, Any] | None) -> bool:
    return value is not None and "merged_into" in value


def lineage(profile: dict[str, Any]) -> set[str]:
    """The ids of every profile merged into this one, directly or not."""
    return {m["profile"] for m in profile["merged"]}


@dataclass(slots=True)
class IdentityTally:
    merges: int = 0
    refused: Counter = field(default_factory=Counter)  # reason
    left_out: Counter = field(default_factory=Counter)  # (identifier type, reason)
    erasures: Counter = field(default_factory=Counter)  # result: erased, not_found, cascade
    erased_dropped: int = 0  # messages about erased people that arrived after them (a replay, a late answer)
    lock_timeouts: Counter = field(default_factory=Counter)  # kind of lock opened by its bound: merge, split, state
    late_answers: Counter = field(default_factory=Counter)  # op: answers taken after their lock had opened
    states_dropped: int = 0  # merged profiles' copies of their state dropped after OMNI_TOMBSTONE_STATE_KEEP_S
    trimmed: Counter = field(default_factory=Counter)  # what the bounds on a merged profile dropped: cart, stores...


class IdentityProtocol:
    def __init__(
        self, rules: IdentityRules, limits: ProfileLimits, apply_event: ApplyEvent, notice: Notice, salt: str,
        lock_timeout: float = 300.0, queue_limit: int = 100, tombstone_keep: float = 30 * 86_400.0,
    ) -> None:  # fmt: skip
        self.rules = rules
        self.salt = salt  # of the hashes that remember erased identifiers
        self.limits = limits
        self.lock_timeout = lock_timeout  # seconds a profile waits for a merge's answer before it gives up
        self.queue_limit = queue_limit  # what a locked profile keeps for later, at most
        self.tombstone_keep = tombstone_keep  # seconds a merged profile keeps a copy of the state it handed over
        self.apply_event = apply_event  # the profile's own business: False for a duplicate event
        self.notice = notice  # a message for the profile's rules from another actor (a product back in stock)
        self.tally = IdentityTally()
        # Dispatch by op, built once: a lookup per message, not a getattr of a formatted name.
        self._identifier_ops = {op: getattr(self, f"_id_{op}") for op in IDENTIFIER_OPS}
        self._profile_ops = {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("_p_")}

    def handle(self, state: PartitionState, target: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        """Run one message addressed to ``target``, an identifier or a profile in ``state``."""
        at_identifier = self._identifier_ops.get(msg["op"])
        if at_identifier is not None:
            at_identifier(state, target, msg, now, out, merges)
        else:
            self._at_profile(state, target, state.txn.get(target.encode()), msg, now, out, merges)

    def _at_profile(self, state: PartitionState, target: str, profile: dict[str, Any] | None, msg: Message, now: float,
                    out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        op = msg["op"]
        if profile is not None and "merged_into" in profile and op not in TOMBSTONE_OPS and "cascade" not in msg:
            # Merged away: the survivor answers for it. Marked with our id, so that it travels behind
            # our state through the topic and never overtakes it: an event applied to the survivor
            # before the state that already holds it arrives would count twice (and should the state
            # be lost on the way, the survivor holds it back until the state comes again: _hold).
            out.append((profile["merged_into"], {**msg, "forwarded": target}))
            if "kept_until" not in profile and "state" in profile:  # merged before copies had a retention
                self._keep_until(state, target, profile, now + self.tombstone_keep)
                state.txn.set(target.encode(), profile)
            return
        if profile is None:
            if op in IGNORED_IF_ABSENT:  # for a profile this partition does not hold: no reason to found one
                return
            if op == "unmerge":  # nothing to bring back: never create a second owner of its identifiers
                out.append((msg["survivor"], {"op": "unmerged", "loser": target, "state": None, "by": msg["by"]}))
                return
            if op == "erase_profile":  # erased already (a repeated request), or never held
                if "cascade" not in msg:  # (one that goes with another's erasure has that one's record)
                    self._audit(msg, None, {}, merges)
                return
            gone = erased_at(state, self.salt, target)
            if gone is not None and not (op == "apply" and msg["event"]["ts"] > gone):
                # An erased person: an event from before the erasure (a replay) must not found the
                # profile again, nor a late answer to one of its messages. An event after it is a
                # new start. A survivor waiting on us to be absorbed is told no, or it waits forever.
                self.tally.erased_dropped += 1
                if op == "absorb":
                    out.append((msg["into"], {"op": "refused", "loser": target, "reason": "erased", **_link(msg)}))
                elif op == "absorbed":  # it merged into us before it heard of the erasure: its state is the person's
                    out.append((msg["loser"], {"op": "erase_profile", "cascade": True, "at": gone}))
                elif op == "merge":  # its claimant holds an identifier that was ours, whose entry the erasure removed
                    out.append((msg["claimant"], {"op": "drop", **_link(msg)}))
                return
            # Its founding event may still be on its way (messages from different
            # partitions can overtake each other): it starts here and catches up.
            profile = new_profile(target)
            census.change(state, +1)
        elif "apart" not in profile and "merged_into" not in profile:  # written before identity resolution, or splits
            profile.update({"merged": [], "claims": [], "lock": None, "queue": [], **profile, "apart": []})
        origin = msg.get("forwarded")
        if origin is not None and op != "erase_profile" and _ahead_of_state(target, profile, origin):
            self._hold(state, target, profile, origin, msg, now, out, merges)
        else:
            self._profile_ops[op](state, target, profile, msg, now, out, merges)
        if "erased" in profile:
            state.txn.delete(target.encode())
        elif not is_tombstone(profile):
            state.txn.set(target.encode(), profile)

    # --- identifier actors ---------------------------------------------------------

    def _id_ev(self, state: PartitionState, ident: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        self.event_at_identifier(state, ident, ident.encode(), msg["event"], now, out, merges)

    def event_at_identifier(
        self, state: PartitionState, ident: str, key: bytes, event: dict[str, Any], now: float, out: Outbox, merges: list[Message]
    ) -> None:  # fmt: skip
        """``ev``: an event at its strongest identifier. The engine calls it directly for an event's first
        hop to a partition it owns (most events), without building the message."""
        profile = state.txn.get(key)
        if profile is not None and "merged_into" not in profile and "apart" in profile:
            # The common case, and the fast one: the profile this identifier founded is live, so
            # the identifier is still its own (only merging it away repoints it). Same key, same
            # partition: the event is applied here without reading the identifier's entry.
            self._apply(state, ident, profile, event, now, out)
            state.txn.set(key, profile)
            return
        apply = {"op": "apply", "event": event}
        entry = state.txn.get(id_key(ident))
        if entry is not None:
            out.append((entry[0], apply))
            return
        # No entry: a new customer, whose profile takes the identifier's name, or one whose
        # profile was merged away (its tombstone forwards). Same key, same partition: done here
        # and now, so that a claim of this identifier arriving next finds the profile that owns it.
        self._at_profile(state, ident, profile, apply, now, out, merges)

    def _id_claim(self, state: PartitionState, ident: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        claimant, trigger = msg["profile"], msg["trigger"]
        entry = owner_entry(state, ident)
        if entry is None and _before_erasure(msg.get("at"), erased_at(state, self.salt, ident)):
            # Claimed by an event from before this identifier's erasure (a replay): it stays erased.
            self.tally.erased_dropped += 1
            out.append((claimant, {"op": "erased_id", "id": ident}))
            return
        if entry is None or entry[0] == claimant:
            # Remember which claim made it ours: a release answering an older one must not undo it.
            state.txn.set(id_key(ident), [claimant, trigger])
            out.append((claimant, {"op": "claimed", "id": ident, "profile": claimant, "trigger": trigger}))
        else:
            out.append((claimant, {"op": "conflict", "id": ident, "owner": entry[0], "trigger": trigger}))

    def _id_repoint(self, state: PartitionState, ident: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        entry = owner_entry(state, ident)
        if entry is not None and entry[0] in msg["from"]:
            state.txn.set(id_key(ident), [msg["profile"], None])

    def _id_release(self, state: PartitionState, ident: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        entry = state.txn.get(id_key(ident))
        if entry is not None and entry[0] in msg["from"] and entry[1] == msg["trigger"]:
            state.txn.delete(id_key(ident))

    def _id_erase(self, state: PartitionState, ident: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        """A person's erasure request, by one of their identifiers: their profile erases itself."""
        mark_erased(state, self.salt, ident, msg["at"])
        entry = owner_entry(state, ident)
        if entry is None:
            self._audit(msg, None, {}, merges)
            return
        step = {**msg, "op": "erase_profile"}
        if entry[0] == ident:  # a founding identifier: its profile has its key, here
            self._at_profile(state, ident, state.txn.get(ident.encode()), step, now, out, merges)
        else:
            out.append((entry[0], step))

    def _id_forget(self, state: PartitionState, ident: str, msg: Message, now: float, out: Outbox, merges: list[Message]) -> None:
        """An erased profile's identifier (or merged profile): leave nothing of it but its hash."""
        mark_erased(state, self.salt, ident, msg["at"])
        entry = state.txn.get(id_key(ident))
        if entry is not None and entry[0] in msg["from"]:
            state.txn.delete(id_key(ident))
        merged = state.txn.get(ident.encode())
        if merged is not None and is_tombstone(merged) and merged["merged_into"] in msg["from"]:  # it holds a copy of the state it handed over
            state.txn.delete(ident.encode())
            self._forget_copy(ident, merged, msg["at"], out)
            _drop_expiry(state, ident, merged)

    @staticmethod
    def _forget_copy(pid: str, tomb: dict[str, Any], at: float, out: Outbox) -> None:
        """A merged profile is erased: what its copy of the state held is forgotten too.

        Usually its survivor took the state over, and its own erasure forgot all of it; these are
        repeats then. But the state may never have arrived (its answer lost, or the survivor
        erased first): its identifiers still point at the merged profile, or at what merged into
        it, and only it can name them. Only entries pointing there are forgotten (``from``).
        """
        taken = tomb.get("state")
        if taken is None:
            return
        former = [pid, *sorted(lineage(taken))]
        held = {f"{kind}:{value}" for kind, values in taken["identifiers"].items() for value in values}
        forget = {"op": "forget", "from": former, "at": at}
        for ident in sorted(held | set(taken["claims"]) | set(former)):
            if ident != pid:
                out.append((ident, forget))
        for sku in taken.get("waiting_on", ()):
            out.append((f"sku:{sku}", {"op": "unwait", "profiles": former}))

    # --- profile actors: events and claims -------------------------------------------

    def _p_apply(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                 out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        self._apply(state, pid, profile, msg["event"], now, out)

    def _apply(self, state: PartitionState, pid: str, profile: dict[str, Any], event: dict[str, Any], now: float,
               out: Outbox) -> None:  # fmt: skip
        if not self.apply_event(state, pid, profile, event, out):
            self._claim_again(pid, profile, event, out)
            return
        owned = profile["identifiers"]
        for kind, value in event["identifiers"].items():
            values = owned.get(kind)
            if values and values[-1] == value:
                continue  # the usual case: held, and the one used last time
            self._claim(state, pid, profile, f"{kind}:{value}", event["event_id"], now, out, event["ts"])

    def _claim_again(self, pid: str, profile: dict[str, Any], event: dict[str, Any], out: Outbox) -> None:
        """A duplicate event: claim again every identifier of it the profile holds.

        The first time, the claims may have run at once in this worker (``claim`` is a local
        op) and a crash may have landed the profile's part of the checkpoint but not the
        identifier's, which is written to another changelog partition. The replayed event is
        then a duplicate here, and without these claims the identifier would stay unowned:
        its next event would found a second profile for the same person, for good. A claim
        is idempotent (the owner answers ``claimed`` again, another owner ``conflict``, which
        merges as the first time would have), and duplicates are rare: replays and retries.
        """
        owned = profile["identifiers"]
        for kind, value in event["identifiers"].items():
            ident = f"{kind}:{value}"
            if ident == pid or value not in owned.get(kind, ()):
                continue  # the profile itself, or left out since (a refused merge): nothing to claim
            if ident not in profile["claims"]:
                profile["claims"].append(ident)  # so that a conflict is heard, not taken for a repeat
            out.append((ident, {"op": "claim", "profile": pid, "trigger": event["event_id"], "at": event["ts"]}))

    def _claim(self, state: PartitionState, pid: str, profile: dict[str, Any], ident: str, trigger: str, now: float,
               out: Outbox, at: float | None = None) -> None:  # fmt: skip
        kind, value = split_id(ident)
        owned = profile["identifiers"]
        values = owned.get(kind)
        if values and value in values:
            if values[-1] != value:  # most recently used last: channel choice takes the last
                values.remove(value)
                values.append(value)
            return
        if profile["lock"] is not None:
            # Mid-merge the limits are being judged on the identifiers we hold now.
            if not self._wait(state, pid, profile, {"op": "claim_later", "id": ident, "trigger": trigger, "at": at}, now):
                self.tally.left_out[(kind, "queue_full")] += 1
            return
        reason = self.rules.room_for(owned, kind)
        if reason is not None:
            self.tally.left_out[(kind, reason)] += 1
            return
        owned.setdefault(kind, []).append(value)  # at once: an action due now may need it
        profile["claims"].append(ident)
        out.append((ident, {"op": "claim", "profile": pid, "trigger": trigger, "at": at}))

    def _p_claim_later(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                       out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        self._claim(state, pid, profile, msg["id"], msg["trigger"], now, out, msg.get("at"))

    def _p_notice(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                  out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        self.notice(state, pid, profile, msg)

    def _p_claimed(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                   out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        ident = msg["id"]
        kind, value = split_id(ident)
        if ident in profile["claims"]:
            profile["claims"].remove(ident)
        elif value not in profile["identifiers"].get(kind, ()):
            # Dropped since this claim left (a repeat after a refused merge): it is ours now all
            # the same, so hold it if it fits, else give it back.
            if self.rules.room_for(profile["identifiers"], kind) is None:
                profile["identifiers"].setdefault(kind, []).append(value)
            else:
                out.append((ident, {"op": "release", "from": [pid, msg["profile"]], "trigger": msg["trigger"]}))
                return
        if msg["profile"] != pid:  # claimed by a profile merged into us since
            out.append((ident, {"op": "repoint", "profile": pid, "from": [msg["profile"]]}))

    def _p_conflict(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                    out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        ident, owner = msg["id"], msg["owner"]
        if ident not in profile["claims"]:
            return  # a repeat
        profile["claims"].remove(ident)
        if owner == pid or owner in lineage(profile):
            out.append((ident, {"op": "repoint", "profile": pid, "from": [owner]}))
            return
        link = {"via": ident, "owner": owner, "claimant": pid, "trigger": msg["trigger"]}
        self._merge(state, pid, profile, owner, link, now, out)

    def _p_erased_id(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                     out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """A claim refused because its identifier was erased before the event that claimed it."""
        kind, value = split_id(msg["id"])
        self._remove_identifiers(profile, {kind: [value]})
        if msg["id"] in profile["claims"]:
            profile["claims"].remove(msg["id"])

    # --- profile actors: erasure ----------------------------------------------------------

    def _p_erase_profile(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                         out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """Erase the profile now, even mid-merge: an erasure never waits for a lock.

        Waiting would hold a person's request for as long as the answer takes, and for good if
        it was lost. So a lock is released first, and the other side is dealt with so that
        nothing of the person survives it:

        * A merge in progress (we asked ``lock["profile"]`` to ``absorb`` into us) is given up as
          on a timeout (``abandon``; its claimant gives up the identifier). If the other side
          had already judged the merge and become our tombstone, its state is the person's too:
          the ``abandon`` erases that tombstone and everything it held, and so does its
          ``absorbed`` if that was still in flight and finds us erased (``cascade``). If it had
          not judged the merge yet (the ``absorb`` waits in its queue, or was lost), it stays a
          profile of its own: nothing had linked it to the person but a request it never
          answered.
        * A split in progress had not given the profile being split off back yet: it is the
          person's as much as the rest, and is erased with us (``cascade``, behind the
          ``unmerge`` on the same link, so it is erased as it comes back to life; a second
          ``privacy.audit`` record, of the same request, says so).
        * An erasure of a tombstone (``cascade``) deletes it, and what its state held that no
          survivor took over: its identifiers, its merged profiles, its places on waiting lists.
        """
        if is_tombstone(profile):  # only a cascade reaches a tombstone: the others are forwarded
            self._erase_tombstone(state, pid, profile, msg, out, merges)
            return
        lock = profile["lock"]
        if lock is not None:
            self._unlock(state, pid, profile)
            if lock["via"] == "split":
                out.append((lock["profile"], {**msg, "cascade": True}))
            elif lock["via"] == "state":  # merged into us already, its state never came: the person's
                out.append((lock["profile"], {"op": "abandon", "into": pid, "via": "state", "erased": msg["at"]}))
            else:
                self._give_up(pid, profile, lock, "erased", out, msg["at"])
        self._erase(state, pid, profile, msg, out, merges)

    def _erase(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, out: Outbox, merges: list[Message]) -> None:
        """Remove the profile and tell everything that knows it to forget it."""
        at = msg["at"]
        former = [pid, *sorted(lineage(profile))]
        held = {f"{kind}:{value}" for kind, values in profile["identifiers"].items() for value in values}
        identifiers = sorted(held | set(former) | set(profile["claims"]))
        for timer_id, timer in profile["timers"].items():
            state.unschedule(timer["due"], pid, timer_id)
        forget = {"op": "forget", "from": former, "at": at}
        for ident in identifiers:
            if ident == pid:  # same key, same partition: at once
                self._id_forget(state, ident, forget, at, out, merges)
            else:
                out.append((ident, forget))
        waiting_on = profile.get("waiting_on", [])
        for sku in waiting_on:
            out.append((f"sku:{sku}", {"op": "unwait", "profiles": former}))
        for waited in profile["queue"]:
            if waited["op"] == "absorb":  # a survivor waits for our answer
                out.append((waited["into"], {"op": "refused", "loser": pid, "reason": "erased", **_link(waited)}))
            elif waited["op"] == "merge" and waited["claimant"] != pid:  # its claimant holds an identifier of ours
                out.append((waited["claimant"], {"op": "drop", **_link(waited)}))
        removed = {
            "profiles": 1, "merged_profiles": len(former) - 1, "identifiers": len(held), "timers": len(profile["timers"]),
            "offers": len(profile["actions"]), "purchases": len(profile["purchases"]), "waiting_lists": len(waiting_on),
        }  # fmt: skip
        census.change(state, -1)
        profile.clear()
        profile["erased"] = True  # deleted by the caller, which would otherwise write it back
        if "request_id" in msg:  # (an erasure that follows another's, for a merge partner, has none)
            self._audit(msg, pid, removed, merges)
        else:
            self.tally.erasures["cascade"] += 1

    def _erase_tombstone(self, state: PartitionState, pid: str, tomb: dict[str, Any], msg: Message, out: Outbox,
                         merges: list[Message]) -> None:  # fmt: skip
        """A merged profile whose survivor was erased: forget what its copy of the state held, then itself."""
        self._id_forget(state, pid, {"op": "forget", "from": [pid], "at": msg["at"]}, msg["at"], out, merges)
        self._forget_copy(pid, tomb, msg["at"], out)
        _drop_expiry(state, pid, tomb)
        self.tally.erasures["cascade"] += 1
        tomb.clear()
        tomb["erased"] = True  # deleted by the caller

    def _audit(self, msg: Message, found: str | None, removed: dict[str, int], merges: list[Message]) -> None:
        self.tally.erasures["erased" if found is not None else "not_found"] += 1
        merges.append(audit_record(msg, self.salt, found, removed, msg["at"]))

    def _p_drop(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        self._drop(pid, profile, msg)

    def _drop(self, pid: str, profile: dict[str, Any], link: Message) -> None:
        """A refused merge: the claimant gives up the identifier that linked the two."""
        if link["owner"] == pid or link["owner"] in lineage(profile):
            return  # it is ours after all (we absorbed its owner meanwhile)
        kind, value = split_id(link["via"])
        values = profile["identifiers"].get(kind, [])
        if value in values:
            values.remove(value)
            if not values:
                del profile["identifiers"][kind]
        if link["via"] in profile["claims"]:
            profile["claims"].remove(link["via"])

    # --- profile actors: merges ----------------------------------------------------------

    def _p_merge(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                 out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        self._merge(state, pid, profile, msg["loser"], _link(msg), now, out)

    def _merge(self, state: PartitionState, pid: str, profile: dict[str, Any], other: str, link: Message, now: float,
               out: Outbox) -> None:  # fmt: skip
        """Start merging ``other`` into us, or ask it to take us, whichever id survives."""
        if other == pid or other in lineage(profile):
            return
        if order_key(other) < order_key(pid):
            out.append((other, {"op": "merge", "loser": pid, **link}))
            return
        if profile["lock"] is not None:
            # Another identifier linking the same pair is a merge of its own: if the first is
            # refused, this one must be judged (and its identifier dropped) too.
            request = {"op": "merge", "loser": other, **link}
            if not _is_lock(profile["lock"], other, link["via"]) and request not in profile["queue"]:
                if not self._wait(state, pid, profile, request, now):
                    self._refuse(pid, profile, "queue_full", link, out)
            return
        if _link_gone(pid, profile, link):
            # The identifier that linked us was ours when the claim found it, and has left since (split
            # off while this merge waited): no link any more. Its claimant gives it up, as when refused;
            # an event naming both again claims it again, from whoever holds it now.
            self._refuse(pid, profile, "moved", link, out)
            return
        if len(profile["merged"]) >= self.rules.max_merges:
            self._refuse(pid, profile, "merge_cap", link, out)
            return
        if other in profile["apart"]:
            self._refuse(pid, profile, "split", link, out)  # an operator split these two: never again
            return
        self._lock(state, pid, profile, {"profile": other, **link}, now)
        out.append((other, {
            "op": "absorb", "into": pid, "identifiers": profile["identifiers"], "merges": len(profile["merged"]),
            "apart": profile["apart"], "lineage": sorted(lineage(profile)), **link,
        }))  # fmt: skip

    def _p_absorb(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                  out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        self._absorb(state, pid, profile, msg, now, out)

    def _absorb(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float, out: Outbox) -> None:
        survivor, link = msg["into"], _link(msg)
        if is_tombstone(profile):
            if profile["merged_into"] != survivor:
                out.append((survivor, {"op": "redirect", "loser": pid, "now_in": profile["merged_into"], **link}))
            elif "state" in profile:  # a repeat: the survivor may have lost our state in a crash
                out.append((survivor, {"op": "absorbed", "loser": pid, "state": profile["state"], **link}))
            else:  # a repeat from long ago (the survivor took the state then): nothing to send now
                out.append((survivor, {"op": "refused", "loser": pid, "reason": "state_expired", **link}))
            return
        if profile["lock"] is not None:  # we are absorbing someone ourselves: after that
            if not self._wait(state, pid, profile, msg, now):
                if link["claimant"] == pid:
                    self._drop(pid, profile, link)
                out.append((survivor, {"op": "refused", "loser": pid, "reason": "queue_full", **link}))
            return
        reason = "moved" if _link_gone(pid, profile, link) else self.rules.merge_breaks(msg["identifiers"], profile["identifiers"])
        if reason is None and msg["merges"] + len(profile["merged"]) + 1 > self.rules.max_merges:
            reason = "merge_cap"
        if reason is None and _kept_apart(pid, profile, survivor, msg):
            reason = "split"
        if reason is not None:
            if link["claimant"] == pid:
                self._drop(pid, profile, link)
            out.append((survivor, {"op": "refused", "loser": pid, "reason": reason, **link}))
            return
        for timer_id, timer in profile["timers"].items():
            state.unschedule(timer["due"], pid, timer_id)  # they move to the survivor
        waiting, profile["queue"] = profile["queue"], []
        transferred = copy.deepcopy(profile)
        profile.clear()
        profile.update({"merged_into": survivor, "state": transferred, "link": link})
        self._keep_until(state, pid, profile, now + self.tombstone_keep)
        census.change(state, -1)
        state.txn.set(pid.encode(), profile)
        out.append((survivor, {"op": "absorbed", "loser": pid, "state": transferred, **link}))
        for waited in waiting:
            if waited["op"] == "absorb":  # another survivor wanted us: tell it where we went
                self._absorb(state, pid, profile, waited, now, out)
            else:  # our own business, now the survivor's
                out.append((survivor, {**waited, "forwarded": pid}))

    def _p_absorbed(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                    out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        loser, taken = msg["loser"], msg["state"]
        if loser in lineage(profile):
            return  # a repeat
        # The identifier that linked us was ours, and left (split off) after the other side judged the
        # merge: its state still holds it, as the claimant, and must not bring it back.
        moved = _link_gone(pid, profile, msg)
        moved_timers = [(tid, t) for tid, t in taken["timers"].items() if tid not in profile["timers"]]
        merge_profiles(profile, taken, self.limits, self.tally.trimmed)
        if moved:
            self._remove_identifiers(profile, {split_id(msg["via"])[0]: [split_id(msg["via"])[1]]})
            self._count_refusal("moved", msg["via"])
        for timer_id, timer in moved_timers:
            state.schedule(timer["due"], pid, timer_id)
        profile["claims"].extend(c for c in taken["claims"] if c not in profile["claims"])
        profile["apart"].extend(a for a in taken.get("apart", ()) if a not in profile["apart"])
        profile["merged"].extend(taken["merged"])
        profile["merged"].append({
            "profile": loser, "via": msg["via"], "trigger": msg["trigger"], "at": now, "identifiers": taken["identifiers"],
        })  # fmt: skip
        former = [loser, *(m["profile"] for m in taken["merged"])]
        for kind, values in taken["identifiers"].items():
            for value in values:
                out.append((f"{kind}:{value}", {"op": "repoint", "profile": pid, "from": former}))
        merges.append({"survivor": pid, "merged": loser, "identifiers": taken["identifiers"], "trigger_event_id": msg["trigger"]})
        self.tally.merges += 1
        if _locked_on(profile) == loser:
            self._unlock(state, pid, profile)
            self._drain(state, pid, profile, now, out, merges)
        else:  # our lock had opened (its bound, an erasure's abandon), or a repeated absorb was judged anew
            self.tally.late_answers["absorbed"] += 1

    def _p_refused(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                   out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        if not _is_lock(profile["lock"], msg["loser"], msg["via"]):
            return  # a repeat, or late: our lock's bound gave up on it and left the identifier out already
        self._unlock(state, pid, profile)
        self._count_refusal(msg["reason"], msg["via"])
        if msg["claimant"] == pid:
            self._drop(pid, profile, msg)
        self._drain(state, pid, profile, now, out, merges)

    def _p_redirect(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                    out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        if not _is_lock(profile["lock"], msg["loser"], msg["via"]):
            return  # a repeat, or late (as for refused)
        self._unlock(state, pid, profile)  # the profile we wanted was merged elsewhere: merge with where it went
        self._merge(state, pid, profile, msg["now_in"], _link(msg), now, out)
        self._drain(state, pid, profile, now, out, merges)

    # --- merged profiles' copies of their state --------------------------------------------

    @staticmethod
    def _keep_until(state: PartitionState, pid: str, tomb: dict[str, Any], due: float) -> None:
        tomb["kept_until"] = due
        state.txn.set(expiry_key(due, pid), 0)

    def sweep_tombstones(self, state: PartitionState, now: float, limit: int) -> int:
        """Drop the copies of their state that merged profiles have kept past ``OMNI_TOMBSTONE_STATE_KEEP_S``.

        The pointer to the survivor stays: messages for the merged profile's id still find their way.
        What the copy served (a repeated ``absorb``, an operator's split) is over by then; a split
        asked for later says so (``refused["split_expired"]``). Reads the expiry index in the store
        (written at checkpoints: due entries are always there) in time order, up to ``limit`` entries
        due by ``now``, so the cost is in what expires, never in what is kept. Returns entries done.
        """
        done = 0
        for key, _raw in state.store.items(EXPIRY_PREFIX):
            due_ms, _, pid = key[len(EXPIRY_PREFIX) :].partition(b"|")
            if int(due_ms) > now * 1000 or done >= limit:
                break
            if state.txn.get(key) is None:
                continue  # swept since the last checkpoint, or the profile went (a split, an erasure)
            state.txn.delete(key)
            done += 1
            tomb: dict[str, Any] | None = state.txn.get(pid)
            if tomb is not None and is_tombstone(tomb) and "kept_until" in tomb and expiry_key(tomb["kept_until"], pid.decode()) == key:
                del tomb["state"]
                tomb.pop("link", None)
                tomb.pop("kept_until")
                state.txn.set(pid, tomb)
                self.tally.states_dropped += 1
        return done

    # --- locks and their bound ---------------------------------------------------------------

    def _lock(self, state: PartitionState, pid: str, profile: dict[str, Any], lock: dict[str, Any], now: float) -> None:
        """Wait for one answer (a merge's, a split's), with its bound: a timer in the partition's index."""
        profile["lock"] = lock
        self._bound(state, pid, lock, now)

    def _bound(self, state: PartitionState, pid: str, lock: dict[str, Any], now: float) -> None:
        lock["due"] = now + self.lock_timeout
        state.schedule(lock["due"], pid, LOCK_TIMER, deferred=True)  # nearly always cancelled within milliseconds

    @staticmethod
    def _unlock(state: PartitionState, pid: str, profile: dict[str, Any]) -> None:
        lock = profile["lock"]
        profile["lock"] = None
        if lock is not None and "due" in lock:
            state.unschedule(lock["due"], pid, LOCK_TIMER)

    def _wait(self, state: PartitionState, pid: str, profile: dict[str, Any], item: Message, now: float) -> bool:
        """Keep ``item`` until the lock opens; False when the queue is full and the caller must turn it away.

        Turned away: a claim leaves its identifier out, a merge or an ``absorb`` is refused, a split is
        dropped (``reason="queue_full"``; the operator asks again), and a message held for a merged
        profile's state runs at once. An erasure never waits, so it is never turned away.
        """
        queue = profile["queue"]
        if len(queue) >= self.queue_limit:
            return False
        queue.append(item)
        lock = profile["lock"]
        if "due" not in lock:  # taken before locks had a bound: it gets one now
            self._bound(state, pid, lock, now)
        return True

    def _give_up(self, pid: str, profile: dict[str, Any], lock: dict[str, Any], reason: str, out: Outbox,
                 erased: float | None = None) -> None:  # fmt: skip
        """Stop waiting for the answer to our ``absorb``: the merge counts as refused, and the other side is told
        (and, when we are being erased, when: see :meth:`_p_abandon`)."""
        link = {"via": lock["via"], "owner": lock.get("owner"), "claimant": lock.get("claimant"), "trigger": lock.get("trigger")}
        self._refuse(pid, profile, reason, link, out)
        abandon = {"op": "abandon", "into": pid, **link}
        if erased is not None:
            abandon["erased"] = erased
        out.append((lock["profile"], abandon))

    def _hold(self, state: PartitionState, pid: str, profile: dict[str, Any], origin: str, msg: Message, now: float,
              out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """A message ``origin`` forwarded to us as our tombstone, come before its state.

        The state travels ahead of everything its tombstone forwards, on the same link: so it was
        lost (a dead letter), and what the message does must wait for it, or an event already in
        that state would count twice, a ``drop`` would miss the identifier the state brings, a
        claim's answer would find no claim. It waits in the queue, and the state is asked for
        again (``resend``), under a lock with the usual bound: if the state never comes, what
        waited runs all the same when the lock opens.
        """
        if profile["lock"] is None or profile["lock"]["profile"] == origin:
            self._await_state(state, pid, profile, origin, now, out)
        if not self._wait(state, pid, profile, msg, now):
            self._profile_ops[msg["op"]](state, pid, profile, msg, now, out, merges)  # no room to wait: as before

    def _await_state(self, state: PartitionState, pid: str, profile: dict[str, Any], origin: str, now: float,
                     out: Outbox) -> None:  # fmt: skip
        lock = profile["lock"]
        if lock is None:
            self._lock(state, pid, profile, {"profile": origin, "via": "state", "resent": True}, now)
        elif lock.get("resent"):
            return  # asked once for this lock
        else:  # the merge we wait on: its answer was lost, and the next may be too
            lock["resent"] = True
        out.append((origin, {"op": "resend", "into": pid}))

    def _p_resend(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                  out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """Our survivor never had our state (see _hold): send it again, as for a repeated ``absorb``."""
        if is_tombstone(profile) and profile["merged_into"] == msg["into"] and "state" in profile:
            link = profile.get("link") or {"via": "state", "owner": pid, "claimant": None, "trigger": None}
            out.append((msg["into"], {"op": "absorbed", "loser": pid, "state": profile["state"], **link}))

    def lock_due(self, state: PartitionState, pid: str, due: float, now: float, out: Outbox, merges: list[Message]) -> None:
        """The timer bounding ``pid``'s lock came due (the engine's timer loop calls this)."""
        profile = state.txn.get(pid.encode())
        if profile is None or is_tombstone(profile) or profile.get("lock") is None or profile["lock"].get("due") != due:
            return  # opened in time (its index entry went then), or locked again since: that lock has its own timer
        self._at_profile(state, pid, profile, {"op": "lock_expired", "due": due}, now, out, merges)

    def _p_lock_expired(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                        out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """No answer within the bound: open the lock as if refused, and run what waited.

        For a merge, the identifier that linked the two is left out (``reason="lock_timeout"``)
        and the profile we asked is told to ``abandon``. For a split, the profile keeps what it
        has and asks once more; the answer, to either request, completes the split when it comes
        (:meth:`_p_unmerged`). For a merged profile's state (:meth:`_hold`), what it forwarded runs.
        """
        lock = profile["lock"]
        if lock is None or lock.get("due") != msg["due"]:
            return
        self._unlock(state, pid, profile)
        if lock["via"] == "split":  # asked once more, without waiting: whatever answers comes late (_p_unmerged)
            self.tally.lock_timeouts["split"] += 1
            out.append((lock["profile"], _unmerge_request(pid, profile, lock.get("by", "lock_timeout"))))
        elif lock["via"] == "state":  # what its tombstone forwarded runs without it: its state is lost
            self.tally.lock_timeouts["state"] += 1
            for waited in profile["queue"]:
                if waited.get("forwarded") == lock["profile"]:
                    waited["forwarded"] = True
        else:
            self.tally.lock_timeouts["merge"] += 1
            self._give_up(pid, profile, lock, "lock_timeout", out)
        self._drain(state, pid, profile, now, out, merges)

    def _p_abandon(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                   out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """The survivor stopped waiting for our answer to its ``absorb`` (its lock's bound, or its erasure).

        It comes behind the ``absorb`` on the same link. Still queued here, the absorb is struck
        off: we were never judged against it, and nobody waits for its answer. Merged into that
        survivor already, we send our state again: the first ``absorbed`` may be the answer that
        was lost (a dead letter), and the survivor takes it whenever it comes, once. Unless the
        survivor is being erased (``erased``): then our state is the person's, and goes with it.
        """
        survivor = msg["into"]
        if is_tombstone(profile):
            if profile["merged_into"] != survivor:
                return
            if "erased" in msg:
                self._erase_tombstone(state, pid, profile, {"at": msg["erased"]}, out, merges)
            elif "state" in profile:
                out.append((survivor, {"op": "absorbed", "loser": pid, "state": profile["state"], **_link(msg)}))
            return
        queue = profile["queue"]
        if queue:
            profile["queue"] = [w for w in queue if not (w["op"] == "absorb" and w["into"] == survivor and w["via"] == msg["via"])]

    # --- splitting a wrong merge (an operator's command) ----------------------------------------

    def _p_split(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                 out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """Undo the merge that brought ``msg["identifier"]`` in; if none did, detach the identifier alone."""
        ident = msg["identifier"]
        kind, value = split_id(ident)
        if value not in profile["identifiers"].get(kind, ()) or ident == pid:  # its founding one is the profile itself
            self.tally.refused["split_unknown_identifier"] += 1
            return
        if profile["lock"] is not None:  # after the merge in progress
            if not self._wait(state, pid, profile, msg, now):
                self.tally.refused["split_queue_full"] += 1
            return
        # The outermost merge that carried it (the last in the history holding it): the profile
        # it came with, and everything that profile had absorbed before, leave together.
        record = next((m for m in reversed(profile["merged"]) if value in m["identifiers"].get(kind, ())), None)
        if record is None:  # ours from the start: it leaves alone, to a profile of its own
            self._remove_identifiers(profile, {kind: [value]})
            profile["apart"].append(ident)
            out.append((ident, {"op": "repoint", "profile": ident, "from": [pid, *lineage(profile)]}))
            out.append((ident, {"op": "detached", "from": pid}))
            merges.append({"split": True, "survivor": pid, "separated": ident, "identifiers": {kind: [value]}, "by": msg["by"]})
            return
        self._lock(state, pid, profile, {"profile": record["profile"], "via": "split", "by": msg["by"]}, now)
        out.append((record["profile"], _unmerge_request(pid, profile, msg["by"])))

    def _p_detached(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                    out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        if msg["from"] not in profile["apart"]:
            profile["apart"].append(msg["from"])

    def _p_unmerge(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                   out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """Come back to life as we were when merged, and take our identifiers back."""
        survivor = msg["survivor"]
        if not is_tombstone(profile):  # a repeat
            answer: Message = {"op": "unmerged", "loser": pid, "state": None, "by": msg["by"]}
            if survivor in profile["apart"]:  # back to life from it already: what it must let go, should it not know
                answer["revived"] = {"identifiers": profile["identifiers"], "lineage": sorted(lineage(profile))}
            out.append((survivor, answer))
            return
        if "state" not in profile:  # dropped after OMNI_TOMBSTONE_STATE_KEEP_S: nothing to come back as
            self.tally.refused["split_expired"] += 1
            out.append((survivor, {"op": "unmerged", "loser": pid, "state": None, "by": msg["by"], "expired": True}))
            return
        _drop_expiry(state, pid, profile)
        revived = copy.deepcopy(profile["state"])
        revived.update(claims=[], lock=None, queue=[])
        revived.setdefault("apart", []).append(survivor)
        if "timers" in msg:  # (a request from before timers carried their origin brings none)
            ours = {pid, *lineage(revived)}
            revived["timers"] = {tid: t for tid, t in msg["timers"].items() if t.get("origin") in ours}
        census.change(state, +1)
        profile.clear()
        profile.update(revived)
        for timer_id, timer in profile["timers"].items():
            state.schedule(timer["due"], pid, timer_id)
        for kind, values in profile["identifiers"].items():
            for value in values:
                out.append((f"{kind}:{value}", {"op": "repoint", "profile": pid, "from": msg["former"]}))
        out.append((survivor, {"op": "unmerged", "loser": pid, "state": profile, "by": msg["by"]}))

    def _p_unmerged(self, state: PartitionState, pid: str, profile: dict[str, Any], msg: Message, now: float,
                    out: Outbox, merges: list[Message]) -> None:  # fmt: skip
        """The split's answer: take back what the separated profile brought.

        ``state`` is the profile as it came back to life. Without it (the first answer lost, and
        this the answer to a repeat), ``revived`` names its identifiers and merged profiles: they
        leave, with its timers, so that no identifier has two owners and no action goes out twice,
        but its counts and orders cannot be told from ours any more and stay (``late_answers``
        counts ``unmerged_partial``).
        """
        loser, taken, revived = msg["loser"], msg["state"], msg.get("revived")
        if _is_lock(profile["lock"], loser, "split"):
            self._unlock(state, pid, profile)
        elif (taken is not None or revived is not None) and loser in lineage(profile):
            self.tally.late_answers["unmerged"] += 1  # our lock's bound had given up on it: the split is done now
        else:
            return  # a repeat
        if taken is None and revived is not None and loser in lineage(profile):
            gone = {loser, *revived["lineage"]}
            for timer_id, timer in list(profile["timers"].items()):
                if timer.get("origin") in gone:
                    del profile["timers"][timer_id]
                    state.unschedule(timer["due"], pid, timer_id)
            self._remove_identifiers(profile, revived["identifiers"])
            profile["merged"] = [m for m in profile["merged"] if m["profile"] not in gone]
            merges.append({"split": True, "survivor": pid, "separated": loser, "identifiers": revived["identifiers"], "by": msg["by"]})
            self.tally.late_answers["unmerged_partial"] += 1
        if taken is not None:
            for timer_id in taken["timers"]:
                timer = profile["timers"].pop(timer_id, None)
                if timer is not None:
                    state.unschedule(timer["due"], pid, timer_id)  # where it is due here, which may have moved
            unmerge_profiles(profile, taken)
            self._remove_identifiers(profile, taken["identifiers"])
            gone = {loser, *(m["profile"] for m in taken["merged"])}
            profile["merged"] = [m for m in profile["merged"] if m["profile"] not in gone]
            merges.append({"split": True, "survivor": pid, "separated": loser, "identifiers": taken["identifiers"], "by": msg["by"]})
        if loser not in profile["apart"]:
            profile["apart"].append(loser)
        self._drain(state, pid, profile, now, out, merges)

    @staticmethod
    def _remove_identifiers(profile: dict[str, Any], identifiers: dict[str, list[str]]) -> None:
        for kind, values in identifiers.items():
            mine = profile["identifiers"].get(kind, [])
            for value in values:
                if value in mine and profile["id"] != f"{kind}:{value}":  # the founding identifier stays
                    mine.remove(value)
            if not mine:
                profile["identifiers"].pop(kind, None)

    def _refuse(self, pid: str, profile: dict[str, Any], reason: str, link: Message, out: Outbox) -> None:
        self._count_refusal(reason, link["via"])
        if link["claimant"] == pid:
            self._drop(pid, profile, link)
        elif link["claimant"] is not None:  # (unknown for a lock taken before locks kept their link)
            out.append((link["claimant"], {"op": "drop", **link}))

    def _count_refusal(self, reason: str, via: str) -> None:
        self.tally.refused[reason] += 1
        self.tally.left_out[(split_id(via)[0], reason)] += 1

    def _drain(self, state: PartitionState, pid: str, profile: dict[str, Any], now: float, out: Outbox,
               merges: list[Message]) -> None:  # fmt: skip
        """Unlocked: run what waited for the merge, until one of them locks us again."""
        queue = profile["queue"]
        while queue and not is_tombstone(profile) and profile["lock"] is None:
            msg = queue.pop(0)
            if msg["op"] == "erase_profile":  # _erase answers what waits behind it
                self._erase(state, pid, profile, msg, out, merges)
                return
            if msg["op"] == "claim_later":
                self._claim(state, pid, profile, msg["id"], msg["trigger"], now, out, msg.get("at"))
            elif msg["op"] == "merge":
                self._merge(state, pid, profile, msg["loser"], _link(msg), now, out)
            elif msg["op"] == "split":
                self._p_split(state, pid, profile, msg, now, out, merges)
            elif msg["op"] == "absorb":  # if it succeeds, the rest of the queue goes to the survivor with us
                self._absorb(state, pid, profile, msg, now, out)
            else:  # held back (_hold): forwarded by a merged profile ahead of its state
                origin = msg.get("forwarded")
                if origin is not None and _ahead_of_state(pid, profile, origin):
                    queue.insert(0, msg)  # still without it: wait for it again, in order
                    self._await_state(state, pid, profile, origin, now, out)
                else:
                    self._profile_ops[msg["op"]](state, pid, profile, msg, now, out, merges)


def _drop_expiry(state: PartitionState, pid: str, tomb: dict[str, Any]) -> None:
    """A tombstone goes (erased) or comes back to life (split): its entry in the expiry index goes too."""
    if "kept_until" in tomb:
        state.txn.delete(expiry_key(tomb["kept_until"], pid))


def _before_erasure(event_at: float | None, erased: float | None) -> bool:
    return erased is not None and event_at is not None and event_at <= erased


def owner_entry(state: PartitionState, ident: str) -> list[Any] | None:
    """An identifier's owner, as ``[profile id, the claim that made it so]``, or None when unowned.

    An identifier that founded a profile has no entry of its own: the profile of the same
    name (same key, same partition) is its owner until a merge repoints it. A million
    customers then cost a million keys fewer, and their first events a write less.
    """
    entry = state.txn.get(id_key(ident))
    if entry is None and state.txn.get(ident.encode()) is not None:
        return [ident, None]
    return entry  # type: ignore[no-any-return]


def _kept_apart(pid: str, profile: dict[str, Any], survivor: str, msg: Message) -> bool:
    """True when an operator split either side from the other (or from anything merged into it)."""
    ours, theirs = {pid, *lineage(profile)}, {survivor, *msg["lineage"]}
    return bool(ours & set(msg["apart"]) or theirs & set(profile["apart"]))


def _unmerge_request(pid: str, profile: dict[str, Any], by: str) -> Message:
    # The timers still pending here, with the profile each was set for: the one leaving takes back
    # those of its own, as they are now (moved, or already fired and gone), not as they were.
    pending = {tid: t for tid, t in profile["timers"].items() if t.get("origin", pid) != pid}
    return {"op": "unmerge", "survivor": pid, "former": [pid, *lineage(profile)], "by": by, "timers": pending}


def _ahead_of_state(pid: str, profile: dict[str, Any], origin: Any) -> bool:
    """True when ``origin`` (a message's ``forwarded``) merged into us and we never took its state.

    ``True`` is a mark from before forwarded messages named their sender; a profile split from
    us is in ``apart`` and its late messages are ours as they always were.
    """
    return origin is not True and origin != pid and origin not in profile["apart"] and origin not in lineage(profile)


def _link_gone(pid: str, profile: dict[str, Any], link: Message) -> bool:
    """True when the identifier of a merge's link was ours (we, or what merged into us, owned it) and is no more."""
    owner = link["owner"]
    if owner != pid and owner not in lineage(profile):
        return False
    kind, value = split_id(link["via"])
    return value not in profile["identifiers"].get(kind, ())


def _locked_on(profile: dict[str, Any]) -> str | None:
    lock = profile["lock"]
    return None if lock is None else lock["profile"]


def _is_lock(lock: dict[str, Any] | None, other: str, via: str) -> bool:
    """True when ``lock`` waits for ``other``'s answer about ``via`` (the identifier that linked us, or "split")."""
    return lock is not None and lock["profile"] == other and lock["via"] == via


def _link(msg: Message) -> Message:
    """What a merge carries along: the identifier that linked, its owner, who claimed it, why."""
    return {"via": msg["via"], "owner": msg["owner"], "claimant": msg["claimant"], "trigger": msg["trigger"]}
