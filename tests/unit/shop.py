"""A shop with no broker: the real processor over one in-memory state partition (tests of plays and measuring)."""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline.actions.catalogue import Catalogue
from pipeline.actions.model import Action
from pipeline.engine.processor import Processor
from pipeline.ingest.contract import PRODUCT_EVENT_TYPES
from pipeline.ingest.validate import Rejection
from pipeline.runtime.state.memory import MemoryStore
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import PACKAGE_DATA, Settings
from tests.helpers import event, purchase, write_rules

T0 = float(int(time.time()) - 3600)  # events an hour old, whole seconds; "now" is whatever the test says
DAY = 86_400.0
ANNA = {"customer_id": "C1", "email": "anna@example.dk", "device_id": "dev-1", "phone": "+45 20 12 34 56"}


class Shop:
    """The processor over one in-memory partition: every actor local, every message delivered at once."""

    def __init__(self, tmp_path: Path, defaults: dict[str, Any] | None = None, **rules: Any) -> None:
        settings = Settings(rules_file=write_rules(tmp_path, defaults, **rules))
        self.processor = Processor(settings, Catalogue.load(PACKAGE_DATA / "catalogue.yaml"))
        self.state = PartitionState.open(0, MemoryStore())
        self.n = 0
        self.held: list[Action] = []

    def send(self, etype: str, channel: str, ids: dict[str, str], at: float, /, **props: Any) -> str:
        self.n += 1
        raw = event(etype, channel, ids, f"e{self.n}", at=at, **props)
        self.raw(raw)
        return raw["event_id"]

    def raw(self, raw: dict[str, Any]) -> None:
        topic = {"inventory_update": "ops.inventory", "order_ready_for_pickup": "ops.orders"}.get(raw["type"], f"channel.{raw['channel']}")
        at = datetime.fromisoformat(raw["occurred_at"].replace("Z", "+00:00")).timestamp()
        result = self.processor.ingest(topic, orjson.dumps(raw), max(time.time(), at + 1))  # the test's clock
        assert not isinstance(result, Rejection), result
        key, clean = result
        self.deliver(key, {"op": "product" if clean["type"] in PRODUCT_EVENT_TYPES else "ev", "event": clean})

    def outcome(self, action: Action, outcome: str, at: float) -> None:
        """A sender's report on an action, through the ``outcomes`` path."""
        report = {"action_id": action.action_id, "customer": action.customer, "outcome": outcome,
                  "occurred_at": event("login", "web", {}, "x", at=at)["occurred_at"], "rule": action.rule}  # fmt: skip
        result = self.processor.ingest_outcome(orjson.dumps(report), max(time.time(), at + 1))
        assert not isinstance(result, Rejection), result
        self.deliver(*result)

    def deliver(self, key: str, msg: dict[str, Any]) -> None:
        queue = deque([(key, msg)])
        while queue:
            target, msg = queue.popleft()
            out: list[tuple[str, dict[str, Any]]] = []
            self.processor.handle(self.state, target, msg, time.time(), out, [])
            queue.extend(out)

    def buy(self, skus: list[str], at: float, channel: str = "web", ids: dict[str, str] = ANNA, **extra: Any) -> str:
        self.n += 1
        raw = purchase("C1", f"e{self.n}", skus, channel=channel)
        raw["identifiers"] = ids
        raw["occurred_at"] = event("login", "web", {}, "x", at=at)["occurred_at"]
        raw["properties"].update(extra)
        self.raw(raw)
        return raw["event_id"]

    def fire(self, now: float) -> list[Action]:
        """The actions sent (held-out ones are in ``self.held``)."""
        sends: list[tuple[str, dict[str, Any]]] = []
        decided = self.processor.fire_due(self.state, now, sends, [])
        for target, msg in sends:  # a lock opened by its bound
            self.deliver(target, msg)
        self.held.extend(a for topic, a in decided if topic == "actions.holdout")
        return [a for topic, a in decided if topic != "actions.holdout"]

    def profile(self, pid: str = "customer_id:C1") -> dict[str, Any]:
        return self.state.txn.get(pid.encode())  # type: ignore[no-any-return]

    @property
    def suppressed(self) -> dict[tuple[str, str], int]:
        return dict(self.processor.tally.suppressed)
