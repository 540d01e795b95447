"""Turn one raw Kafka record value into a clean event, or a reason to reject it.

Pure: no Kafka here. The engine routes a :class:`Rejection` to the dead-letter
topic with the original bytes, so every reason below must be a stable, short
label (it becomes a metric label and a header) plus a human detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import ValidationError

from pipeline.ingest.contract import EVENT_MODELS, PRODUCT_EVENT_TYPES, TOPIC_CONTRACT
from pipeline.ingest.normalise import normalise_identifiers
from pipeline.settings import Settings

REASONS = (
    "oversized", "invalid_utf8", "malformed_json", "not_an_object", "unknown_type", "wrong_topic",
    "channel_mismatch", "no_identifiers", "bad_timestamp", "absurd_timestamp", "invalid_event",
    "processing_error",  # not the data's fault: a bug met this record; it is kept for a replay after the fix
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class CleanEvent:
    """A validated event as a plain dict (the hot path never touches pydantic again)."""

    data: dict[str, Any]
    dropped_identifiers: list[tuple[str, str]]


class Validator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.min_ts = datetime(settings.oldest_event_year, 1, 1, tzinfo=timezone.utc).timestamp()

    def __call__(self, logical_topic: str, value: bytes | None, now: float) -> CleanEvent | Rejection:
        """Validate one record value.

        orjson parses first (fast, and it tells malformed JSON from a non-object);
        pydantic then validates the same bytes in JSON mode, which is faster than
        validating the parsed dict. What goes on is the parsed dict as it was sent,
        with identifiers normalised and ``ts`` added: strict validation guarantees
        its fields have the declared types, so no pydantic dump is needed.
        """
        if value is None or len(value) == 0:
            return Rejection("malformed_json", "empty message")
        if len(value) > self.settings.max_event_bytes:
            return Rejection("oversized", f"{len(value)} bytes > limit {self.settings.max_event_bytes}")
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as uexc:
                return Rejection("invalid_utf8", str(uexc))
            return Rejection("malformed_json", str(exc))
        if not isinstance(obj, dict):
            return Rejection("not_an_object", f"top-level JSON is {type(obj).__name__}")
        return self._validate_object(logical_topic, obj, value, now)

    def _validate_object(
        self, logical_topic: str, obj: dict[str, Any], value: bytes, now: float
    ) -> CleanEvent | Rejection:
        etype = obj.get("type")
        model = EVENT_MODELS.get(etype) if isinstance(etype, str) else None
        if model is None:
            return Rejection("unknown_type", f"type {etype!r} is not in the contract")
        allowed_types, allowed_channels = TOPIC_CONTRACT[logical_topic]
        if etype not in allowed_types:
            return Rejection("wrong_topic", f"{etype} is not accepted on {logical_topic}")
        try:
            event = model.model_validate_json(value)
        except ValidationError as exc:
            return _rejection_from(exc)
        if event.channel not in allowed_channels:
            return Rejection("channel_mismatch", f"channel {event.channel!r} on topic {logical_topic}")
        ts = event.occurred_at.timestamp()
        if ts < self.min_ts or ts > now + self.settings.future_tolerance_s:
            return Rejection("absurd_timestamp", f"occurred_at {event.occurred_at.isoformat()} is out of range")

        identifiers, dropped = normalise_identifiers(obj.get("identifiers") or {}, self.settings.default_phone_region)
        if not identifiers and etype not in PRODUCT_EVENT_TYPES:
            why = "no identifier given" if not dropped else f"all identifiers unusable: {dropped}"
            return Rejection("no_identifiers", why)
        obj["identifiers"] = identifiers
        obj["ts"] = ts
        return CleanEvent(obj, dropped)


def _rejection_from(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    detail = f"{loc}: {first['msg']}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
    if first["loc"] and first["loc"][0] == "occurred_at":
        return Rejection("bad_timestamp", detail)
    return Rejection("invalid_event", detail)
