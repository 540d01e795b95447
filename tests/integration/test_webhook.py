"""The webhook sender against a real aiohttp server on loopback (which checks every signature) and a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from pipeline.actions.model import Action
from pipeline.ops.broker import free_port
from pipeline.senders.webhook import SIGNATURE_HEADER, Destination, WebhookConfig, WebhookSender, verify
from pipeline.settings import Settings
from tests.helpers import create_topics, produce, read_json, read_topic

SECRET = "whsec_test-0123456789"
# An answer: (status, headers, seconds to wait before it)
Answer = tuple[int, dict[str, str], float]


@dataclass
class Receiver:
    """Answers per destination path from a script; records each request (and whether its signature verified)."""

    script: dict[str, Callable[[int], Answer]] = field(default_factory=dict)
    calls: list[tuple[str, str, float, bool]] = field(default_factory=list)  # (destination, key, time, verified)
    answered: list[tuple[str, str, float]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        dest = request.match_info["dest"]
        body = await request.read()
        key = request.headers.get("Idempotency-Key", "")
        ok = verify(SECRET, request.headers.get(SIGNATURE_HEADER, ""), body, time.time())
        ok = ok and key == Action.model_validate_json(body).action_id
        nth = sum(1 for d, k, _, _ in self.calls if d == dest and k == key)
        self.calls.append((dest, key, time.monotonic(), ok))
        status, headers, delay = self.script.get(dest, lambda n: (200, {}, 0.0))(nth)
        if not ok:
            status, headers, delay = 401, {}, 0.0
        await asyncio.sleep(delay)
        self.answered.append((dest, key, time.monotonic()))
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    def keys(self, dest: str) -> list[str]:
        return [k for d, k, _, _ in self.calls if d == dest]


@contextlib.asynccontextmanager
async def serving(receiver: Receiver, port: int) -> AsyncIterator[None]:
    app = web.Application()
    app.router.add_post("/{dest}", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


def action(n: int, rule: str = "abandoned_cart") -> bytes:
    return Action(
        action_id=f"act-{rule}-{n:04d}", rule=rule, kind="marketing", action="cart_reminder", customer=f"customer_id:C{n}",
        channel="sms", locale="en", message=f"You left something behind ({n}).", reason="test", trigger_event_ids=[f"e{n}"],
        facts={}, address="+4512345678", created_at=time.time(),
    ).model_dump_json().encode()  # fmt: skip


def destination(name: str, port: int, **kw: Any) -> Destination:
    options: dict[str, Any] = {"topics": ["actions.sms"], "secret": SECRET, "timeout_s": 2.0, "attempts": 4,
                               "backoff_s": 0.05, "backoff_max_s": 0.5, "breaker_failures": 50, "breaker_open_s": 0.5, **kw}  # fmt: skip
    return Destination(name=name, url=f"http://127.0.0.1:{port}/{name}", **options)


@contextlib.asynccontextmanager
async def running(settings: Settings, tmp_path: Path, *destinations: Destination) -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(settings, WebhookConfig(destinations=list(destinations)), tmp_path / "webhook")
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        sender.stopping.set()
        await asyncio.wait_for(task, timeout=20)


def parsed(records: list[Any]) -> list[dict[str, Any]]:
    """What a read_topic ``until`` sees, as JSON."""
    return [orjson.loads(r.value) for r in records if r.value]


def by_destination(outcomes: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for o in outcomes:
        found.setdefault(o["destination"], []).append((o["action_id"], o["outcome"]))
    return found


async def test_each_answer_ends_as_it_should(settings: Settings, tmp_path: Path) -> None:
    """500 twice then 200: delivered; 429 with Retry-After: waited for; 400: no retry, failed; a hang: retried, failed."""
    await create_topics(settings)
    port = free_port()
    receiver = Receiver(script={
        "flaky": lambda n: (500, {}, 0.0) if n < 2 else (200, {}, 0.0),
        "busy": lambda n: (429, {"Retry-After": "1"}, 0.0) if n == 0 else (200, {}, 0.0),
        "refuses": lambda n: (400, {}, 0.0),
        "hangs": lambda n: (200, {}, 5.0),
    })  # fmt: skip
    await produce(settings, "actions.sms", [action(1, "flaky"), action(2, "busy"), action(3, "refuses"), action(4, "hangs")])
    dests = [destination(name, port, rules=[name], backoff_max_s=5.0) for name in ("flaky", "busy", "refuses")]
    dests.append(destination("hangs", port, rules=["hangs"], timeout_s=0.3, attempts=3))
    async with serving(receiver, port), running(settings, tmp_path, *dests) as sender:
        outcomes = await read_json(settings, "outcomes", until=lambda rs: len(rs) >= 4, timeout_s=30)
        letters = await read_topic(settings, "deadletter", until=lambda rs: len(rs) >= 2, timeout_s=10)
    assert by_destination(outcomes) == {
        "flaky": [("act-flaky-0001", "delivered")], "busy": [("act-busy-0002", "delivered")],
        "refuses": [("act-refuses-0003", "failed")], "hangs": [("act-hangs-0004", "failed")],
    }  # fmt: skip
    assert all(ok for *_, ok in receiver.calls), "a request whose signature did not verify"
    assert len(receiver.keys("flaky")) == 3 and len(receiver.keys("refuses")) == 1 and len(receiver.keys("hangs")) == 3
    busy = [t for d, _, t, _ in receiver.calls if d == "busy"]
    assert len(busy) == 2 and busy[1] - busy[0] >= 0.95  # Retry-After: 1, against a 0.05 s backoff
    reasons = {r.value and Action.model_validate_json(r.value).rule: r.headers for r in letters}
    assert set(reasons) == {"refuses", "hangs"} and all(h["dlq.reason"] == b"webhook_failed" for h in reasons.values())
    assert b"400 answer 400" in reasons["refuses"]["dlq.error"] and b"timeout" in reasons["hangs"]["dlq.error"]
    m = sender.metrics
    assert m.registry.get_sample_value("omni_webhook_requests_total", {"destination": "flaky", "status": "500"}) == 2
    assert m.registry.get_sample_value("omni_webhook_retries_total", {"destination": "hangs"}) == 2


async def test_a_destination_down_for_a_while_gets_its_actions_when_it_is_up(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    port = free_port()
    receiver = Receiver()
    await produce(settings, "actions.sms", [action(n) for n in range(3)])
    dest = destination("crm", port, attempts=20, backoff_s=0.1, backoff_max_s=0.3, breaker_failures=3, breaker_open_s=0.5)
    async with running(settings, tmp_path, dest) as sender:
        deadline = time.monotonic() + 20  # refused connections meanwhile: the breaker opens
        while time.monotonic() < deadline and (sender.metrics.registry.get_sample_value(
                "omni_webhook_requests_total", {"destination": "crm", "status": "error"}) or 0) < 4:  # fmt: skip
            await asyncio.sleep(0.05)
        opened = sender.metrics.registry.get_sample_value("omni_webhook_breaker_state", {"destination": "crm"})
        errors = sender.metrics.registry.get_sample_value("omni_webhook_requests_total", {"destination": "crm", "status": "error"})
        async with serving(receiver, port):
            outcomes = await read_json(settings, "outcomes", until=lambda rs: len(rs) >= 3, timeout_s=30)
    assert opened in (1, 2) and errors and errors >= 3
    assert sorted(o["outcome"] for o in outcomes) == ["delivered"] * 3
    assert sorted(receiver.keys("crm")) == sorted({f"act-abandoned_cart-{n:04d}" for n in range(3)})  # once each
    assert sender.metrics.registry.get_sample_value("omni_webhook_breaker_state", {"destination": "crm"}) == 0


async def test_a_slow_destination_does_not_delay_another(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    port = free_port()
    receiver = Receiver(script={"slow": lambda n: (200, {}, 4.0)})
    await produce(settings, "actions.sms", [action(n) for n in range(5)])
    async with serving(receiver, port), running(settings, tmp_path, destination("slow", port, timeout_s=10),
                                               destination("fast", port)):  # fmt: skip
        outcomes = await read_json(settings, "outcomes", until=lambda rs: len(by_destination(parsed(rs)).get("fast", [])) >= 5, timeout_s=20)
        slow_answered = [a for a in receiver.answered if a[0] == "slow"]
        await read_json(settings, "outcomes", until=lambda rs: len(rs) >= 10, timeout_s=20)
    assert sorted(by_destination(outcomes)["fast"]) == sorted((f"act-abandoned_cart-{n:04d}", "delivered") for n in range(5))
    assert slow_answered == [], "the fast destination's outcomes waited for the slow one"
    assert len(receiver.keys("slow")) == 5
