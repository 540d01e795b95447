"""Test helpers that talk to the real broker: produce, read to the true end, run an engine."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import TopicPartition

from pipeline.actions.catalogue import Catalogue, with_delay
from pipeline.actions.rules import write_variant
from pipeline.engine.omnichannel import omnichannel_engine
from pipeline.ops.metrics import Metrics
from pipeline.ops.topics import apply_topics, load_topics
from pipeline.runtime import kafka
from pipeline.runtime.engine import Engine
from pipeline.runtime.kafka import Record
from pipeline.settings import Settings


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def event(etype: str, channel: str, identifiers: dict[str, str], event_id: str, /, at: float | None = None, **props: Any) -> dict[str, Any]:  # fmt: skip
    """A raw event as a channel system would send it; ``props`` become its properties."""
    return {
        "event_id": event_id,
        "type": etype,
        "channel": channel,
        "occurred_at": iso(at if at is not None else time.time()),
        "identifiers": identifiers,
        "properties": props,
    }


def clean(raw: dict[str, Any]) -> dict[str, Any]:
    """What the validator hands on for a raw test event: its ``ts``, identifiers as given."""
    return {**raw, "ts": datetime.fromisoformat(raw["occurred_at"].replace("Z", "+00:00")).timestamp()}


def purchase(customer: str, event_id: str, skus: list[str], channel: str = "web", order_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    items = [{"sku": s, "qty": 1, "price": 10.0} for s in skus]
    return event(
        "purchase", channel, {"customer_id": customer, "email": f"{customer.lower()}@example.com"}, event_id,
        order_id=order_id or f"O-{event_id}", items=items, total=10.0 * len(skus), currency="EUR",
        fulfilment="delivery",
    )  # fmt: skip


def catalogue_with_delay(tmp_path: Path, delay: str) -> Path:
    """The default catalogue with every follow-up delay set to ``delay``."""
    return with_delay(tmp_path, delay)


def write_rules(tmp_path: Path, defaults: dict[str, Any] | None = None, **rules: dict[str, Any] | None) -> Path:
    """The default rules catalogue with changes: ``defaults`` merged in, each named rule updated (None drops it).

    Quiet hours are off unless ``defaults`` sets them: a test must not depend on the hour it runs at. No
    customer is held out unless a rule's change sets ``holdout``: which customers a 5 % holdout takes is a
    hash, and a test about a cart reminder must not find its customer held out.
    """
    from pipeline.settings import PACKAGE_DATA

    names = yaml.safe_load((PACKAGE_DATA / "rules.yaml").read_text())["rules"]
    changes = {name: {"holdout": 0} for name in names}
    for name, change in rules.items():
        changes[name] = None if change is None else {**changes[name], **change}  # type: ignore[dict-item]
    path = tmp_path / f"rules-{uuid.uuid4().hex[:6]}.yaml"
    return write_variant(path, defaults={"quiet_hours": None, **(defaults or {})}, rules=changes)


async def create_topics(settings: Settings) -> None:
    assert await apply_topics(settings, load_topics(settings.topics_file)) == []


async def produce(settings: Settings, logical_topic: str, values: list[bytes], key: bytes = b"k") -> None:
    """Produce raw values in order to partition 0 of a topic."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        sent = await kafka.send_records(producer, settings.topic(logical_topic), 0, [Record(key, v) for v in values])
        await kafka.last_offset(sent)
    finally:
        await producer.stop()


@dataclass
class Read:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


async def read_topic(
    settings: Settings, logical_topic: str, *, until: Callable[[list[Read]], bool] | None = None, timeout_s: float = 10.0
) -> list[Read]:
    """Every record of a topic: to its true end (Fetch high watermarks), or until ``until`` holds."""
    topic = settings.topic(logical_topic)
    partitions = load_topics(settings.topics_file)[logical_topic].partitions
    consumer = kafka.consumer(settings)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    out: list[Read] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for tp, records in batches.items():
                out.extend(Read(r.key, r.value, dict(r.headers), tp.partition, r.offset) for r in records)
            if until is not None:
                if until(out):
                    break
            else:
                highs = [consumer.highwater(tp) for tp in tps]
                if None not in highs and all([await consumer.position(tp) >= h for tp, h in zip(tps, highs)]):
                    break
        return out
    finally:
        await consumer.stop()


async def read_json(settings: Settings, logical_topic: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await read_topic(settings, logical_topic, **kwargs) if r.value]


async def read_actions(settings: Settings, **kwargs: Any) -> list[dict[str, Any]]:
    actions: list[dict[str, Any]] = []
    for channel in ("email", "sms", "push", "web", "callcenter", "store"):
        actions.extend(await read_json(settings, f"actions.{channel}", timeout_s=kwargs.get("timeout_s", 3.0)))
    return actions


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a metric's samples that carry the given labels."""
    total = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


@contextlib.asynccontextmanager
async def running_engine(settings: Settings, catalogue_path: Path | None = None) -> AsyncIterator[Engine]:
    """A real engine, in this process, against the real broker."""
    catalogue = Catalogue.load(catalogue_path or settings.catalogue_file)
    engine = omnichannel_engine(settings, catalogue, Metrics())
    await engine.start()
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.wait_for(engine.ready.wait(), timeout=30)
        yield engine
    finally:
        engine.stopping.set()
        await asyncio.wait_for(task, timeout=10)
        await engine.stop()


def issue_certificate(directory: Path, ca: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1: (CA bundle, certificate, key)."""
    directory.mkdir(parents=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", f"/CN={ca}")
    openssl("req", *ec, "-keyout", "key.pem", "-out", "worker.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "worker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "cert.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
