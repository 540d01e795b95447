"""State that would only grow has a bound: what is kept, for how long, and what is counted when dropped."""

from __future__ import annotations

import time
from typing import Any

from pipeline.identity.protocol import is_tombstone
from pipeline.profiles.merge import merge_profiles
from pipeline.profiles.profile import ProfileLimits, apply_event, new_profile
from pipeline.runtime.state.base import EXPIRY_PREFIX
from pipeline.runtime.state.memory import MemoryStore
from pipeline.runtime.state.partition import PartitionState
from tests.helpers import clean, event
from tests.unit.test_identity_protocol import SOURCE, Cluster, checkpoint, held_by

DAY = 86_400.0


def expiries(cluster: Cluster) -> list[bytes]:
    return [key for state in cluster.states.values() for key in held_by(state) if key.startswith(EXPIRY_PREFIX)]


def sweep(cluster: Cluster, now: float, limit: int = 500) -> int:
    return sum(cluster.processor.identity.sweep_tombstones(state, now, limit) for state in cluster.states.values())


def merged_pair(cluster: Cluster, n: int) -> None:
    cluster.inject(event("add_to_cart", "web", {"cookie_id": f"ck{n}"}, f"c{n}", sku="MUG-002", qty=1, price=9.0))
    cluster.inject(event("login", "web", {"customer_id": f"C{n}", "email": f"c{n}@example.dk"}, f"l{n}"))
    cluster.settle()
    cluster.inject(event("login", "web", {"customer_id": f"C{n}", "cookie_id": f"ck{n}"}, f"m{n}"))
    cluster.settle()


def test_a_merged_profile_keeps_its_copy_of_the_state_for_the_retention_then_only_the_pointer() -> None:
    cluster = Cluster(duplicate_rate=0.0, tombstone_state_keep_s=30 * DAY)
    merged_pair(cluster, 1)
    tomb = cluster.profiles()["cookie_id:ck1"]
    assert is_tombstone(tomb) and tomb["state"]["cart"] and len(expiries(cluster)) == 1
    checkpoint(cluster)  # the sweep reads the expiry index where checkpoints leave it

    assert sweep(cluster, time.time() + 29 * DAY) == 0
    assert sweep(cluster, time.time() + 30 * DAY + 60) == 1
    assert cluster.profiles()["cookie_id:ck1"] == {"merged_into": "customer_id:C1"}
    assert expiries(cluster) == [] and cluster.processor.identity.tally.states_dropped == 1
    assert sweep(cluster, time.time() + 31 * DAY) == 0  # nothing twice, before or after the next checkpoint

    # The pointer still leads there...
    cluster.inject(event("page_view", "web", {"cookie_id": "ck1"}, "later"))
    cluster.settle()
    assert cluster.check_consistent()["customer_id:C1"]["counters"]["page_view"] == 1
    # ...but a split can no longer bring it back, and says so.
    cluster.send(SOURCE, "customer_id:C1", {"op": "split", "identifier": "cookie_id:ck1", "by": "test"})
    cluster.settle()
    (c1,) = cluster.check_consistent().values()
    assert c1["identifiers"]["cookie_id"] == ["ck1"] and c1["lock"] is None
    assert cluster.processor.identity.tally.refused["split_expired"] == 1


def test_the_sweep_takes_at_most_its_limit_and_only_what_expired() -> None:
    cluster = Cluster(partitions=1, duplicate_rate=0.0, tombstone_state_keep_s=DAY)
    for n in range(3):
        merged_pair(cluster, n)
    checkpoint(cluster)
    later = time.time() + DAY + 60
    assert sweep(cluster, later, limit=1) == 1 and cluster.processor.identity.tally.states_dropped == 1
    assert sweep(cluster, later, limit=1) == 1  # the next, not the one swept since the checkpoint
    assert sweep(cluster, later) == 1 and cluster.processor.identity.tally.states_dropped == 3
    assert sweep(cluster, later) == 0 and expiries(cluster) == []


def test_erasing_or_splitting_a_merged_profile_takes_its_expiry_with_it() -> None:
    cluster = Cluster(duplicate_rate=0.0)
    merged_pair(cluster, 1)
    merged_pair(cluster, 2)
    cluster.send(SOURCE, "customer_id:C1", {"op": "split", "identifier": "cookie_id:ck1", "by": "test"})
    cluster.send(SOURCE, "customer_id:C2", {"op": "erase", "request_id": "r1", "subject": "customer_id:C2", "at": time.time()})
    cluster.settle()
    assert expiries(cluster) == []  # (an expiry's key names the profile: an erasure leaves none)
    assert set(cluster.check_consistent()) == {"customer_id:C1", "cookie_id:ck1"}


