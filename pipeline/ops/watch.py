"""The live view: next-best-actions and identity merges as they happen, one line each, plus a pulse.

    10:31:07  email  customer_id:C0000042  offer_consumable  bought Vacuum cleaner V100 (store, ...); ...
    10:31:08  merged  cookie_id:ck-3f2a… into customer_id:C0000042  (cookie_id:ck-3f2a…, login e-…)
    ── 10:31:10  events 5,210 (+412/s) · dead-lettered 18 · merged 4 · actions 31 · timers 57 · lag 0 · p99 12 ms

It reads the action and merge topics without a consumer group (it never disturbs
anyone's offsets) and scrapes the worker's /metrics for the pulse line.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from datetime import datetime
from typing import TextIO

import orjson
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from pipeline.actions.model import ACTION_CHANNELS
from pipeline.ops.topics import MERGES, load_topics
from pipeline.runtime import kafka
from pipeline.settings import Settings

COLOURS = {"email": "36", "sms": "35", "push": "33", "web": "34", "callcenter": "32", "store": "31"}


def _paint(text: str, code: str, tty: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if tty else text


def format_merge(merge: dict, tty: bool = False) -> str:  # type: ignore[type-arg]
    at = datetime.now().strftime("%H:%M:%S")
    if merge.get("split"):
        return f"{at}  {_paint('split     ', '1', tty)} {merge['separated']} out of {merge['survivor']}  (by {merge['by']})"
    ids = ", ".join(f"{kind}:{v}" for kind, values in merge["identifiers"].items() for v in values)
    return f"{at}  {_paint('merged    ', '1', tty)} {merge['merged']} into {merge['survivor']}  ({ids}; event {merge['trigger_event_id']})"


def format_action(action: dict, tty: bool = False) -> str:  # type: ignore[type-arg]
    at = datetime.fromtimestamp(action["created_at"]).strftime("%H:%M:%S")
    channel = _paint(f"{action['channel']:<10}", COLOURS.get(action["channel"], "0"), tty)
    return f"{at}  {channel} {action['customer']:<26} {_paint(action['action'], '1', tty):<18}  {action['reason']}"


def scrape(url: str) -> dict[str, float]:
    """Sum every series of each metric family: enough for a pulse line."""
    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    quantile_source: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                quantile_source.setdefault(sample.name, []).append((float(sample.labels["le"]), sample.value))
            elif not sample.name.endswith(("_created", "_sum")):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    buckets = sorted(quantile_source.get("omni_event_latency_seconds_bucket", []))
    if buckets and buckets[-1][1] > 0:
        target = 0.99 * buckets[-1][1]
        sums["p99"] = next(le for le, count in buckets if count >= target)
    return sums


class Pulse:
    def __init__(self, url: str) -> None:
        self.url = url
        self.last: tuple[float, float] | None = None

    def line(self) -> str:
        try:
            m = scrape(self.url)
        except OSError:
            return "── worker metrics not reachable yet"
        events = m.get("omni_events_in_total", 0.0)
        now = time.monotonic()
        rate = f"+{(events - self.last[1]) / (now - self.last[0]):,.0f}/s" if self.last else "starting"
        self.last = (now, events)
        p99 = m.get("p99")
        p99_text = "n/a" if p99 is None else ("> 30 s" if p99 == float("inf") else f"<= {p99 * 1000:g} ms")
        return (
            f"── {datetime.now():%H:%M:%S}  events {int(events):,} ({rate}) · "
            f"dead-lettered {int(m.get('omni_deadletter_total', 0)):,} · "
            f"merged {int(m.get('omni_identity_merges_total', 0)):,} · "
            f"duplicates {int(m.get('omni_duplicates_total', 0)):,} · "
            f"actions {int(m.get('omni_actions_total', 0)):,} · timers {int(m.get('omni_timers_pending', 0)):,} · "
            f"lag {int(m.get('omni_consumer_lag', 0)):,} · p99 latency {p99_text}"
        )


async def watch(
    settings: Settings, metrics_url: str | None = None, out: TextIO = sys.stdout, pulse_every_s: float = 5.0,
    stop: asyncio.Event | None = None,
) -> None:  # fmt: skip
    specs = load_topics(settings.topics_file)
    tty = out.isatty()
    consumer = kafka.consumer(settings)
    await consumer.start()
    watched = [f"actions.{c}" for c in ACTION_CHANNELS] + [MERGES]
    tps = [TopicPartition(settings.topic(name), p) for name in watched for p in range(specs[name].partitions)]
    merges_topic = settings.topic(MERGES)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    pulse = Pulse(metrics_url) if metrics_url else None
    last_pulse = time.monotonic()
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=250)
            for tp, records in batches.items():
                show = format_merge if tp.topic == merges_topic else format_action
                for rec in records:
                    print(show(orjson.loads(rec.value), tty), file=out, flush=True)
            if pulse and time.monotonic() - last_pulse >= pulse_every_s:
                last_pulse = time.monotonic()
                print(_paint(pulse.line(), "2", tty), file=out, flush=True)
    finally:
        await consumer.stop()
