"""A profile's lock has a bound: a lost answer to a merge or a split never holds it for good.

The simulated cluster of ``test_identity_protocol`` loses chosen messages on their way (as a
dead letter would), then fires the partitions' timers past ``OMNI_MERGE_LOCK_TIMEOUT_S``.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

import pytest

from pipeline.identity.protocol import LOCK_TIMER, is_tombstone
from pipeline.runtime.state.base import TIMER_PREFIX
from pipeline.runtime.state.partition import PartitionState
from tests.helpers import event
from tests.unit.test_erasure import held
from tests.unit.test_identity_protocol import SOURCE, Cluster, checkpoint, people_events

TIMEOUT = 300.0
SURVIVOR, LOSER = "customer_id:C1", "cookie_id:ck1"


def two_profiles(**settings: Any) -> Cluster:
    """C1 with an e-mail address, and an anonymous cart on a cookie: two profiles, about to be linked."""
    cluster = Cluster(merge_lock_timeout_s=TIMEOUT, **settings)
    cluster.inject(event("login", "web", {"customer_id": "C1", "email": "c1@example.dk"}, "e1"))
    cluster.inject(event("add_to_cart", "web", {"cookie_id": "ck1"}, "e2", sku="MUG-002", qty=1, price=9.0))
    cluster.settle()
    return cluster


def link(cluster: Cluster, losing: str) -> None:
    """The event that links them, with every ``losing`` message lost on its way."""
    cluster.lose = lambda target, msg: msg["op"] == losing
    cluster.inject(event("login", "web", {"customer_id": "C1", "cookie_id": "ck1"}, "e3"))
    cluster.settle()
    cluster.lose = lambda target, msg: False


def profile(cluster: Cluster, pid: str) -> Any:
    return cluster.states[cluster.partition_of(pid)].txn.get(pid.encode())


def past_the_bound(cluster: Cluster) -> None:
    cluster.fire(time.time() + TIMEOUT - 60)
    cluster.settle()
    assert profile(cluster, SURVIVOR)["lock"] is not None  # not before its time
    cluster.fire(time.time() + TIMEOUT + 1)
    cluster.settle()


def test_a_lost_absorb_opens_the_lock_after_its_bound_and_what_waited_runs() -> None:
    cluster = two_profiles()
    link(cluster, "absorb")
    c1 = profile(cluster, SURVIVOR)
    assert c1["lock"]["profile"] == LOSER
    cluster.inject(event("login", "app", {"customer_id": "C1", "phone": "+4520000001"}, "e4"))  # waits for the lock
    cluster.settle()
    assert [m["op"] for m in profile(cluster, SURVIVOR)["queue"]] == ["claim_later"]

    past_the_bound(cluster)

    live = cluster.check_consistent()  # includes: no lock, no queue, no claim pending anywhere
    assert set(live) == {SURVIVOR, LOSER}  # the merge never happened: the link is left out of the survivor
    assert live[SURVIVOR]["identifiers"] == {"customer_id": ["C1"], "email": ["c1@example.dk"], "phone": ["+4520000001"]}
    assert live[LOSER]["cart"] and live[LOSER]["identifiers"] == {"cookie_id": ["ck1"]}
    tally = cluster.processor.identity.tally
    assert tally.lock_timeouts == {"merge": 1}
    assert tally.left_out[("cookie_id", "lock_timeout")] == 1 and tally.refused["lock_timeout"] == 1
    assert sum(sum(p["counters"].values()) for p in live.values()) == 4
    assert not any(key for _, key, tid in _index(cluster) if tid == LOCK_TIMER)  # the lock's index entry went


def test_a_lost_absorbed_is_asked_for_again_and_the_survivor_takes_the_state() -> None:
    """The loser had merged (a tombstone forwarding to the survivor) but its state never arrived."""
    cluster = two_profiles()
    link(cluster, "absorbed")
    assert is_tombstone(profile(cluster, LOSER)) and profile(cluster, SURVIVOR)["lock"] is not None

    past_the_bound(cluster)

    (c1,) = cluster.check_consistent().values()
    assert c1["id"] == SURVIVOR and list(c1["cart"]) == ["MUG-002"] and c1["identifiers"]["cookie_id"] == ["ck1"]
    assert [m["profile"] for m in c1["merged"]] == [LOSER]
    assert sum(c1["counters"].values()) == 3
    tally = cluster.processor.identity.tally
    assert tally.lock_timeouts == {"merge": 1} and tally.late_answers == {"absorbed": 1} and tally.merges == 1


def test_an_answer_held_up_past_the_bound_is_still_taken_once() -> None:
    cluster = two_profiles(duplicate_rate=0.0)
    link(cluster, "absorbed")
    ((target, late),) = cluster.lost
    past_the_bound(cluster)  # the state arrives by the abandon's request...
    cluster.links.setdefault((cluster.partition_of(LOSER), cluster.partition_of(target)), deque()).append((target, late))
    cluster.settle()  # ...and the first answer after it: a repeat
    (c1,) = cluster.check_consistent().values()
    assert sum(c1["counters"].values()) == 3 and len(c1["merged"]) == 1
    assert cluster.processor.identity.tally.merges == 1


def test_an_erasure_does_not_wait_for_a_locked_profile() -> None:
    cluster = two_profiles()
    link(cluster, "absorb")
    at = time.time()
    cluster.send(SOURCE, "email:c1@example.dk", {"op": "erase", "request_id": "r1", "subject": "email:c1@example.dk", "at": at})
    cluster.settle()  # no timer fired: the erasure happened at once

    (audit,) = [m for m in cluster.merges if m.get("audit")]
    assert audit["result"] == "erased"
    live = cluster.check_consistent()
    assert list(live) == [LOSER]  # it never answered: not linked to the person, it stays
    assert not any(SURVIVOR in key.decode() or "c1@example.dk" in str(value) for key, value in held(cluster))
    cluster.fire(time.time() + TIMEOUT + 1)
    cluster.settle()
    assert cluster.processor.identity.tally.lock_timeouts == {}  # the erasure took the lock's timer with it


def test_an_erasure_mid_merge_erases_the_side_that_had_merged_already() -> None:
    """The loser became the survivor's tombstone, its state lost on the way: the person's data all the same."""
    cluster = two_profiles()
    link(cluster, "absorbed")
    cluster.send(SOURCE, SURVIVOR, {"op": "erase", "request_id": "r1", "subject": SURVIVOR, "at": time.time()})
    cluster.settle()

    assert cluster.check_consistent() == {}
    leftovers = [(k, v) for k, v in held(cluster) if not k.startswith((b"e|", b"r|"))]
    assert leftovers == []  # no tombstone, no identifier entry, no timer: only the erasure markers
    assert cluster.processor.identity.tally.erasures == {"erased": 1, "cascade": 1}
    assert len([m for m in cluster.merges if m.get("audit")]) == 1


def _index(cluster: Cluster) -> list[tuple[float, str, str]]:
    return [t for state in cluster.states.values() for t in state.timers]


def _split_with_its_answer_lost() -> Cluster:
    """Two merged profiles, an operator's split of them, and the split's answer (``unmerged``) lost."""
    cluster = two_profiles(duplicate_rate=0.0)
    link(cluster, "nothing")
    cluster.lose = lambda target, msg: msg["op"] == "unmerged"
    cluster.send(SOURCE, SURVIVOR, {"op": "split", "identifier": "cookie_id:ck1", "by": "test"})
    cluster.settle()
    cluster.lose = lambda target, msg: False
    return cluster


def test_a_split_whose_answer_is_lost_opens_and_a_late_answer_still_finishes_it() -> None:
    cluster = _split_with_its_answer_lost()
    ((target, late),) = cluster.lost
    assert (profile(cluster, SURVIVOR)["lock"]["profile"], profile(cluster, SURVIVOR)["lock"]["via"]) == (LOSER, "split")

    cluster.fire(time.time() + TIMEOUT + 1)
    assert profile(cluster, SURVIVOR)["lock"] is None
    assert cluster.processor.identity.tally.lock_timeouts == {"split": 1}

    # Held up, not lost: it comes first on its link, ahead of the answer to the unmerge sent again.
    cluster.links.setdefault((cluster.partition_of(LOSER), cluster.partition_of(target)), deque()).appendleft((target, late))
    cluster.settle()
    live = cluster.check_consistent()
    assert set(live) == {SURVIVOR, LOSER} and live[SURVIVOR]["cart"] == {} and list(live[LOSER]["cart"]) == ["MUG-002"]
    assert cluster.processor.identity.tally.late_answers == {"unmerged": 1}


def test_a_split_whose_answer_never_comes_is_asked_again_when_its_lock_opens() -> None:
    cluster = _split_with_its_answer_lost()
    past_the_bound(cluster)  # the unmerge again: the loser, alive already, says what it took back
    live = cluster.check_consistent()
    assert set(live) == {SURVIVOR, LOSER} and live[SURVIVOR]["merged"] == []
    assert "cookie_id" not in live[SURVIVOR]["identifiers"] and live[SURVIVOR]["apart"] == [LOSER]
    assert not live[SURVIVOR]["timers"] and live[LOSER]["timers"]  # the cart's reminder went back, once
    assert cluster.processor.identity.tally.late_answers == {"unmerged": 1, "unmerged_partial": 1}


def test_a_merge_that_waited_behind_a_split_of_its_identifier_is_not_judged_on_it() -> None:
    """Fails without locks too: the identifier that linked the merge left the survivor while it waited."""
    cluster = Cluster(duplicate_rate=0.0)
    cluster.inject(event("login", "web", {"customer_id": "C1", "email": "e@x.dk"}, "e1"))
    cluster.inject(event("login", "web", {"email": "e2@x.dk", "cookie_id": "k"}, "e2"))
    cluster.settle()
    cluster.inject(event("login", "web", {"customer_id": "C1", "email": "e2@x.dk"}, "e3"))
    cluster.settle()
    cluster.send(SOURCE, "customer_id:C1", {"op": "split", "identifier": "cookie_id:k", "by": "t"})
    cluster.inject(event("login", "web", {"device_id": "d", "cookie_id": "k"}, "e4"))  # k, still C1's: a merge
    cluster.settle()
    live = cluster.check_consistent()
    assert live["email:e2@x.dk"]["identifiers"]["cookie_id"] == ["k"] and "cookie_id" not in live["customer_id:C1"]["identifiers"]
    assert cluster.processor.identity.tally.refused["moved"] == 1


# Answers to merges (splits race ordinary traffic less well, with or without locks: see the README).
LOSABLE = ("absorb", "absorbed", "refused", "redirect")


@pytest.mark.parametrize("seed", range(24))
def test_lost_answers_never_leave_a_lock_and_the_graph_ends_consistent(seed: int) -> None:
    """Racing events, repeats, a tenth of every merge's answers lost, an erasure; then the bound runs out."""
    rng = random.Random(seed)
    events = people_events(rng, people=20, per_person=8)
    cluster = Cluster(partitions=rng.choice([2, 4, 8, 16]), seed=seed, duplicate_rate=0.05, merge_lock_timeout_s=TIMEOUT)
    cluster.lose = lambda target, msg: msg["op"] in LOSABLE and rng.random() < 0.1
    erase = seed % 2 == 1
    for n, e in enumerate(events):
        cluster.inject(e)
        if erase and n == len(events) // 2:  # a person asks to be erased, mid-stream
            pid = rng.choice(sorted(cluster.profiles()))
            cluster.send(SOURCE, pid, {"op": "erase", "request_id": "r1", "subject": pid, "at": time.time()})
        if rng.random() < 0.2:
            cluster.settle()
    cluster.settle()
    assert cluster.lost, "nothing was lost: the test tests nothing"
    cluster.lose = lambda target, msg: False
    for _ in range(4):  # a lock opened may send what locks another, which has a bound of its own
        cluster.fire(time.time() + TIMEOUT + 1)
        cluster.settle()
    live = cluster.check_consistent()
    assert cluster.processor.identity.tally.lock_timeouts
    if not erase:  # nothing lost, nothing twice: every event counted once, in whichever profile it ended
        assert sum(sum(p["counters"].values()) for p in live.values()) == len(events)