def test_a_tombstone_from_before_retention_gets_one_when_next_touched() -> None:
    cluster = Cluster(duplicate_rate=0.0, tombstone_state_keep_s=DAY)
    merged_pair(cluster, 1)
    state = cluster.states[cluster.partition_of("cookie_id:ck1")]
    tomb: dict[str, Any] = state.txn.get(b"cookie_id:ck1")
    for key in expiries(cluster):  # as merges left them before
        state.txn.delete(key)
    del tomb["kept_until"]
    cluster.send(SOURCE, "cookie_id:ck1", {"op": "notice", "about": "nothing"})  # forwarded to the survivor
    cluster.settle()
    assert "kept_until" in state.txn.get(b"cookie_id:ck1") and len(expiries(cluster)) == 1
    checkpoint(cluster)
    assert sweep(cluster, time.time() + DAY + 60) == 1


def test_a_cart_and_the_stores_used_keep_their_most_recent_entries_and_count_the_rest() -> None:
    limits = ProfileLimits(cart_kept=5, stores_kept=3)
    p = new_profile("customer_id:C1")
    dropped: dict[str, int] = {}
    start = time.time() - 3600
    for n in range(8):
        apply_event(p, clean(event("add_to_cart", "web", {"customer_id": "C1"}, f"a{n}", at=start + n, sku=f"S{n}", qty=1, price=1.0)), limits, dropped)  # fmt: skip
        apply_event(p, clean(event("loyalty_scan", "store", {"customer_id": "C1"}, f"v{n}", at=start + n, store_id=f"st{n}")), limits, dropped)  # fmt: skip
    assert sorted(p["cart"]) == ["S3", "S4", "S5", "S6", "S7"] and sorted(p["stores"]) == ["st5", "st6", "st7"]
    apply_event(p, clean(event("add_to_cart", "web", {"customer_id": "C1"}, "again", at=start + 9, sku="S3", qty=1, price=1.0)), limits, dropped)  # fmt: skip
    apply_event(p, clean(event("add_to_cart", "web", {"customer_id": "C1"}, "new", at=start + 10, sku="S8", qty=1, price=1.0)), limits, dropped)  # fmt: skip
    assert sorted(p["cart"]) == ["S3", "S5", "S6", "S7", "S8"]  # S3, added again, was recent: S4 went
    assert dropped == {"cart": 4, "stores": 5}


def test_a_merge_keeps_the_bounds_on_the_union() -> None:
    limits = ProfileLimits(cart_kept=4, stores_kept=2)
    a, b = new_profile("customer_id:C1"), new_profile("cookie_id:k")
    start = time.time() - 3600
    for n, profile in enumerate([a, b, a, b, a, b]):
        profile["cart"][f"S{n}"] = {"qty": 1, "price": 1.0, "ts": start + n}
        profile.setdefault("stores", {})[f"st{n}"] = start + n
    dropped: dict[str, int] = {}
    merge_profiles(a, b, limits, dropped)
    assert sorted(a["cart"]) == ["S2", "S3", "S4", "S5"] and sorted(a["stores"]) == ["st4", "st5"]
    assert dropped == {"cart": 2, "stores": 4}


def test_the_timer_heap_is_rebuilt_from_live_timers_when_cancelled_ones_outnumber_them() -> None:
    state = PartitionState.open(0, MemoryStore(), heap_slack=10)
    now = time.time()
    for n in range(100):
        state.schedule(now + 60 + n, f"p{n}", "t")
    state.schedule(now - 1, "due-now", "t")  # due already: not in the index, in the heap only
    for n in range(90):
        state.unschedule(now + 60 + n, f"p{n}", "t")
        assert len(state.timers) <= 2 * state.pending + 10 + 1
    assert state.pending == 11 and len(state.timers) < 30 and state.heap_dropped >= 60
    fired = [key for _, key, _ in state.due(now + 3600)]  # cancelled ones among them are skipped by the caller
    assert {"due-now", *(f"p{n}" for n in range(90, 100))} <= set(fired)  # every live one is still there
    assert len(fired) == len(set(fired)) < 30
