"""Sending an erasure request, as a privacy team's tool or a channel system would."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson

from pipeline.identity.rules import split_id
from pipeline.ingest.normalise import parse_identifier
from pipeline.ops.topics import PRIVACY_REQUESTS, load_topics
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.runtime.partitioner import partition_for
from pipeline.settings import Settings


def erasure_request(identifier: str, request_id: str | None = None) -> dict[str, str]:
    """The request as ``schemas/erasure.schema.json`` describes it (``identifier`` is ``type:value``)."""
    kind, value = split_id(identifier)
    return {
        "request_id": request_id or f"erase-{uuid.uuid4().hex[:12]}",
        "identifier_type": kind,
        "identifier": value,
        "requested_at": datetime.now(timezone.utc).isoformat(),
    }


async def request_erasure(settings: Settings, identifier: str, request_id: str | None = None) -> str:
    """Send one erasure request; return its id."""
    normalised, error = parse_identifier(*split_id(identifier), settings.default_phone_region)
    if normalised is None:
        raise SystemExit(f"--identifier: {error}")
    request = erasure_request(identifier, request_id)
    partitions = load_topics(settings.topics_file)[PRIVACY_REQUESTS].partitions
    key = request["request_id"].encode()
    producer = kafka.producer(settings)
    await producer.start()
    try:
        sent = await kafka.send_records(
            producer, settings.topic(PRIVACY_REQUESTS), partition_for(key, partitions), [Record(key, orjson.dumps(request))]
        )
        await kafka.last_offset(sent)
    finally:
        await producer.stop()
    return request["request_id"]
