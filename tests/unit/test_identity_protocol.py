"""The identity protocol under adversarial delivery, with no broker.

A simulated cluster of state partitions delivers the protocol's messages the way
Kafka may: in order from one partition to another, in any order between different
pairs, events sometimes at once (a worker owning the target) and sometimes later,
and any message now and then twice (a replay after a crash). Whatever the
interleaving, the graph must end consistent and every event counted once.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.omnichannel import LOCAL_OPS
from pipeline.engine.processor import Processor
from pipeline.identity.protocol import ID_PREFIX, is_tombstone
from pipeline.identity.resolve import routing_key
from pipeline.identity.rules import identity_rules, split_id
from pipeline.ingest.contract import PRODUCT_EVENT_TYPES
from pipeline.ingest.validate import CleanEvent, Validator
from pipeline.profiles.census import live_profiles
from pipeline.runtime.partitioner import partition_for
from pipeline.runtime.state.base import DELETED, TIMER_PREFIX
from pipeline.runtime.state.memory import MemoryStore
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import Settings
from tests.helpers import event, write_rules

SOURCE = -1  # messages injected from the input topics


class Cluster:
    def __init__(self, partitions: int = 8, seed: int = 0, duplicate_rate: float = 0.0, **settings: Any) -> None:
        # The default rules without quiet hours or holdouts: a test must not depend on the hour or a hash.
        self.settings = Settings(**{"rules_file": write_rules(Path(tempfile.mkdtemp())), **settings})
        self.processor = Processor(self.settings, Catalogue.load(self.settings.catalogue_file))
        self.validator = Validator(self.settings)
        self.partitions = partitions
        self.states = {p: PartitionState.open(p, MemoryStore()) for p in range(partitions)}
        self.links: dict[tuple[int, int], deque[tuple[str, dict[str, Any]]]] = {}
        self.rng = random.Random(seed)
        self.duplicate_rate = duplicate_rate
        self.merges: list[dict[str, Any]] = []
        # Which messages never arrive (dead-lettered on the way, or where they are handled): see settle.
        self.lose: Callable[[str, dict[str, Any]], bool] = lambda target, msg: False
        self.lost: list[tuple[str, dict[str, Any]]] = []

    def partition_of(self, target: str) -> int:
        return partition_for(target.encode(), self.partitions)

    def send(self, source: int, target: str, msg: dict[str, Any]) -> None:
        self.run(target, msg, source)

    def inject(self, raw: dict[str, Any]) -> None:
        stock = raw["type"] in PRODUCT_EVENT_TYPES
        result = self.validator("ops.inventory" if stock else "channel." + raw["channel"], orjson.dumps(raw), time.time())
        assert isinstance(result, CleanEvent), result
        self.send(SOURCE, routing_key(result.data), {"op": "product" if stock else "ev", "event": result.data})

    def run(self, target: str, msg: dict[str, Any], source: int | None = None) -> None:
        """Run a message, and the steps it leads to that the engine would run at once, in its order.

        As in ``OmnichannelJob._deliver``: a step for a partition the same worker owns may
        run at once, after the steps produced before it; every other step waits on the link
        between the two partitions, in order.
        """
        pending = deque([(source, target, msg)])
        while pending:
            source, target, msg = pending.popleft()
            partition = self.partition_of(target)
            if source is not None and not (msg["op"] in LOCAL_OPS and "forwarded" not in msg and self.rng.random() < 0.5):
                self.links.setdefault((source, partition), deque()).append((target, msg))
                continue
            out: list[tuple[str, dict[str, Any]]] = []
            self.processor.handle(self.states[partition], target, msg, time.time(), out, self.merges)
            pending.extend((partition, t, m) for t, m in out)

    def settle(self, max_steps: int = 200_000) -> None:
        for _ in range(max_steps):
            busy = [link for link, queue in self.links.items() if queue]
            if not busy:
                return
            queue = self.links[self.rng.choice(busy)]
            target, msg = queue.popleft()
            if self.lose(target, msg):
                self.lost.append((target, msg))
                continue
            if self.rng.random() < self.duplicate_rate:
                queue.append((target, msg))  # delivered again later, as after a crash
            self.run(target, msg)
        raise AssertionError("the protocol did not settle")

    def fire(self, now: float) -> list[Any]:
        """Every partition's timers due by ``now``, as the engine's loop fires them; what they send goes
        through the topic (``OmnichannelJob.on_timers``). Returns the actions decided."""
        actions = []
        for partition, state in self.states.items():
            sends: list[tuple[str, dict[str, Any]]] = []
            actions += self.processor.fire_due(state, now, sends, self.merges)
            for target, msg in sends:
                self.links.setdefault((partition, self.partition_of(target)), deque()).append((target, msg))
        return actions

    # --- reading the result ------------------------------------------------------

    def entries(self) -> dict[str, str]:
        """identifier -> owning profile id, from every partition (a founding identifier has no entry)."""
        out = {}
        for state in self.states.values():
            for key, value in held_by(state).items():
                if key.startswith(ID_PREFIX):
                    out[key[len(ID_PREFIX):].decode()] = value[0]  # [owner, the claim that made it so]
        for pid, profile in self.profiles().items():
            if not is_tombstone(profile):
                out.setdefault(pid, pid)
        return out

    def profiles(self) -> dict[str, dict[str, Any]]:
        out = {}
        for state in self.states.values():
            for key, value in held_by(state).items():
                if not key.startswith((ID_PREFIX, TIMER_PREFIX, b"r|", b"e|", b"x|", b"sku:")):
                    out[key.decode()] = value
        return out

    def check_consistent(self) -> dict[str, dict[str, Any]]:
        """Every identifier owned by a live profile that holds it, and the other way round."""
        entries = self.entries()
        profiles = self.profiles()
        live = {pid: p for pid, p in profiles.items() if not is_tombstone(p)}
        for ident, owner in entries.items():
            assert owner in live, f"{ident} points at {owner}, which is {'merged' if owner in profiles else 'missing'}"
            kind, value = split_id(ident)
            assert value in live[owner]["identifiers"].get(kind, []), f"{owner} does not hold {ident}"
        assert sum(live_profiles(st) for st in self.states.values()) == len(live), "the census is off"
        for pid, p in live.items():
            assert p["lock"] is None and p["queue"] == [] and p["claims"] == [], f"{pid} is still busy: {p}"
            for kind, values in p["identifiers"].items():
                assert len(values) <= identity_rules(self.settings).limits[kind], f"{pid} holds too many {kind}"
                for value in values:
                    assert entries.get(f"{kind}:{value}") == pid, f"{pid} holds {kind}:{value}, owned by another"
        return live


def held_by(state: PartitionState) -> dict[bytes, Any]:
    """Every value a partition holds: in its store (checkpointed), and written since."""
    values = {key: orjson.loads(raw) for key, raw in state.store.items(b"")}
    values.update(state.txn._dirty)
    return {key: value for key, value in values.items() if value is not DELETED}


def checkpoint(cluster: Cluster) -> None:
    """Every partition's changes into its store, as the engine's checkpoint leaves them."""
    for state in cluster.states.values():
        state.index_unfired()
        state.store.write(state.txn.take(), 0)
        state.txn.flushed()


def linked_components(events: list[dict[str, Any]]) -> list[set[str]]:
    """What the events link, by union-find over each event's identifiers."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for e in events:
        ids = [f"{k}:{v}" for k, v in e["identifiers"].items()]
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
        find(ids[0])
    groups: dict[str, set[str]] = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return list(groups.values())


