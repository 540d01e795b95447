"""The webhook sender's parts without a broker: signature, backoff, Retry-After, breaker, configuration."""

from __future__ import annotations

import random
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from pipeline.senders.webhook import CLOSED, HALF_OPEN, OPEN, Breaker, ConfigError, backoff, load_config, retry_after, sign, verify

SECRET = "whsec_0123456789abcdef"


def test_signature_is_hmac_sha256_over_timestamp_dot_body_and_verifies() -> None:
    import hashlib
    import hmac

    body = b'{"action_id":"a1"}'
    header = sign(SECRET, 1700000000, body)
    assert header == "t=1700000000,v1=" + hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify(SECRET, header, body, now=1700000010)
    assert not verify(SECRET, header, body + b" ", now=1700000010)  # body changed
    assert not verify("another-secret-0000", header, body, now=1700000010)
    assert not verify(SECRET, header, body, now=1700000000 + 301)  # too old: a replayed request
    assert not verify(SECRET, header.replace("t=1700000000", "t=1700000001"), body, now=1700000010)
    assert not verify(SECRET, "garbage", body, now=1700000010)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0)):
        waits = [backoff(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8 and min(waits) < ceiling * 0.2  # spread over the whole range


def test_retry_after_seconds_dates_caps_and_garbage() -> None:
    now = time.time()
    assert retry_after("3", now, 30) == 3.0
    assert retry_after("120", now, 30) == 30.0
    assert retry_after(None, now, 30) is None and retry_after("soon", now, 30) is None
    assert 9 <= retry_after(formatdate(now + 10, usegmt=True), now, 30) <= 10  # type: ignore[operator]
    assert retry_after(formatdate(now - 100, usegmt=True), now, 30) == 0.0


def test_breaker_opens_after_failures_half_opens_after_the_pause_and_one_trial_decides() -> None:
    clock = [0.0]
    b = Breaker(failures=3, open_s=10, clock=lambda: clock[0])
    for _ in range(2):
        assert b.wait_s() == 0
        b.failure()
    assert b.state == CLOSED
    b.success()
    assert b.failed == 0  # a success resets the count
    for _ in range(3):
        b.failure()
    assert b.state == OPEN and b.wait_s() == 10
    clock[0] = 9.5
    assert b.wait_s() == pytest.approx(0.5)
    clock[0] = 10.0
    assert b.wait_s() == 0 and b.state == HALF_OPEN  # the one trial
    assert b.wait_s() > 0  # a second request waits for the trial's answer
    b.failure()
    assert b.state == OPEN and b.wait_s() == 10  # the trial failed: open again
    clock[0] = 20.0
    assert b.wait_s() == 0
    b.success()
    assert b.state == CLOSED and b.wait_s() == 0 and b.wait_s() == 0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "webhooks.yaml"
    path.write_text(text)
    return path


GOOD = f"""
destinations:
  - name: sms-gateway
    url: https://sms.example.com/hooks/omni
    topics: [actions.sms]
    secret: {SECRET}
    timeout_s: 5
    concurrency: 4
    rate_per_s: 20
  - name: crm
    url: http://127.0.0.1:9000/omni
    topics: [actions.email, actions.push]
    rules: [abandoned_cart]
    secret: {SECRET}
"""


def test_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    sms, crm = config.destinations
    assert sms.concurrency == 4 and sms.rate_per_s == 20 and sms.attempts == 5
    assert crm.rules == ["abandoned_cart"] and crm.timeout_s == 10.0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("url: https://sms.example.com/hooks/omni", "url: ftp://x"), "url"),
        (("topics: [actions.sms]", "topics: [channel.web]"), "topics"),
        (("topics: [actions.sms]", "topics: []"), "topics"),
        ((f"secret: {SECRET}\n    timeout_s", "secret: short\n    timeout_s"), "secret"),
        (("timeout_s: 5", "timeout_s: 0"), "timeout_s"),
        (("concurrency: 4", "concurrency: 0"), "concurrency"),
        (("rate_per_s: 20", "rate_per_s: 20\n    colour: red"), "colour"),
        (("name: crm", "name: sms-gateway"), "unique"),
    ],
)
def test_config_refuses_bad_fields_naming_them(tmp_path: Path, change: tuple[str, str], named: str) -> None:
    assert change[0] in GOOD
    with pytest.raises(ConfigError, match=named):
        load_config(write(tmp_path, GOOD.replace(*change, 1)))


def test_config_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="webhooks.yaml"):
        load_config(tmp_path / "webhooks.yaml")


def test_an_action_waiting_when_the_sender_stops_is_neither_failed_nor_remembered(tmp_path: Path) -> None:
    """Stopping during a backoff or an open breaker leaves the action to the replay, not to `failed`."""
    import asyncio

    from pipeline.senders.webhook import Destination, DestinationLoop, Stopped, WebhookMetrics
    from pipeline.settings import Settings

    async def scenario() -> None:
        stopping = asyncio.Event()
        dest = Destination(name="crm", url="http://127.0.0.1:1/x", topics=["actions.sms"], secret=SECRET)
        loop = DestinationLoop(Settings(), dest, tmp_path, WebhookMetrics(), stopping, {})
        try:
            asyncio.get_running_loop().call_later(0.05, stopping.set)
            started = time.monotonic()
            with pytest.raises(Stopped):
                await loop._pause(30)
            assert time.monotonic() - started < 5
        finally:
            loop.done.close()

    asyncio.run(scenario())
