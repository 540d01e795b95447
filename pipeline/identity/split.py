"""Asking the pipeline to undo a wrong merge.

The split is a message like any other step of the identity protocol: it goes to
the profile's partition through the state topic, so the worker that owns the
profile carries it out in order with everything else that happens to it.
"""

from __future__ import annotations

import orjson

from pipeline.identity.rules import split_id
from pipeline.ingest.normalise import parse_identifier
from pipeline.ops.topics import REPARTITION, load_topics
from pipeline.runtime import kafka
from pipeline.runtime.kafka import Record
from pipeline.runtime.partitioner import partition_for
from pipeline.settings import Settings


async def request_split(settings: Settings, profile: str, identifier: str, by: str = "operator") -> str:
    """Send the split; return the identifier as the pipeline spells it."""
    normalised, error = parse_identifier(*split_id(identifier), settings.default_phone_region)
    if normalised is None:
        raise SystemExit(f"--identifier: {error}")
    partitions = load_topics(settings.topics_file)[REPARTITION].partitions
    message = {"op": "split", "identifier": normalised, "by": by}
    producer = kafka.producer(settings)
    await producer.start()
    try:
        key = profile.encode()
        sent = await kafka.send_records(
            producer, settings.topic(REPARTITION), partition_for(key, partitions), [Record(key, orjson.dumps(message))]
        )
        await kafka.last_offset(sent)
    finally:
        await producer.stop()
    return normalised
