"""Erasure through the identity protocol, with no broker: nothing of the person is left, and a replay does not bring them back."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from pipeline.identity.protocol import is_tombstone
from pipeline.privacy.erasure import MARKER_PREFIX, subject_hash
from pipeline.runtime.state.partition import PartitionState
from tests.helpers import event
from tests.unit.test_identity_protocol import SOURCE, Cluster, held_by

ANNA = ("C1", "L1", "anna@example.dk", "+4520123456", "dev-a", "ck-a1", "ck-a2")
ANNA_SEEN = ("C1", "L1", "anna@example.dk", "4520123456", "dev-a", "ck-a1", "ck-a2")  # as they may be spelled in state


def anna_events(at: float) -> list[dict[str, Any]]:
    """Anna across channels: two anonymous visits, a login that links them, an app, a store purchase with her card."""
    return [
        event("product_view", "web", {"cookie_id": "ck-a1"}, "a1", at=at, sku="BLD-400"),  # sold out online: she waits
        event("add_to_cart", "web", {"cookie_id": "ck-a2"}, "a2", at=at, sku="MUG-002", qty=1, price=9.0),
        event("login", "web", {"cookie_id": "ck-a2", "email": "anna@example.dk", "customer_id": "C1"}, "a3", at=at),
        event("login", "web", {"cookie_id": "ck-a1", "customer_id": "C1"}, "a4", at=at),
        event("login", "app", {"device_id": "dev-a", "customer_id": "C1", "phone": "+45 20 12 34 56"}, "a5", at=at),
        event("purchase", "store", {"loyalty_id": "L1", "email": "anna@example.dk"}, "a6", at=at, order_id="O1",
              total=249.0, currency="EUR", items=[{"sku": "VAC-100", "qty": 1, "price": 249.0}], fulfilment="delivery"),
    ]  # fmt: skip


def bob_events(at: float) -> list[dict[str, Any]]:
    return [
        event("login", "web", {"customer_id": "C2", "email": "bob@example.dk", "cookie_id": "ck-b"}, "b1", at=at),
        event("product_view", "web", {"customer_id": "C2"}, "b2", at=at, sku="BLD-400"),
    ]


def held(cluster: Cluster) -> list[tuple[bytes, Any]]:
    """Every live key and value in every partition."""
    return [(k, v) for state in cluster.states.values() for k, v in held_by(state).items()]


def traces_of_anna(cluster: Cluster) -> list[str]:
    found = []
    for key, value in held(cluster):
        text = key.decode(errors="replace") + orjson.dumps(value).decode()
        found.extend(f"{needle} in {key!r}" for needle in ANNA_SEEN if needle in text)
    return found


def erase(cluster: Cluster, identifier: str, request_id: str = "r1") -> float:
    at = time.time()
    cluster.send(SOURCE, identifier, {"op": "erase", "request_id": request_id, "subject": identifier, "at": at})
    cluster.settle()
    return at


def shop(seed: int = 0) -> Cluster:
    cluster = Cluster(seed=seed, duplicate_rate=0.05)
    then = time.time() - 60
    cluster.inject(event("inventory_update", "ops", {}, "inv1", at=then - 1, sku="BLD-400", available_qty=0))
    cluster.settle()
    for e in anna_events(then) + bob_events(then):
        cluster.inject(e)
        cluster.settle()
    return cluster


@pytest.mark.parametrize("by", ["email:anna@example.dk", "cookie_id:ck-a1", "phone:+4520123456", "customer_id:C1"])
def test_erasure_by_any_identifier_leaves_nothing_of_the_person(by: str) -> None:
    cluster = shop()
    (anna,) = [p for pid, p in cluster.check_consistent().items() if "C1" in p["identifiers"].get("customer_id", [])]
    assert anna["timers"] and anna["merged"] and anna["waiting_on"] == ["BLD-400"]
    assert traces_of_anna(cluster)

    erase(cluster, by)

    assert traces_of_anna(cluster) == []
    live = cluster.check_consistent()
    assert list(live) == ["customer_id:C2"]  # Bob is untouched...
    assert live["customer_id:C2"]["identifiers"]["email"] == ["bob@example.dk"]
    product = cluster.states[cluster.partition_of("sku:BLD-400")].txn.get(b"sku:BLD-400")
    assert list(product["waiting"]) == ["customer_id:C2"]  # ...and still waits for the blender
    (audit,) = [m for m in cluster.merges if m.get("audit")]
    assert audit["result"] == "erased" and audit["request_id"] == "r1"
    assert audit["subject"] == subject_hash(cluster.settings.erasure_salt, by)
    assert audit["removed"]["identifiers"] == 7 and audit["removed"]["waiting_lists"] == 1
    assert audit["removed"]["timers"] >= 1 and audit["removed"]["merged_profiles"] >= 1
    assert "anna" not in orjson.dumps(audit).decode()  # what was removed, never the data
    # What stays: a keyed hash per identifier and merged profile, with the erasure's time.
    markers = [k for k, _ in held(cluster) if k.startswith(MARKER_PREFIX)]
    assert len(markers) == len(ANNA)


def test_a_replay_of_old_events_does_not_bring_the_person_back_but_a_new_visit_starts_afresh() -> None:
    cluster = shop()
    erased_at = erase(cluster, "email:anna@example.dk")
    for e in anna_events(time.time() - 60):  # the input topics read again from the start
        cluster.inject(e)
        cluster.settle()
    assert traces_of_anna(cluster) == []
    assert list(cluster.check_consistent()) == ["customer_id:C2"]
    assert cluster.processor.identity.tally.erased_dropped >= len(anna_events(0))

    # She comes back after the erasure: a new customer, remembered from now on.
    cluster.inject(event("login", "web", {"email": "anna@example.dk", "cookie_id": "ck-new"}, "n1", at=erased_at + 1))
    cluster.settle()
    live = cluster.check_consistent()
    assert live["email:anna@example.dk"]["counters"] == {"login": 1}
    assert live["email:anna@example.dk"]["identifiers"] == {"email": ["anna@example.dk"], "cookie_id": ["ck-new"]}


def test_a_restarted_worker_still_knows_who_was_erased() -> None:
    """The markers are found in the store a partition reopens over, not only by the process that wrote them."""
    cluster = shop()
    erase(cluster, "email:anna@example.dk")
    for p, state in cluster.states.items():  # checkpointed, then the worker restarts over its stores
        state.store.write(state.txn.take(), 0)
        cluster.states[p] = PartitionState.open(p, state.store)
    assert any(state.erasures for state in cluster.states.values())
    assert not all(state.erasures for state in cluster.states.values())  # seven markers, eight partitions
    for e in anna_events(time.time() - 60):
        cluster.inject(e)
        cluster.settle()
    assert traces_of_anna(cluster) == []


def test_an_old_event_cannot_link_an_erased_identifier_to_another_profile() -> None:
    cluster = shop()
    erase(cluster, "customer_id:C1")
    old = time.time() - 30
    cluster.inject(event("login", "web", {"customer_id": "C2", "device_id": "dev-a"}, "late", at=old))  # Anna's old tablet
    cluster.settle()
    live = cluster.check_consistent()
    assert "device_id" not in live["customer_id:C2"]["identifiers"]
    assert traces_of_anna(cluster) == []


def test_erasing_someone_unknown_is_recorded_as_found_nobody() -> None:
    cluster = shop()
    erase(cluster, "email:nobody@example.dk", "r9")
    (audit,) = [m for m in cluster.merges if m.get("audit")]
    assert (audit["request_id"], audit["result"], audit["removed"]) == ("r9", "not_found", {})
    assert len(cluster.check_consistent()) == 2


@pytest.mark.parametrize("seed", range(12))
def test_erasure_racing_a_merge_still_erases_both_sides(seed: int) -> None:
    """The request arrives while the events that link her identities are still in flight (settled after)."""
    cluster = Cluster(seed=seed, duplicate_rate=0.05)
    then = time.time() - 60
    for e in anna_events(then):
        cluster.inject(e)
    cluster.settle()
    cluster.send(SOURCE, "customer_id:C1", {"op": "erase", "request_id": "r1", "subject": "customer_id:C1", "at": time.time()})
    for e in bob_events(then):
        cluster.inject(e)
    cluster.settle()
    assert traces_of_anna(cluster) == []
    live = cluster.check_consistent()
    assert list(live) == ["customer_id:C2"] and not any(is_tombstone(v) for _, v in held(cluster) if isinstance(v, dict))
