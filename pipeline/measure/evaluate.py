"""Does the report tell the truth? A simulated world where each play's true effect is known, run for real.

Each simulated customer meets one play once: a durable bought (consumables
follow-up), a cart left (abandoned cart), a sold-out product viewed and then
restocked (back in stock), the same bags bought three times (repeat purchase).
A closed-loop simulator watches the action topics and the holdout topic: a
customer who got an action buys within the attribution window with probability
``base + effect`` of that play, one who was held out with probability ``base``.
The decision is a hash of the action id, so a run is reproducible. The true
uplift of each play is therefore its ``effect``; the evaluation runs the worker,
the broker and the loop for real, reads the figures from ``/rules/stats`` and
says whether each true effect lies within the report's interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import TopicPartition

from pipeline.actions.catalogue import with_delay
from pipeline.actions.rules import write_variant
from pipeline.bench.workers import WorkerProcess, wait_ready
from pipeline.measure.report import fetch
from pipeline.ops.broker import EmbeddedBroker
from pipeline.ops.topics import HOLDOUTS, OUTCOMES, apply_topics, load_topics
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.runtime.partitioner import partition_for
from pipeline.settings import PACKAGE_DATA, Settings

# The true effect of each play on the chance to buy within the window, and the chance without it.
EFFECTS = {"consumables_follow_up": 0.15, "abandoned_cart": 0.10, "back_in_stock": 0.0, "repeat_purchase": -0.12}
BASE = 0.25
HOLDOUT = 0.3
SOLD_OUT = "PRN-300"


@dataclass(frozen=True, slots=True)
class Verdict:
    rule: str
    true_uplift: float
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    treated: int
    held_out: int

    @property
    def recovered(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None and self.ci_low <= self.true_uplift <= self.ci_high

    def within(self, standard_errors: float) -> bool:
        """The truth within this many standard errors of the estimate (the 95 % interval is 1.96)."""
        if self.estimate is None or self.ci_high is None:
            return False
        se = (self.ci_high - self.estimate) / 1.959964
        return abs(self.estimate - self.true_uplift) <= standard_errors * se


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _event(n: int | str, etype: str, channel: str, customer: str | None, **props: Any) -> bytes:
    ids = {"customer_id": customer, "email": f"{customer.lower()}@example.com"} if customer else {}
    return orjson.dumps({"event_id": f"me-{n}", "type": etype, "channel": channel, "occurred_at": _iso(time.time()),
                         "identifiers": ids, "properties": props})  # fmt: skip


def _chance(action_id: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}|{action_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _rules_file(tmp: Path) -> Path:
    changes = {name: {"holdout": HOLDOUT, "attribution_window": "60s"} if name in EFFECTS else None
               for name in yaml.safe_load((PACKAGE_DATA / "rules.yaml").read_text())["rules"]}  # fmt: skip
    changes["abandoned_cart"]["window"] = "2s"  # type: ignore[index]
    changes["repeat_purchase"]["min_interval"] = "2s"  # type: ignore[index]
    return write_variant(tmp / "rules-measure.yaml", defaults={"quiet_hours": None, "frequency_caps": []}, rules=changes)


class ClosedLoop:
    """Reads every action and would-be action; answers with the purchases and outcomes the world decides."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: set[str] = set()
        self.conversions = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        specs = load_topics(s.topics_file)
        watched = [f"actions.{c}" for c in ("email", "sms", "push", "web")] + [HOLDOUTS]
        tps = [TopicPartition(s.topic(t), p) for t in watched for p in range(specs[t].partitions)]
        consumer, producer = kafka.consumer(s), kafka.producer(s)
        await consumer.start()
        await producer.start()
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                purchases: list[Record] = []
                outcomes: list[Record] = []
                for tp, records in batches.items():
                    held = tp.topic == s.topic(HOLDOUTS)
                    for rec in records:
                        self._answer(orjson.loads(rec.value), held, purchases, outcomes)
                for topic, out in (("channel.web", purchases), (OUTCOMES, outcomes)):
                    if out:
                        await kafka.last_offset(await kafka.send_records(producer, s.topic(topic), 0, out))
        finally:
            await consumer.stop()
            await producer.stop()

    def _answer(self, action: dict[str, Any], held: bool, purchases: list[Record], outcomes: list[Record]) -> None:
        aid, rule = action["action_id"], action["rule"]
        if aid in self.seen or rule not in EFFECTS:
            return
        self.seen.add(aid)
        customer = action["customer"].partition(":")[2]
        if _chance(aid, "buys") < BASE + (0.0 if held else EFFECTS[rule]):
            self.conversions += 1
            purchases.append(Record(customer.encode(), _event(  # its own ids: never taken for a redelivery
                f"conv-{aid}", "purchase", "web", customer, order_id=f"conv-{aid}", currency="EUR", total=19.0,
                items=[{"sku": "TSH-001", "qty": 1, "price": 19.0}],
            )))  # fmt: skip
        if held:
            return
        answered = ["delivered"] + (["opened"] if _chance(aid, "opens") < 0.5 else [])
        if "opened" in answered and _chance(aid, "clicks") < 0.4:
            answered.append("clicked")
        for outcome in answered:
            outcomes.append(Record(action["customer"].encode(), orjson.dumps({
                "action_id": aid, "customer": action["customer"], "outcome": outcome, "occurred_at": _iso(time.time()),
                "rule": rule, "channel": action["channel"],
            })))  # fmt: skip