def people_events(rng: random.Random, people: int, per_person: int) -> list[dict[str, Any]]:
    """Each person browses anonymously on devices, logs in, buys in store with a loyalty card..."""
    events = []
    for i in range(people):
        ids = {
            "customer_id": f"C{i}",
            "loyalty_id": f"L{i}",
            "email": f"p{i}@example.dk",
            "phone": f"+4520{i:06d}",
            "device_id": f"dev-{i}",
            "cookie_id": f"ck-{i}-{rng.randrange(2)}",
        }
        for n in range(per_person):
            kinds = rng.sample(list(ids), rng.randint(1, 3))
            channel = rng.choice(["web", "app", "store", "callcenter"])
            events.append(event("page_view" if channel == "web" else "login", channel,
                                {k: ids[k] for k in kinds}, f"e{i}-{n}", ))  # fmt: skip
    rng.shuffle(events)
    return events


@pytest.mark.parametrize("seed", range(24))
def test_racing_events_converge_to_one_profile_per_person(seed: int) -> None:
    rng = random.Random(seed)
    events = people_events(rng, people=30, per_person=8)
    cluster = Cluster(seed=seed, duplicate_rate=0.05)
    catch_up = [0.0, 0.3][seed % 2]  # all events in flight at once, or the graph catching up now and then
    for e in events:
        cluster.inject(e)
        if rng.random() < catch_up:
            cluster.settle()
    cluster.settle()
    live = cluster.check_consistent()
    got = sorted(sorted(f"{k}:{v}" for k, vs in p["identifiers"].items() for v in vs) for p in live.values())
    want = sorted(sorted(c) for c in linked_components(events))
    assert got == want
    # Nothing lost, nothing twice: every event counted once, in whichever profile it ended.
    assert sum(sum(p["counters"].values()) for p in live.values()) == len(events)
    assert cluster.processor.identity.tally.refused == {}


