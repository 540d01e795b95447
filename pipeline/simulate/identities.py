"""Synthetic people with the identity cases that break naive resolution, and the truth about them.

Every identifier the events carry is recorded with the person behind it, so the
graph the pipeline builds can be scored against the truth. The hard cases:

* anonymous browsing with cookies for days, then a login that links them;
* one person with two e-mail addresses, and addresses and phone numbers written
  differently by different channel systems (case, spaces, national format);
* a shop's e-mail platform and call centre that know only the address or number;
* a store purchase with only a loyalty card and a phone number;
* two accounts on one family tablet (the tablet belongs to neither alone);
* links that arrive late: the login that ties a cookie to its owner sent after
  the anonymous visits that came later.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from pipeline.ingest.normalise import normalise_one
from pipeline.simulate.population import Produced


@dataclass(slots=True)
class Person:
    n: int
    customer_id: str
    emails: list[str]
    phone: str | None
    loyalty_id: str | None
    device_id: str | None
    cookies: list[str]
    tablet: str | None = None  # a device shared with another account


@dataclass(slots=True)
class World:
    """The events to send, in order, and who every identifier really belongs to."""

    records: list[Produced] = field(default_factory=list)
    owner: dict[str, int] = field(default_factory=dict)  # "type:normalised value" -> person
    shared: set[str] = field(default_factory=set)  # identifiers used by more than one person
    links: list[list[str]] = field(default_factory=list)  # each event's identifiers, normalised


def build_world(people: int, seed: int = 11, region: str = "DK") -> World:
    rng = random.Random(seed)
    world = World()
    persons = [_person(rng, i) for i in range(people)]
    for a, b in zip(persons[0::20], persons[1::20]):  # one household in ten shares a tablet
        a.tablet = b.tablet = f"tablet-{a.n:06d}"
    seq = 0
    now = datetime.now(timezone.utc).timestamp()

    def emit(person: Person, topic: str, etype: str, channel: str, ids: dict[str, str], **props: Any) -> None:
        nonlocal seq
        seq += 1
        linked = []
        for kind, raw in ids.items():
            value, _ = normalise_one(kind, raw, region)
            assert value is not None, (kind, raw)
            ident = f"{kind}:{value}"
            linked.append(ident)
            if world.owner.setdefault(ident, person.n) != person.n:
                world.shared.add(ident)
        world.links.append(linked)
        event = {
            "event_id": f"id-{seq:09d}", "type": etype, "channel": channel, "occurred_at": _iso(now),
            "identifiers": ids, "properties": props,
        }  # fmt: skip
        world.records.append(Produced(topic, next(iter(ids.values())).encode(), orjson.dumps(event)))

    late: list[Produced] = []
    for p in persons:
        for cookie in p.cookies:  # anonymous visits first
            for _ in range(rng.randint(1, 3)):
                emit(p, "channel.web", "product_view", "web", {"cookie_id": cookie}, sku="MUG-002")
        for cookie in p.cookies:  # then a login per browser: sometimes only sent much later
            before = len(world.records)
            emit(p, "channel.web", "login", "web", {"customer_id": p.customer_id, "cookie_id": cookie, "email": _sloppy(rng, p.emails[0])})
            if rng.random() < 0.3:
                late.append(world.records.pop(before))
        if p.device_id:
            emit(p, "channel.app", "login", "app", {"customer_id": p.customer_id, "device_id": p.device_id})
        if p.tablet:
            emit(p, "channel.app", "login", "app", {"customer_id": p.customer_id, "device_id": p.tablet})
        if p.loyalty_id:
            ids = {"loyalty_id": p.loyalty_id}
            if p.phone:
                ids["phone"] = _national(p.phone)
            emit(p, "channel.store", "loyalty_scan", "store", ids, store_id="store-cph-1")
            emit(p, "channel.app", "signup", "app", {"customer_id": p.customer_id, "loyalty_id": p.loyalty_id})
        for email in p.emails:
            emit(p, "channel.email", "email_open", "email", {"email": _sloppy(rng, email)}, campaign="weekly")
        if len(p.emails) > 1:  # the second address reaches the profile through a chat
            emit(p, "channel.chat", "chat_message", "chat", {"customer_id": p.customer_id, "email": p.emails[1]}, text="hi")
        if p.phone:
            emit(p, "channel.callcenter", "call", "callcenter", {"phone": p.phone}, reason="return")
            emit(p, "channel.callcenter", "call", "callcenter", {"phone": p.phone, "customer_id": p.customer_id}, reason="invoice")
    world.records.extend(late)
    return world


def _person(rng: random.Random, i: int) -> Person:
    emails = [f"person{i}@example.dk"] + ([f"p{i}.work@example.com"] if rng.random() < 0.2 else [])
    return Person(
        n=i,
        customer_id=f"C{i:07d}",
        emails=emails,
        phone=f"+45 {20 + i // 1_000_000} {i // 10_000 % 100:02d} {i // 100 % 100:02d} {i % 100:02d}" if rng.random() < 0.7 else None,
        loyalty_id=f"L{i:08d}" if rng.random() < 0.5 else None,
        device_id=f"dev-{i:07d}" if rng.random() < 0.6 else None,
        cookies=[f"ck-{i}-{k}" for k in range(rng.randint(1, 4))],
    )


def _sloppy(rng: random.Random, email: str) -> str:
    """The same address as different systems write it."""
    return rng.choice([email, email.upper(), f"  {email.title()} "])


def _national(phone: str) -> str:
    return phone.replace("+45", "").replace(" ", "")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
