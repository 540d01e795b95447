"""The identity graph as JSON lines, read from the state changelog.

The changelog is the backup of every state partition, so the graph can be read
without a worker and without its disk: replay each partition to its true end into
memory and keep the identifier entries. It holds the graph as of the workers'
last checkpoints (``OMNI_COMMIT_INTERVAL_S``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson

from pipeline.identity.protocol import ID_PREFIX
from pipeline.identity.rules import split_id
from pipeline.ingest.contract import IDENTIFIER_TYPES
from pipeline.ops.topics import CHANGELOG, load_topics
from pipeline.runtime import kafka
from pipeline.runtime.state.changelog import restore
from pipeline.runtime.state.memory import MemoryStore
from pipeline.settings import Settings


async def changelog_state(settings: Settings) -> list[MemoryStore]:
    """Every state partition as of the workers' last checkpoints, read from the changelog into memory."""
    partitions = load_topics(settings.topics_file)[CHANGELOG].partitions
    stores = {p: MemoryStore() for p in range(partitions)}
    consumer = kafka.consumer(settings, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await restore(consumer, settings.topic(CHANGELOG), stores)  # type: ignore[arg-type]
    finally:
        await consumer.stop()
    return list(stores.values())


async def graph_entries(settings: Settings) -> list[dict[str, str]]:
    """Every identifier with the profile that owns it, sorted by identifier."""
    return sorted(_entries(await changelog_state(settings)), key=lambda e: (e["identifier_type"], e["identifier"]))


def _entries(stores: Iterable[MemoryStore]) -> Iterator[dict[str, str]]:
    for store in stores:
        explicit = set()
        for key, raw in store.items(ID_PREFIX):
            ident = key[len(ID_PREFIX) :].decode()
            explicit.add(ident)
            kind, value = split_id(ident)
            yield {"identifier_type": kind, "identifier": value, "profile_id": orjson.loads(raw)[0]}
        for kind in IDENTIFIER_TYPES:  # a founding identifier has no entry: its profile is its owner
            for key, raw in store.items(f"{kind}:".encode()):
                ident = key.decode()
                if ident not in explicit and b'"merged_into"' not in raw:
                    yield {"identifier_type": kind, "identifier": split_id(ident)[1], "profile_id": ident}


def as_json_lines(entries: list[dict[str, str]]) -> Iterator[bytes]:
    for entry in entries:
        yield orjson.dumps(entry) + b"\n"
