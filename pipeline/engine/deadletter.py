"""Dead letters: the original bytes, untouched, with why and where in headers."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from pipeline.ingest.validate import Rejection
from pipeline.runtime.kafka import Headers

DEADLETTER = "deadletter"
MAX_VALUE = 900_000  # below the broker's default message.max.bytes, with room for headers


def bug(exc: Exception) -> Rejection:
    return Rejection("processing_error", f"{type(exc).__name__}: {exc}")


def dead_letter(rec: Any, tp: TopicPartition, rejection: Rejection) -> tuple[bytes | None, Headers, int]:
    """(value, headers, timestamp) of the dead letter for a consumed record."""
    value = rec.value
    headers: list[tuple[str, bytes]] = []
    if value is not None and len(value) > MAX_VALUE:
        # A record the broker accepted can still be too large to re-produce with headers.
        headers.append(("dlq.truncated_from", str(len(value)).encode()))
        value = value[:MAX_VALUE]
    headers += [
        ("dlq.reason", rejection.reason.encode()),
        ("dlq.error", rejection.detail.encode("utf-8", "replace")[:1000]),
        ("dlq.topic", tp.topic.encode()),
        ("dlq.partition", str(tp.partition).encode()),
        ("dlq.offset", str(rec.offset).encode()),
    ]
    return value, headers, rec.timestamp
