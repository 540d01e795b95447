"""``omni privacy export``: everything held about one person, as JSON (the right of access).

Read from the state changelog, like ``omni identity export``: no worker is needed,
and it shows what the workers have made durable (their last checkpoint, within
``OMNI_COMMIT_INTERVAL_S``). The person is found by any identifier; their profile
is followed through merges, and with it come the identifier entries that point at
it, the merged profiles' copies of the state they handed over, and the products
whose waiting lists name them.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.identity.export import changelog_state
from pipeline.identity.protocol import ID_PREFIX, id_key, is_tombstone
from pipeline.identity.rules import split_id
from pipeline.ingest.normalise import parse_identifier
from pipeline.runtime.state.memory import MemoryStore
from pipeline.settings import Settings

PRODUCT_PREFIX = b"sku:"


async def export_person(settings: Settings, identifier: str) -> dict[str, Any]:
    normalised, error = parse_identifier(*split_id(identifier), settings.default_phone_region)
    if normalised is None:
        raise SystemExit(f"--identifier: {error}")
    return person_in(await changelog_state(settings), normalised)


def person_in(stores: list[MemoryStore], identifier: str) -> dict[str, Any]:
    """What ``stores`` hold about the person ``identifier`` (normalised, ``type:value``) belongs to."""

    def value(key: bytes) -> Any:
        for store in stores:
            raw = store.get(key)
            if raw is not None:
                return orjson.loads(raw)
        return None

    entry = value(id_key(identifier))
    pid = entry[0] if entry is not None else identifier
    profile = value(pid.encode())
    seen = set()
    while profile is not None and is_tombstone(profile) and pid not in seen:  # merged: its survivor holds it now
        seen.add(pid)
        pid = profile["merged_into"]
        profile = value(pid.encode())
    if profile is None or is_tombstone(profile):
        return {"identifier": identifier, "found": False}
    ids = {pid, *(m["profile"] for m in profile.get("merged", []))}
    entries, merged, waiting = [], [], []
    for store in stores:
        for key, raw in store.items(ID_PREFIX):
            owner = orjson.loads(raw)[0]
            if owner in ids:
                entries.append({"identifier": key[len(ID_PREFIX) :].decode(), "profile_id": owner})
        for other in ids - {pid}:
            copy = store.get(other.encode())
            if copy is not None:
                merged.append({"profile_id": other, **orjson.loads(copy)})
        for key, raw in store.items(PRODUCT_PREFIX):
            if any(f'"{i}"'.encode() in raw for i in ids):  # cheap test first: most products name nobody
                product = orjson.loads(raw)
                places = {i: at for i, at in product.get("waiting", {}).items() if i in ids}
                if places:
                    waiting.append({"product": key.decode(), "waiting_since": places})
    return {
        "identifier": identifier,
        "found": True,
        "profile_id": pid,
        "profile": profile,
        "identifier_entries": sorted(entries, key=lambda e: e["identifier"]),
        "merged_profiles": merged,
        "waiting_lists": waiting,
        "as_of": "the workers' last checkpoints",
    }
