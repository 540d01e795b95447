"""``omni send email``: a reference sender for ``actions.email``, delivering over SMTP and reporting outcomes.

What a downstream sender owes, and how this one keeps it:

* **Nothing lost.** Offsets are committed only after every action of a batch was
  delivered (or bounced, or failed for good) and its outcome acknowledged on
  ``outcomes``; a crash replays the batch.
* **Nothing sent twice.** The ids of delivered actions are written to a local
  RocksDB store the moment the SMTP server accepts the message, before anything
  else; a replayed action whose id is there is not sent again (only its outcome is
  reported, if that had not been). Ids are kept for ``OMNI_SENDER_KEEP_S`` (and at
  most twice that, :mod:`pipeline.senders.delivered`), the action topics' retention:
  an action decided longer ago than that is not sent at all. The one window left, a crash between the
  server's accept and that write (microseconds), is covered downstream: the
  message carries the action id as its ``Message-ID``, which mail systems use to
  drop duplicates. The pipeline itself may emit an action twice after a crash
  (see docs/operations.md): the same id, so the same check catches it.
* **Bounces** (a 5xx answer to the recipient) are reported as ``bounced``, and the
  pipeline stops using that address; a server that cannot be reached is retried,
  then reported ``failed``.
* A record that is not an action goes to ``deadletter`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import time
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import yaml
from aiokafka import TopicPartition
from pydantic import ValidationError

from pipeline.actions.model import Action
from pipeline.actions.rules import language
from pipeline.engine.deadletter import dead_letter
from pipeline.ingest.validate import Rejection
from pipeline.ops.topics import load_topics
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.senders.delivered import DeliveredIds
from pipeline.senders.outbox import outcome_record, report
from pipeline.settings import PACKAGE_DATA, Settings

log = logging.getLogger(__name__)
TOPIC = "actions.email"
ATTEMPTS = 3


class Templates:
    def __init__(self, path: Path = PACKAGE_DATA / "email.yaml", default: str = "en") -> None:
        self.by_lang: dict[str, dict[str, Any]] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.default = default

    def render(self, action: Action, sender: str) -> EmailMessage:
        t = self.by_lang.get(language(action.locale)) or self.by_lang[self.default]
        fields = {"message": action.message, "reason": action.reason, "rule": action.rule,
                  "action_id": action.action_id, "customer": action.customer,
                  "offer": (action.offer or {}).get("name", "")}  # fmt: skip
        subjects = t["subject"]
        msg = EmailMessage()
        msg["Subject"] = subjects.get(action.action, subjects["default"]).format(**fields)
        msg["From"] = sender
        msg["To"] = action.address or ""
        msg["Message-ID"] = f"<{action.action_id}@omni>"  # a mail system drops a second copy by this id
        msg["Date"] = formatdate(action.created_at)
        msg.set_content(f"{action.message}\n\n--\n{t['footer']}\n")
        return msg


class EmailSender:
    def __init__(self, settings: Settings, smtp: tuple[str, int], sender: str, state_dir: Path) -> None:
        self.settings = settings
        self.smtp = smtp
        self.sender = sender
        self.templates = Templates()
        # action id -> outcome; "reported" once acknowledged. Remembered for OMNI_SENDER_KEEP_S at least.
        self.done = DeliveredIds(state_dir, settings.sender_keep_s, time.time())
        self.stopping = asyncio.Event()
        self.counts: dict[str, int] = {}

    async def run(self) -> None:
        s = self.settings
        partitions = load_topics(s.topics_file)
        consumer = kafka.consumer(s, s.topic(TOPIC), group_id=f"{s.topic_prefix}{s.app_id}-sender-email")
        producer = kafka.producer(s)
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
                for tp, records in batches.items():
                    for rec in records:
                        await self._one(tp, rec, outcomes, letters)
                await report(s, producer, partitions, outcomes, letters, self.done)
                await consumer.commit()
        finally:
            await consumer.stop()
            await producer.stop()
            self.done.close()
            if self.done.forgotten:
                self.counts["forgotten"] = self.done.forgotten

    async def _one(
        self, tp: TopicPartition, rec: Any, outcomes: list[tuple[str, Record]], letters: list[tuple[int, Record]]
    ) -> None:
        try:
            action = Action.model_validate_json(rec.value)
        except ValidationError as exc:
            value, headers, ts = dead_letter(rec, tp, Rejection("invalid_event", str(exc.errors()[0]["msg"])))
            letters.append((tp.partition, Record(rec.key, value, headers, ts)))
            return
        previous = self.done.get(action.action_id)
        if previous == "reported":
            return  # delivered and reported before a crash: nothing to do
        if previous is None and self.done.too_old(action.created_at, time.time()):
            # Older than what is remembered: it may have gone out already, and an offer that old is stale.
            log.warning("action %s was decided more than OMNI_SENDER_KEEP_S ago: not sent", action.action_id)
            self.counts["too_old"] = self.counts.get("too_old", 0) + 1
            return
        outcome, detail = previous or await self._deliver(action)
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        outcomes.append((action.action_id, outcome_record(action, outcome, detail, "email")))

    async def _deliver(self, action: Action) -> tuple[str, str]:
        if not action.address:
            self.done[action.action_id] = ("failed", "no address")
            return "failed", "no address"
        message = self.templates.render(action, self.sender)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                refused = await asyncio.to_thread(self._send, message)
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                result = ("bounced" if code >= 500 else "failed", f"{code} {text.decode(errors='replace')}")
                break
            except (smtplib.SMTPException, OSError) as exc:
                if attempt == ATTEMPTS:
                    result = ("failed", f"{type(exc).__name__}: {exc}")
                    break
                await asyncio.sleep(0.5 * attempt)
                continue
            result = ("delivered", "accepted") if not refused else ("bounced", str(refused))
            break
        self.done[action.action_id] = result  # first, before anything can crash: never sent twice
        return result

    def _send(self, message: EmailMessage) -> dict[str, Any]:
        with smtplib.SMTP(*self.smtp, timeout=10) as smtp:
            return smtp.send_message(message)  # type: ignore[return-value]

