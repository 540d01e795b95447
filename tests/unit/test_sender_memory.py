"""The e-mail sender remembers the actions it delivered for a bounded time (pipeline.senders.delivered)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from rocksdict import Rdict

from pipeline.actions.model import Action
from pipeline.senders.delivered import DeliveredIds
from pipeline.senders.email import EmailSender
from pipeline.settings import Settings

WEEK = 7 * 86_400.0


def test_ids_are_kept_for_at_least_the_period_and_dropped_a_generation_at_a_time(tmp_path: Path) -> None:
    start = 100 * WEEK + 10.0  # early in a period
    done = DeliveredIds(tmp_path, WEEK, start)
    done["a1"] = ("delivered", "accepted")
    done.rotate(start + WEEK * 0.9)  # same period
    done["a2"] = "reported"
    done.rotate(start + WEEK)  # the next: both still known
    assert done.get("a1") == ("delivered", "accepted") and done.get("a2") == "reported"
    done["a3"] = "reported"
    done.rotate(start + 2 * WEEK)  # a1 and a2 are at least a week old: gone, and counted
    assert done.get("a1") is None and done.get("a2") is None and done.get("a3") == "reported"
    assert done.forgotten == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["delivered.101", "delivered.102"]
    done.close()

    reopened = DeliveredIds(tmp_path, WEEK, start + 2 * WEEK + 1)  # a restart finds what it wrote
    assert reopened.get("a3") == "reported"
    reopened.close()
    after_a_long_stop = DeliveredIds(tmp_path, WEEK, start + 5 * WEEK)
    assert after_a_long_stop.get("a3") is None and sorted(p.name for p in tmp_path.iterdir()) == ["delivered.105"]
    after_a_long_stop.close()


def test_the_store_kept_for_good_before_serves_one_more_period_then_goes(tmp_path: Path) -> None:
    legacy = Rdict(str(tmp_path / "delivered"))
    legacy["old"] = "reported"
    legacy.close()
    done = DeliveredIds(tmp_path, WEEK, 50 * WEEK)
    assert done.get("old") == "reported"
    done.rotate(51 * WEEK)
    assert done.get("old") is None and not (tmp_path / "delivered").exists()
    done.close()


def test_an_action_older_than_the_memory_is_not_sent(tmp_path: Path) -> None:
    sender = EmailSender(Settings(sender_keep_s=WEEK), ("127.0.0.1", 1), "offers@example.com", tmp_path)
    sent: list[str] = []

    async def deliver(action: Action) -> tuple[str, str]:
        sent.append(action.action_id)
        return "delivered", "accepted"

    sender._deliver = deliver  # type: ignore[method-assign]
    outcomes: list[Any] = []
    for action_id, age in (("fresh", 60.0), ("stale", WEEK + 60)):
        value = Action(
            action_id=action_id, rule="abandoned_cart", kind="marketing", action="cart_reminder", customer="customer_id:C1",
            channel="email", locale="en", message="m", reason="r", trigger_event_ids=["e1"], facts={},
            address="a@example.dk", created_at=time.time() - age,
        ).model_dump_json().encode()  # fmt: skip
        asyncio.run(sender._one(TopicPartition("actions.email", 0), SimpleNamespace(value=value, key=b"k"), outcomes, []))
    assert sent == ["fresh"] and len(outcomes) == 1 and sender.counts == {"delivered": 1, "too_old": 1}
    sender.done.close()
