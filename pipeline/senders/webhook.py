"""``omni send webhook``: POSTs actions as JSON to HTTP destinations from a YAML file, and reports outcomes.

The e-mail sender's structure (:mod:`pipeline.senders.email`), once per destination:
each destination has its own consumer group, loop, delivered-id memory, request pool
(``concurrency``), rate limit and circuit breaker, so a slow or dead destination holds
back only its own offsets, never another's deliveries. Per batch: deliver, record each
result in the memory the moment it is known, report outcomes and dead letters
(:mod:`pipeline.senders.outbox`), then commit. A replayed action whose id is remembered
is not POSTed again; the ``Idempotency-Key`` header (the action id) covers what is left:
the requests in flight at a crash (at most ``concurrency``), whose answers the sender never saw.

Each request is signed (docs/webhooks.md): ``Omni-Signature: t=<unix seconds>,v1=<hex>``,
the hex an HMAC-SHA256 with the destination's secret over ``f"{t}.{body}"``.
Timeouts, connection errors, 429 and 5xx are retried with exponential backoff and full
jitter, honouring ``Retry-After``; other 4xx are not. After the last attempt the action
goes to ``deadletter`` with the destination's answer, and a ``failed`` outcome is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import re
import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, Field, ValidationError, field_validator

from pipeline.actions.model import Action
from pipeline.engine.deadletter import dead_letter
from pipeline.ingest.validate import Rejection
from pipeline.ops.topics import load_topics
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.senders.delivered import DeliveredIds
from pipeline.senders.outbox import outcome_record, report
from pipeline.settings import Settings

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "Omni-Signature"
CLOSED, HALF_OPEN, OPEN = 0, 1, 2  # the breaker-state metric's values
RETRIED = {429} | set(range(500, 600))


# --- configuration ------------------------------------------------------------------------------------


class Destination(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    url: str = Field(pattern=r"^https?://")
    topics: list[str] = Field(min_length=1, description="logical action topics, e.g. actions.sms")
    rules: list[str] = Field(default_factory=list, description="only actions of these rules (all when empty)")
    secret: str = Field(min_length=16)
    timeout_s: float = Field(10.0, gt=0)
    concurrency: int = Field(8, ge=1, le=256)
    rate_per_s: float | None = Field(None, gt=0)
    attempts: int = Field(5, ge=1, le=20)
    backoff_s: float = Field(0.5, gt=0, description="first backoff; doubled each attempt, full jitter")
    backoff_max_s: float = Field(30.0, gt=0)
    breaker_failures: int = Field(5, ge=1, description="consecutive failed requests that open the breaker")
    breaker_open_s: float = Field(30.0, gt=0, description="how long it stays open before one trial request")

    @field_validator("topics")
    @classmethod
    def _action_topics(cls, topics: list[str]) -> list[str]:
        for t in topics:
            if not t.startswith("actions."):
                raise ValueError(f"{t} is not an action topic")
        return topics

    def wants(self, action: Action) -> bool:
        return not self.rules or action.rule in self.rules


class WebhookConfig(BaseModel, extra="forbid"):
    destinations: list[Destination] = Field(min_length=1)

    @field_validator("destinations")
    @classmethod
    def _unique(cls, destinations: list[Destination]) -> list[Destination]:
        names = [d.name for d in destinations]
        if len(names) != len(set(names)):
            raise ValueError(f"destination names must be unique: {names}")
        return destinations


class ConfigError(ValueError):
    pass


class Stopped(Exception):
    """Asked to stop while an action waited (backoff, open breaker): it is neither remembered nor reported."""


def load_config(path: Path) -> WebhookConfig:
    try:
        return WebhookConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


# --- signature, backoff, Retry-After ---------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300.0) -> bool:
    """What a receiver does (docs/webhooks.md has the same in a few lines)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff(attempt: int, base: float, cap: float, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] for attempt 1, 2, ..."""
    return rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def retry_after(value: str | None, now: float, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when - now), cap)


# --- circuit breaker, rate limit -------------------------------------------------------------------


class Breaker:
    """Closed; open after ``failures`` failed requests in a row; after ``open_s`` half-open: one trial decides."""

    def __init__(self, failures: int, open_s: float, clock: Any = time.monotonic) -> None:
        self.failures, self.open_s, self.clock = failures, open_s, clock
        self.state = CLOSED
        self.failed = 0
        self.opened_at = 0.0
        self.trial = False  # a half-open trial in flight

    def wait_s(self) -> float:
        """0 when a request may go now (and, half-open, takes the one trial); else how long to wait."""
        if self.state == OPEN:
            left = self.opened_at + self.open_s - self.clock()
            if left > 0:
                return left
            self.state = HALF_OPEN
        if self.state == HALF_OPEN:
            if self.trial:
                return min(self.open_s, 0.05)
            self.trial = True
        return 0.0

    def success(self) -> None:
        self.state, self.failed, self.trial = CLOSED, 0, False

    def failure(self) -> None:
        self.failed += 1
        if self.state == HALF_OPEN or self.failed >= self.failures:
            self.state, self.opened_at, self.trial = OPEN, self.clock(), False


class RateLimit:
    def __init__(self, per_s: float | None) -> None:
        self.interval = 1.0 / per_s if per_s else 0.0
        self.next_at = 0.0

    async def take(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        at = max(now, self.next_at)
        self.next_at = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


# --- metrics ---------------------------------------------------------------------------------------


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("omni_webhook_requests", "requests by destination and answer (status, timeout, error)",
                                ["destination", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("omni_webhook_request_seconds", "request latency", ["destination"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        self.retries = Counter("omni_webhook_retries", "requests retried", ["destination"], registry=r)
        self.breaker = Gauge("omni_webhook_breaker_state", "0 closed, 1 half-open, 2 open", ["destination"], registry=r)
        self.queue = Gauge("omni_webhook_queue_depth", "actions taken but not yet delivered or failed", ["destination"], registry=r)
        self.outcomes = Counter("omni_webhook_outcomes", "actions by outcome", ["destination", "outcome"], registry=r)


# --- the sender ------------------------------------------------------------------------------------


class DestinationLoop:
    def __init__(self, settings: Settings, dest: Destination, state_dir: Path, metrics: WebhookMetrics,
                 stopping: asyncio.Event, counts: dict[str, int]) -> None:  # fmt: skip
        self.settings, self.dest, self.metrics, self.stopping, self.counts = settings, dest, metrics, stopping, counts
        self.done = DeliveredIds(state_dir / dest.name, settings.sender_keep_s, time.time())
        self.breaker = Breaker(dest.breaker_failures, dest.breaker_open_s)
        self.rate = RateLimit(dest.rate_per_s)
        self.pool = asyncio.Semaphore(dest.concurrency)
        self.http: aiohttp.ClientSession | None = None
        metrics.breaker.labels(dest.name).set(CLOSED)
        metrics.queue.labels(dest.name).set(0)

    async def run(self) -> None:
        s, d = self.settings, self.dest
        partitions = load_topics(s.topics_file)
        consumer = kafka.consumer(s, *(s.topic(t) for t in d.topics), group_id=f"{s.topic_prefix}{s.app_id}-sender-webhook-{d.name}")
        producer = kafka.producer(s)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=d.timeout_s))
        await consumer.start()
        await producer.start()
        try:
            while not self.stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                self.done.rotate(time.time())
                if not batches:
                    continue
                outcomes: list[tuple[str, Record]] = []
                letters: list[tuple[int, Record]] = []
                records = [(tp, rec) for tp, recs in batches.items() for rec in recs]
                self.metrics.queue.labels(d.name).set(len(records))
                results = await asyncio.gather(*(self._one(tp, rec, outcomes, letters) for tp, rec in records),
                                               return_exceptions=True)  # fmt: skip
                errors = [r for r in results if isinstance(r, BaseException)]
                if any(isinstance(e, Stopped) for e in errors):
                    break  # nothing of this batch committed: what was delivered is remembered, the rest replayed
                if errors:
                    raise errors[0]
                await report(s, producer, partitions, outcomes, letters, self.done)
                await consumer.commit()
                self.metrics.queue.labels(d.name).set(0)
        finally:
            await consumer.stop()
            await producer.stop()
            await self.http.close()
            self.done.close()

    async def _one(self, tp: TopicPartition, rec: Any, outcomes: list[tuple[str, Record]], letters: list[tuple[int, Record]]) -> None:
        try:
            action = Action.model_validate_json(rec.value)
        except ValidationError as exc:
            value, headers, ts = dead_letter(rec, tp, Rejection("invalid_event", str(exc.errors()[0]["msg"])))
            letters.append((tp.partition, Record(rec.key, value, headers, ts)))
            return
        if not self.dest.wants(action):
            return
        previous = self.done.get(action.action_id)
        if previous == "reported":
            return
        if previous is None and self.done.too_old(action.created_at, time.time()):
            log.warning("action %s was decided more than OMNI_SENDER_KEEP_S ago: not sent", action.action_id)
            self._count("too_old")
            return
        if previous is None:
            async with self.pool:
                previous = await self._deliver(action, rec.value)
            self.done[action.action_id] = previous  # first, before anything can crash: never sent twice
        outcome, detail = previous
        self._count(outcome)
        self.metrics.outcomes.labels(self.dest.name, outcome).inc()
        self.metrics.queue.labels(self.dest.name).dec()
        outcomes.append((action.action_id, outcome_record(action, outcome, detail, action.channel, destination=self.dest.name)))
        if outcome == "failed":
            reason = Rejection("webhook_failed", f"{self.dest.name}: {detail}"[:1000])
            value, headers, ts = dead_letter(rec, tp, reason)
            letters.append((tp.partition, Record(rec.key, value, headers, ts)))

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def _deliver(self, action: Action, body: bytes) -> tuple[str, str]:
        d, m = self.dest, self.metrics
        assert self.http is not None
        answer = "no attempt"
        for attempt in range(1, d.attempts + 1):
            while (wait := self.breaker.wait_s()) > 0:  # open: wait for the trial, without spending attempts
                m.breaker.labels(d.name).set(self.breaker.state)
                await self._pause(min(wait, 1.0))
            m.breaker.labels(d.name).set(self.breaker.state)
            await self.rate.take()
            ts = int(time.time())
            headers = {"Content-Type": "application/json", "Idempotency-Key": action.action_id,
                       SIGNATURE_HEADER: sign(d.secret, ts, body), "User-Agent": "omni-webhook/1"}  # fmt: skip
            started = time.monotonic()
            wait_s: float | None = None
            try:
                async with self.http.post(d.url, data=body, headers=headers) as resp:
                    text = (await resp.text(errors="replace"))[:500]
                    status = resp.status
                    answer = f"{status} {text}".strip()
                    m.requests.labels(d.name, str(status)).inc()
                    if 200 <= status < 300:
                        self.breaker.success()
                        return "delivered", answer
                    if status not in RETRIED:
                        self.breaker.success()  # the destination is up; the request is what it refuses
                        return "failed", answer
                    wait_s = retry_after(resp.headers.get("Retry-After"), time.time(), d.backoff_max_s)
            except asyncio.TimeoutError:
                m.requests.labels(d.name, "timeout").inc()
                answer = f"timeout after {d.timeout_s} s"
            except aiohttp.ClientError as exc:
                m.requests.labels(d.name, "error").inc()
                answer = f"{type(exc).__name__}: {exc}"
            finally:
                m.latency.labels(d.name).observe(time.monotonic() - started)
            self.breaker.failure()
            m.breaker.labels(d.name).set(self.breaker.state)
            if attempt == d.attempts:
                break
            m.retries.labels(d.name).inc()
            await self._pause(wait_s if wait_s is not None else backoff(attempt, d.backoff_s, d.backoff_max_s))
        return "failed", f"after {d.attempts} attempts: {answer}"

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless asked to stop: then :class:`Stopped`."""
        if self.stopping.is_set():
            raise Stopped
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        if self.stopping.is_set():
            raise Stopped


class WebhookSender:
    def __init__(self, settings: Settings, config: WebhookConfig, state_dir: Path, metrics: WebhookMetrics | None = None) -> None:
        self.stopping = asyncio.Event()
        self.counts: dict[str, int] = {}
        self.metrics = metrics or WebhookMetrics()
        self.loops = [DestinationLoop(settings, d, state_dir, self.metrics, self.stopping, self.counts) for d in config.destinations]

    async def run(self) -> None:
        tasks = [asyncio.create_task(loop.run()) for loop in self.loops]
        try:
            await asyncio.gather(*tasks)
        finally:
            self.stopping.set()
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def topics_of(config: WebhookConfig) -> Iterable[str]:
    return sorted({t for d in config.destinations for t in d.topics})