def test_the_survivor_does_not_depend_on_arrival_order() -> None:
    anon = event("product_view", "web", {"cookie_id": "ck1"}, "e1", sku="VAC-100")
    login = event("login", "web", {"cookie_id": "ck1", "email": "anna@example.dk"}, "e2")
    account = event("login", "app", {"email": "anna@example.dk", "customer_id": "C1"}, "e3")
    for order in ([anon, login, account], [account, login, anon], [login, account, anon]):
        cluster = Cluster()
        for e in order:
            cluster.inject(e)
            cluster.settle()
        (pid, profile), = cluster.check_consistent().items()
        assert pid == "customer_id:C1"
        assert profile["viewed"] == ["VAC-100"]  # the anonymous history came along
        assert {m["profile"] for m in profile["merged"]} <= {"email:anna@example.dk", "cookie_id:ck1"}


def test_two_accounts_on_one_tablet_stay_two_people() -> None:
    cluster = Cluster()
    for e in (
        event("login", "app", {"customer_id": "C1", "device_id": "tablet"}, "e1"),
        event("login", "app", {"customer_id": "C2", "device_id": "tablet"}, "e2"),
        event("login", "app", {"customer_id": "C2", "device_id": "tablet", "email": "b@example.dk"}, "e3"),
    ):
        cluster.inject(e)
        cluster.settle()
    live = cluster.check_consistent()
    assert sorted(p["identifiers"]["customer_id"] for p in live.values()) == [["C1"], ["C2"]]
    assert cluster.processor.identity.tally.left_out[("device_id", "limit_customer_id")] >= 1
    assert live["customer_id:C2"]["identifiers"]["email"] == ["b@example.dk"]


def test_a_merge_moves_counters_purchases_cart_and_pending_timers() -> None:
    cluster = Cluster()
    cluster.inject(event("add_to_cart", "web", {"cookie_id": "ck9"}, "e1", sku="MUG-002", qty=1, price=9.0))
    cluster.inject(event("purchase", "store", {"loyalty_id": "L9"}, "e2", order_id="O1", total=249.0, currency="EUR",
                         items=[{"sku": "VAC-100", "qty": 1, "price": 249.0}], fulfilment="delivery"))  # fmt: skip
    cluster.settle()
    cluster.inject(event("login", "web", {"loyalty_id": "L9", "cookie_id": "ck9"}, "e3"))
    cluster.settle()
    (pid, p), = cluster.check_consistent().items()
    assert pid == "loyalty_id:L9"
    assert p["counters"] == {"add_to_cart": 1, "purchase": 1, "login": 1}
    assert list(p["cart"]) == ["MUG-002"] and p["lifetime_value"] == {"EUR": 249.0}
    # The vacuum cleaner's bag offer and the cart's reminder stayed scheduled, now for the survivor.
    assert {t["rule"] for t in p["timers"].values()} == {"consumables_follow_up", "abandoned_cart"}
    state = cluster.states[cluster.partition_of(pid)]
    assert all([t for t in state.timers if t[2] == timer_id][-1][1] == pid for timer_id in p["timers"])
    (merge,) = cluster.merges
    assert merge["survivor"] == pid and merge["merged"] == "cookie_id:ck9" and merge["trigger_event_id"] == "e3"


@pytest.mark.parametrize("seed", range(12))
def test_shared_devices_never_fuse_accounts_whatever_the_order(seed: int) -> None:
    rng = random.Random(seed)
    events = people_events(rng, people=20, per_person=6)
    for n in range(40):  # family tablets and shop kiosks: one device, several accounts
        a, b = rng.sample(range(20), 2)
        for person in (a, b):
            events.append(event("login", "app", {"customer_id": f"C{person}", "device_id": f"shared-{n % 5}"}, f"s{n}-{person}"))
    rng.shuffle(events)
    cluster = Cluster(seed=seed, duplicate_rate=0.05)
    for e in events:
        cluster.inject(e)
    cluster.settle()
    live = cluster.check_consistent()  # includes: no profile over a limit, so never two customer ids
    assert sum(sum(p["counters"].values()) for p in live.values()) == len(events)
    assert cluster.processor.identity.tally.left_out