async def _produce(settings: Settings, topic: str, records: list[tuple[str, bytes]]) -> None:
    """Keyed by customer: a customer's events stay in order, so the same run always has the same triggers."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        partitions = load_topics(settings.topics_file)[topic].partitions
        chunks: dict[int, list[Record]] = {}
        for key, value in records:
            chunks.setdefault(partition_for(key.encode(), partitions), []).append(Record(key.encode(), value))
        sent = []
        for p, chunk in sorted(chunks.items()):
            sent.extend(await kafka.send_records(producer, settings.topic(topic), p, chunk))
        if sent:
            await kafka.last_offset(sent)
    finally:
        await producer.stop()


def _applied(worker: WorkerProcess) -> float:
    return worker.metrics().get("omni_events_processed_total", 0.0)


def evaluate(customers_per_play: int = 1000, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the world through a real broker and worker; the per-rule verdicts and the figures behind them."""
    n_plays = len(EFFECTS)
    log(f"measurement evaluation: {customers_per_play} customers per play, holdout {HOLDOUT:.0%}, "
        f"true effects {EFFECTS}, base rate {BASE}")  # fmt: skip
    with EmbeddedBroker(Settings.from_env()) as broker, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = Settings.from_env().model_copy(update={
            "bootstrap": broker.bootstrap, "topic_prefix": f"meas-{uuid.uuid4().hex[:6]}.", "state_dir": tmp / "state",
            "rules_file": _rules_file(tmp), "catalogue_file": with_delay(tmp, "2s"), "commit_interval_s": 1.0,
            "api_token": uuid.uuid4().hex,
        })  # fmt: skip
        asyncio.run(apply_topics(settings, load_topics(settings.topics_file)))
        worker = WorkerProcess.start(settings, tmp / "worker.log")
        try:
            wait_ready([worker], load_topics(settings.topics_file)["internal.events-by-customer"].partitions)
            stats = asyncio.run(_run_world(settings, worker, customers_per_play, n_plays, log))
        finally:
            worker.stop()
    verdicts = []
    for row in stats["rules"]:
        if row["rule"] in EFFECTS:
            verdicts.append(Verdict(row["rule"], EFFECTS[row["rule"]], row["uplift"], row["ci_low"], row["ci_high"],
                                    row["sent"], row["held_out"]))  # fmt: skip
    for v in verdicts:
        shown = "n/a" if v.estimate is None else f"{v.estimate:+.3f} [{v.ci_low:+.3f}, {v.ci_high:+.3f}]"
        log(f"  {v.rule:24} true {v.true_uplift:+.3f}  estimated {shown}  treated {v.treated}, held out {v.held_out}: "
            f"{'recovered' if v.recovered else 'NOT within the 95 % interval'}")  # fmt: skip
    return {"stats": stats, "verdicts": [{**asdict(v), "recovered": v.recovered} for v in verdicts],
            "customers_per_play": customers_per_play, "base": BASE, "holdout": HOLDOUT}  # fmt: skip


async def _run_world(settings: Settings, worker: WorkerProcess, per_play: int, n_plays: int, log: Callable[[str], None]) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = ClosedLoop(settings)
    answering = asyncio.create_task(loop.run(stop))
    n = 0

    def next_n() -> int:
        nonlocal n
        n += 1
        return n

    async def applied_at_least(count: float, what: str) -> None:
        deadline = time.monotonic() + 120
        while await asyncio.to_thread(_applied, worker) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.25)

    try:
        await _produce(settings, "ops.inventory", [(SOLD_OUT, _event(next_n(), "inventory_update", "ops", None, sku=SOLD_OUT, available_qty=0))])
        await applied_at_least(1, "the product to sell out")
        people = [f"M{i:06d}" for i in range(per_play * n_plays)]
        web: list[tuple[str, bytes]] = []
        for i, c in enumerate(people):
            play = i % n_plays
            if play == 0:  # consumables follow-up
                web.append((c, _event(next_n(), "purchase", "web", c, order_id=f"d-{c}", currency="EUR", total=249.0,
                                      items=[{"sku": "VAC-100", "qty": 1, "price": 249.0}])))  # fmt: skip
            elif play == 1:  # abandoned cart
                web.append((c, _event(next_n(), "add_to_cart", "web", c, sku="MUG-002", qty=1, price=9.0)))
            elif play == 2:  # back in stock
                web.append((c, _event(next_n(), "product_view", "web", c, sku=SOLD_OUT)))
            else:  # repeat purchase
                for k in range(3):
                    web.append((c, _event(next_n(), "purchase", "web", c, order_id=f"r-{c}-{k}", currency="EUR", total=14.0,
                                          items=[{"sku": "BAG-100", "qty": 1, "price": 14.0}])))  # fmt: skip
        await _produce(settings, "channel.web", web)
        await applied_at_least(1 + len(web), "the customers' events")
        await _produce(settings, "ops.inventory", [(SOLD_OUT, _event(next_n(), "inventory_update", "ops", None, sku=SOLD_OUT, available_qty=40))])
        expected = len(people)
        deadline = time.monotonic() + 180
        while len(loop.seen) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        log(f"  {len(loop.seen)} of {expected} customers got an action or were held out; {loop.conversions} bought")
        await applied_at_least(2 + len(web) + loop.conversions, "the conversions")
        await asyncio.sleep(1.0)
        return await asyncio.to_thread(fetch, f"http://127.0.0.1:{worker.port}", settings.auth_headers)
    finally:
        stop.set()
        await answering


def main(customers_per_play: int, out: Path | None, html: Path | None) -> bool:
    from pipeline.measure.report import page, table

    result = evaluate(customers_per_play)
    print(table(result["stats"]))
    if out:
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    if html:
        html.write_text(page(result["stats"]), encoding="utf-8")
    return all(v["recovered"] for v in result["verdicts"])