def test_a_locked_profile_keeps_at_most_its_queue_limit_and_never_turns_an_erasure_away() -> None:
    cluster = two_profiles(merge_queue_limit=3)
    link(cluster, "absorb")
    for n in range(5):  # five new devices while it waits: three wait, two are left out
        cluster.inject(event("login", "app", {"customer_id": "C1", "device_id": f"d{n}"}, f"q{n}"))
        cluster.settle()
    assert len(profile(cluster, SURVIVOR)["queue"]) == 3
    assert cluster.processor.identity.tally.left_out[("device_id", "queue_full")] == 2
    cluster.send(SOURCE, SURVIVOR, {"op": "erase", "request_id": "r1", "subject": SURVIVOR, "at": time.time()})
    cluster.settle()
    assert [m["result"] for m in cluster.merges if m.get("audit")] == ["erased"]
    assert list(cluster.check_consistent()) == [LOSER]


def test_a_lock_answered_in_time_leaves_no_timer_behind_and_one_held_across_a_restart_still_opens() -> None:
    cluster = two_profiles()
    link(cluster, "nothing")  # merged in milliseconds: its bound never reached the heap or the index
    assert [tid for _, _, tid in _index(cluster) if tid == LOCK_TIMER] == [] and not any(state.deferred for state in cluster.states.values())
    assert not any(key.startswith(TIMER_PREFIX) and LOCK_TIMER.encode() in key for state in cluster.states.values() for key in state.txn._dirty)  # fmt: skip

    cluster = two_profiles()
    link(cluster, "absorb")
    checkpoint(cluster)  # the lock is held at a checkpoint: its bound is indexed with it...
    for p, state in cluster.states.items():  # ...and a restarted worker finds it there
        cluster.states[p] = PartitionState.open(p, state.store)
    past_the_bound(cluster)
    assert cluster.processor.identity.tally.lock_timeouts == {"merge": 1}
    assert set(cluster.check_consistent()) == {SURVIVOR, LOSER}