def split(cluster: Cluster, profile: str, identifier: str) -> None:
    cluster.send(SOURCE, profile, {"op": "split", "identifier": identifier, "by": "test"})
    cluster.settle()


def test_an_operator_undoes_a_wrong_merge_and_it_does_not_come_back() -> None:
    cluster = Cluster()
    for e in (
        event("add_to_cart", "web", {"cookie_id": "kiosk"}, "e1", sku="MUG-002", qty=1, price=9.0),
        event("login", "web", {"customer_id": "C1", "email": "a@example.dk"}, "e2"),
        event("login", "web", {"customer_id": "C1", "cookie_id": "kiosk"}, "e3"),  # the wrong link
    ):
        cluster.inject(e)
        cluster.settle()
    (merged,) = cluster.check_consistent().values()
    assert merged["counters"] == {"add_to_cart": 1, "login": 2} and list(merged["cart"]) == ["MUG-002"]

    split(cluster, "cookie_id:kiosk", "cookie_id:kiosk")  # by any id it ever had: merged ones lead to the survivor
    live = cluster.check_consistent()
    assert set(live) == {"customer_id:C1", "cookie_id:kiosk"}
    c1, kiosk = live["customer_id:C1"], live["cookie_id:kiosk"]
    assert c1["identifiers"] == {"customer_id": ["C1"], "email": ["a@example.dk"]} and c1["cart"] == {}
    assert c1["counters"] == {"login": 2} and c1["merged"] == [] and c1["apart"] == ["cookie_id:kiosk"]
    assert kiosk["identifiers"] == {"cookie_id": ["kiosk"]} and list(kiosk["cart"]) == ["MUG-002"]
    assert [m.get("separated") for m in cluster.merges if m.get("split")] == ["cookie_id:kiosk"]

    cluster.inject(event("login", "web", {"customer_id": "C1", "cookie_id": "kiosk"}, "e4"))  # the link again
    cluster.settle()
    live = cluster.check_consistent()
    assert set(live) == {"customer_id:C1", "cookie_id:kiosk"}  # still two
    assert cluster.processor.identity.tally.refused["split"] == 1


def test_splitting_an_identifier_the_profile_always_had_detaches_it_alone() -> None:
    cluster = Cluster()
    cluster.inject(event("login", "app", {"customer_id": "C1", "device_id": "shop-ipad"}, "e1"))
    cluster.settle()
    split(cluster, "customer_id:C1", "device_id:shop-ipad")
    live = cluster.check_consistent()
    assert live["customer_id:C1"]["identifiers"] == {"customer_id": ["C1"]}
    cluster.inject(event("login", "app", {"device_id": "shop-ipad"}, "e2"))
    cluster.inject(event("login", "app", {"customer_id": "C1", "device_id": "shop-ipad"}, "e3"))
    cluster.settle()
    live = cluster.check_consistent()
    assert live["device_id:shop-ipad"]["identifiers"] == {"device_id": ["shop-ipad"]}
    assert live["customer_id:C1"]["identifiers"] == {"customer_id": ["C1"]}


def test_a_split_gives_back_timers_as_they_are_now_not_as_they_were_at_the_merge() -> None:
    cluster = Cluster()
    cluster.inject(event("purchase", "web", {"cookie_id": "ck5"}, "e1", order_id="O5", total=249.0, currency="EUR",
                         items=[{"sku": "VAC-100", "qty": 1, "price": 249.0}]))  # fmt: skip
    cluster.inject(event("add_to_cart", "web", {"cookie_id": "ck5"}, "e2", sku="MUG-002", qty=1, price=9.0))
    cluster.settle()
    cluster.inject(event("login", "web", {"customer_id": "C5", "email": "c5@example.dk", "cookie_id": "ck5"}, "e3"))
    cluster.settle()
    survivor = cluster.states[cluster.partition_of("customer_id:C5")]
    fired = [a for _, a in cluster.processor.fire_due(survivor, time.time() + 4 * 3600 + 60, [], [])]
    assert [a.rule for a in fired] == ["abandoned_cart"]  # fired for the survivor after the merge
    split(cluster, "customer_id:C5", "cookie_id:ck5")
    live = cluster.check_consistent()
    back = live["cookie_id:ck5"]["timers"]
    assert [t["rule"] for t in back.values()] == ["consumables_follow_up"]  # the cart's reminder went out already
    assert live["customer_id:C5"]["timers"] == {} and survivor.pending == 0  # nothing left in the survivor's index
