"""The reference e-mail sender against a real SMTP server on loopback and a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller

from pipeline.actions.model import Action
from pipeline.bench.workers import free_port
from pipeline.settings import Settings
from tests.helpers import create_topics, produce, read_json, read_topic


class Mailbox:
    """An SMTP server's handler: keeps what it accepts; an address starting with "bounce" does not exist."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address.startswith("bounce"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"

    def message_ids(self) -> list[str]:
        ids = []
        for envelope in self.messages:
            for line in envelope.content.decode().splitlines():
                if line.lower().startswith("message-id:"):
                    ids.append(line.split(":", 1)[1].strip())
        return ids


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def action(n: int, address: str, locale: str = "en") -> bytes:
    return Action(
        action_id=f"act-{n:04d}", rule="abandoned_cart", kind="marketing", action="cart_reminder", customer=f"customer_id:C{n}",
        channel="email", locale=locale, message=f"You left something behind ({n}).", reason="test", trigger_event_ids=[f"e{n}"],
        facts={}, address=address, created_at=time.time(),
    ).model_dump_json().encode()  # fmt: skip


def start_sender(settings: Settings, port: int, state: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP": settings.bootstrap or "", "OMNI_TOPIC_PREFIX": settings.topic_prefix}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "send", "email", "--smtp-host", "127.0.0.1", "--smtp-port", str(port),
         "--state-dir", str(state)], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


async def test_delivers_reports_bounces_and_sends_nothing_twice_across_a_crash(
    settings: Settings, tmp_path: Path, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    await create_topics(settings)
    first = [action(1, "anna@example.dk", "da"), action(2, "bounce@example.dk"), b"{not an action", action(3, "bo@example.dk")]
    await produce(settings, "actions.email", first)
    sender = start_sender(settings, port, tmp_path / "sender", tmp_path / "sender.log")
    try:
        outcomes = await read_json(settings, "outcomes", until=lambda rs: len(rs) >= 3, timeout_s=60)
    finally:
        sender.send_signal(signal.SIGKILL)  # no goodbye: whatever it had not committed is replayed
        sender.wait(timeout=10)
    assert sorted((o["action_id"], o["outcome"]) for o in outcomes) == [
        ("act-0001", "delivered"), ("act-0002", "bounced"), ("act-0003", "delivered"),
    ]
    assert "550" in next(o["detail"] for o in outcomes if o["outcome"] == "bounced")
    danish = next(m for m in box.messages if "anna@example.dk" in m.rcpt_tos).content.decode()
    assert "Din kurv venter" in danish and "Message-ID: <act-0001@omni>" in danish
    letters = await read_topic(settings, "deadletter", until=lambda rs: len(rs) >= 1, timeout_s=10)
    assert [r.headers["dlq.reason"] for r in letters] == [b"invalid_event"] and letters[0].value == b"{not an action"

    # The pipeline emits act-0003 again (a replay after its own crash), and two new ones come.
    await produce(settings, "actions.email", [action(3, "bo@example.dk"), action(4, "c@example.dk"), action(5, "d@example.dk")])
    again = start_sender(settings, port, tmp_path / "sender", tmp_path / "sender.log")
    try:
        outcomes = await read_json(settings, "outcomes", until=lambda rs: len(rs) >= 5, timeout_s=60)
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=20) == 0
    assert sorted(o["action_id"] for o in outcomes) == ["act-0001", "act-0002", "act-0003", "act-0004", "act-0005"]
    ids = box.message_ids()
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4  # each delivered once; the bounce never accepted
    assert orjson.loads(first[0])["action_id"] == "act-0001"
