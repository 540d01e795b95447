"""A synthetic population of customers moving across channels.

Deterministic for a given seed, so tests and benchmarks replay the same
traffic. Each call to :meth:`Population.journey` yields the events of one
short visit: a web or app session, a store visit, an e-mail being opened, a
call, a chat, a signup, or an operations event (stock running out or coming
back). What happens later in a story (a pickup order becoming ready, being
collected, the customer's app entering that store) is queued a number of
journeys ahead, so every play of the rules catalogue gets its triggers.
Optionally, a share of records is deliberately broken in every way the ingest
contract rejects, so the dead-letter path is exercised too.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from pipeline.actions.catalogue import Catalogue
from pipeline.ingest.validate import REASONS

LOCALES = ("en", "da", "sv", "nb")
TIME_ZONES = {"en": "Europe/London", "da": "Europe/Copenhagen", "sv": "Europe/Stockholm", "nb": "Europe/Oslo"}
FIRST = ("anna", "bo", "carl", "dina", "emil", "freja", "gustav", "hanna", "ida", "jonas", "karin", "lars")
LAST = ("hansen", "jensen", "nielsen", "berg", "lund", "holm", "dahl", "strand", "vik", "sund")
STORES = ("store-cph-1", "store-aar-2", "store-osl-1", "store-sto-3")
CALL_REASONS = ("delivery status", "return", "product question", "invoice")
CHANNEL_WEIGHTS = {"web": 40, "app": 20, "store": 15, "email": 12, "callcenter": 3, "chat": 3}
OPS_SHARE = 0.02  # journeys that are a stock change instead of a customer
SIGNUP_SHARE = 0.03
# Every rejection the contract knows that a record on a channel topic can earn by itself.
BAD_KINDS = tuple(r for r in REASONS if r not in ("wrong_topic", "processing_error"))


@dataclass(frozen=True, slots=True)
class Customer:
    n: int
    customer_id: str
    email: str
    phone: str
    loyalty_id: str | None
    device_id: str | None
    cookie_id: str
    locale: str
    favourite: str  # the consumable they keep buying


@dataclass(frozen=True, slots=True)
class Produced:
    """One record for an input topic (logical name), as bytes on the wire."""

    topic: str
    key: bytes
    value: bytes


class Population:
    def __init__(self, catalogue: Catalogue, customers: int = 1000, seed: int = 7, bad_rate: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.catalogue = catalogue
        self.bad_rate = bad_rate
        self.durables = [sku for sku, p in catalogue.products.items() if p.consumable]
        self.others = [sku for sku in catalogue.products if sku not in self.durables]
        self.consumables = sorted(catalogue.consumable_skus()) or self.others
        self.customers = [self._make_customer(i) for i in range(customers)]
        self.seq = 0
        self.orders = 0
        self.journeys = 0
        self.later: list[tuple[int, int, Produced]] = []  # heap of (journey number, seq, record)
        self.out_of_stock: set[str] = set()

    def _make_customer(self, i: int) -> Customer:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}{i}@example.com"
        if rng.random() < 0.2:  # channel systems are sloppy; normalisation must cope
            email = f"  {email.title()} "
        return Customer(
            n=i,
            customer_id=f"C{i:07d}",
            email=email,
            phone=f"+45 {rng.randint(20, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
            loyalty_id=f"L{i:08d}" if rng.random() < 0.6 else None,
            device_id=f"dev-{i:07d}" if rng.random() < 0.5 else None,
            cookie_id=f"ck-{rng.getrandbits(48):012x}",
            locale=rng.choice(LOCALES),
            favourite=rng.choice(self.consumables),
        )

    # --- records ---------------------------------------------------------------------

    def records(self, now: float) -> Iterator[Produced]:
        """An endless stream of records, stamped ``now`` (advance it between calls for live traffic)."""
        while True:
            yield from self.journey(now)

    def journey(self, now: float) -> list[Produced]:
        rng = self.rng
        self.journeys += 1
        due = []
        while self.later and self.later[0][0] <= self.journeys:
            due.append(heapq.heappop(self.later)[2])
        if self.bad_rate and rng.random() < self.bad_rate:
            return due + [self.bad_record(rng.choice(BAD_KINDS), now)]
        roll = rng.random()
        if roll < OPS_SHARE:
            return due + [self._stock_change(now)]
        customer = rng.choice(self.customers)
        if roll < OPS_SHARE + SIGNUP_SHARE:
            ids = self._ids(customer, "customer_id", "email", "cookie_id")
            return due + [self._event("channel.web", "signup", "web", ids, now, locale=customer.locale,
                                      time_zone=TIME_ZONES[customer.locale])]  # fmt: skip
        channel = rng.choices(list(CHANNEL_WEIGHTS), weights=list(CHANNEL_WEIGHTS.values()))[0]
        return due + getattr(self, f"_{channel}")(customer, now)

    def _later(self, journeys: int, record: Produced) -> None:
        heapq.heappush(self.later, (self.journeys + journeys, self.seq, record))

    def _stock_change(self, now: float) -> Produced:
        """A product runs out online, or one that ran out comes back (online or at a store)."""
        rng = self.rng
        if self.out_of_stock and rng.random() < 0.5:
            sku = rng.choice(sorted(self.out_of_stock))
            self.out_of_stock.discard(sku)
            store = rng.choice(STORES) if rng.random() < 0.3 else None
            return self._event("ops.inventory", "inventory_update", "ops", {}, now, sku=sku, available_qty=rng.randint(5, 40),
                               **({"store_id": store} if store else {}))  # fmt: skip
        sku = rng.choice(self.durables + self.others)
        self.out_of_stock.add(sku)
        return self._event("ops.inventory", "inventory_update", "ops", {}, now, sku=sku, available_qty=0)

    def _pickup_story(self, c: Customer, order: Produced, now: float) -> None:
        """Ready soon after the order; usually collected later, often with the app seeing them arrive first."""
        rng = self.rng
        props = orjson.loads(order.value)["properties"]
        ids = self._ids(c, "customer_id")
        self._later(rng.randint(40, 120), self._event("ops.orders", "order_ready_for_pickup", "ops", ids, now,
                                                      order_id=props["order_id"], store_id=props["store_id"]))  # fmt: skip
        if c.device_id and rng.random() < 0.5:
            app = self._ids(c, "customer_id", "device_id")
            self._later(rng.randint(300, 900), self._event("channel.app", "geofence_enter", "app", app, now, store_id=props["store_id"]))
        if rng.random() < 0.7:  # the rest forget, and get the reminder
            self._later(rng.randint(1000, 2500), self._event("channel.store", "pickup_collected", "store", ids, now,
                                                             order_id=props["order_id"]))  # fmt: skip

    def _event(self, topic: str, etype: str, channel: str, ids: dict[str, str], now: float, **props: Any) -> Produced:
        self.seq += 1
        event = {
            "event_id": f"ev-{self.seq:010d}-{self.rng.getrandbits(32):08x}",
            "type": etype,
            "channel": channel,
            "occurred_at": _iso(now),
            "identifiers": ids,
            "properties": props,
        }
        key = next(iter(ids.values()), "").encode() if ids else props.get("sku", "").encode()
        return Produced(topic, key, orjson.dumps(event))

    def _ids(self, c: Customer, *kinds: str) -> dict[str, str]:
        return {k: getattr(c, k) for k in kinds if getattr(c, k)}

    def _shop_session(self, c: Customer, channel: str, ids: dict[str, str], now: float) -> list[Produced]:
        rng, topic = self.rng, f"channel.{channel}"
        out = [self._event(topic, "page_view", channel, ids, now, path="/")]
        sku = rng.choice(self.durables if rng.random() < 0.35 else self.others)
        out.append(self._event(topic, "product_view", channel, ids, now, sku=sku))
        if rng.random() < 0.5 and sku not in self.out_of_stock:
            price = self.catalogue.products[sku].price
            out.append(self._event(topic, "add_to_cart", channel, ids, now, sku=sku, qty=1, price=price))
            if rng.random() < 0.6:
                out.append(self._event(topic, "checkout_started", channel, ids, now))
                pickup = rng.random() < 0.2
                order = self._purchase(c, channel, ids, now, [sku], fulfilment="pickup" if pickup else "delivery")
                out.append(order)
                if pickup:
                    self._pickup_story(c, order, now)
        return out

    def _purchase(self, c: Customer, channel: str, ids: dict[str, str], now: float, skus: list[str], fulfilment: str = "delivery", store_id: str | None = None) -> Produced:  # fmt: skip
        self.orders += 1
        items = [
            {"sku": s, "qty": 1, "price": self.catalogue.products[s].price, "category": self.catalogue.products[s].category}
            for s in skus
        ]
        props: dict[str, Any] = {
            "order_id": f"O{self.orders:09d}",
            "items": items,
            "total": round(sum(self.catalogue.products[s].price for s in skus), 2),
            "currency": "EUR",
            "fulfilment": fulfilment,
        }
        if store_id or fulfilment == "pickup":
            props["store_id"] = store_id or self.rng.choice(STORES)
        return self._event(f"channel.{channel}", "purchase", channel, ids, now, **props)

    def _web(self, c: Customer, now: float) -> list[Produced]:
        if self.rng.random() < 0.15:  # anonymous browsing: a cookie and nothing else
            return [self._event("channel.web", "page_view", "web", {"cookie_id": c.cookie_id}, now, path="/")]
        return self._shop_session(c, "web", self._ids(c, "customer_id", "email", "cookie_id"), now)

    def _app(self, c: Customer, now: float) -> list[Produced]:
        ids = self._ids(c, "customer_id", "device_id") or self._ids(c, "customer_id")
        if self.rng.random() < 0.1:
            return [self._event("channel.app", "geofence_enter", "app", ids, now, store_id=self.rng.choice(STORES))]
        return self._shop_session(c, "app", ids, now)

    def _store(self, c: Customer, now: float) -> list[Produced]:
        rng = self.rng
        ids = self._ids(c, "customer_id", "loyalty_id", "phone")
        store = rng.choice(STORES)
        out = [self._event("channel.store", "loyalty_scan", "store", ids, now, store_id=store)] if c.loyalty_id else []
        if rng.random() < 0.3:
            skus = [c.favourite]  # the same bags again: a repeat purchase in the making
        else:
            skus = [rng.choice(self.durables if rng.random() < 0.4 else self.others)]
        out.append(self._purchase(c, "store", ids, now, skus, store_id=store))
        return out

    def _email(self, c: Customer, now: float) -> list[Produced]:
        rng, ids = self.rng, self._ids(c, "customer_id", "email")
        out = [self._event("channel.email", "email_delivered", "email", ids, now, campaign="weekly")]
        if rng.random() < 0.4:
            out.append(self._event("channel.email", "email_open", "email", ids, now, campaign="weekly"))
            if rng.random() < 0.3:
                out.append(self._event("channel.email", "email_click", "email", ids, now, campaign="weekly"))
        if rng.random() < 0.02:
            out.append(self._event("channel.email", "unsubscribe", "email", ids, now))
        return out

    def _callcenter(self, c: Customer, now: float) -> list[Produced]:
        ids = self._ids(c, "customer_id", "phone")
        return [self._event("channel.callcenter", "call", "callcenter", ids, now, reason=self.rng.choice(CALL_REASONS))]

    def _chat(self, c: Customer, now: float) -> list[Produced]:
        ids = self._ids(c, "customer_id", "email")
        return [self._event("channel.chat", "chat_message", "chat", ids, now, text="hello")]

    # --- broken records ------------------------------------------------------------------

    def bad_record(self, kind: str, now: float) -> Produced:
        c = self.rng.choice(self.customers)
        good = orjson.loads(self._event("channel.web", "page_view", "web", {"customer_id": c.customer_id}, now).value)
        if kind == "malformed_json":
            value = b'{"event_id": "x", "type": '
        elif kind == "not_an_object":
            value = b"[1, 2, 3]"
        elif kind == "unknown_type":
            value = orjson.dumps({**good, "type": "teleport"})
        elif kind == "no_identifiers":
            value = orjson.dumps({**good, "identifiers": {}})
        elif kind == "channel_mismatch":
            value = orjson.dumps({**good, "channel": "store"})
        elif kind == "bad_timestamp":
            value = orjson.dumps({**good, "occurred_at": "yesterday at noon"})
        elif kind == "absurd_timestamp":
            value = orjson.dumps({**good, "occurred_at": "1970-01-01T00:00:00Z"})
        elif kind == "invalid_utf8":
            value = orjson.dumps(good).replace(b"page_view", b"page_\xff\xfeview")
        elif kind == "oversized":
            value = orjson.dumps({**good, "properties": {"blob": "x" * 70_000}})
        elif kind == "invalid_event":
            value = orjson.dumps({**good, "type": "add_to_cart", "properties": {"sku": "", "price": -1}})
        else:
            raise ValueError(kind)
        return Produced("channel.web", c.customer_id.encode(), value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
