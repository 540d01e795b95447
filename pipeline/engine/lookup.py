"""Profile lookup by any identifier, from whichever worker the request reaches.

The identifier's entry lives in the partition its key hashes to, the profile in
the partition of its id, and a merged profile points on to its survivor: each
step is answered by the worker that owns that partition, found through the group's
routing map (``routing.py``); a request for another worker's partition is passed
on to it, at most ``MAX_HOPS`` times, so a map gone stale mid-rebalance cannot
bounce a request around for ever. It goes with the API token, so only to an
address the map's checks let through (``routing.peer_address``: the configured
scheme, one host and port), never following a redirect; an owner whose announced
address was refused gets no request and the caller a 502.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from pipeline.identity.protocol import owner_entry
from pipeline.ingest.contract import IDENTIFIER_TYPES
from pipeline.ingest.normalise import parse_identifier
from pipeline.runtime.engine import Engine
from pipeline.runtime.partitioner import partition_for

MAX_HOPS = 3
HOPS_HEADER = "X-Omni-Hops"
INTERNAL_FIELDS = ("seen_events", "claims", "lock", "queue")  # protocol bookkeeping, not the customer

Answer = tuple[int, dict[str, Any]]


class ProfileLookup:
    def __init__(self, engine: Engine, region: str) -> None:
        self.engine = engine
        self.region = region
        self.partitions = engine.job.partition_counts[engine.job.state_topic]
        self.ssl = engine.settings.web_client_ssl() or True  # https: peers' certificates checked

    async def answer(self, query: Mapping[str, str], hops: int) -> Answer:
        """``?email=...`` (any identifier type) or ``?id=<profile id>``: the unified profile."""
        if len(query) != 1:  # a repeated parameter counts twice too
            return 400, {"error": f"give exactly one of: id, {', '.join(IDENTIFIER_TYPES)}"}
        ((kind, raw),) = query.items()
        if kind == "id":
            return await self.by_id(raw, hops)
        identifier, error = parse_identifier(kind, raw, self.region)
        if identifier is None:
            return 400, {"error": f"{error} (or give id)"}
        state, elsewhere = await self._owner(identifier, query, hops)
        if state is None:
            return elsewhere  # type: ignore[return-value]
        entry = owner_entry(state, identifier)
        if entry is None:
            return 404, {"error": f"no profile holds {identifier}"}
        return await self.by_id(entry[0], hops)

    async def by_id(self, pid: str, hops: int) -> Answer:
        """The profile by its id; a merged profile's id leads to its survivor."""
        for _ in range(self.partitions + 1):  # a chain of merges is never longer than that in practice
            state, elsewhere = await self._owner(pid, {"id": pid}, hops)
            if state is None:
                return elsewhere  # type: ignore[return-value]
            profile = state.txn.get(pid.encode())
            if profile is None:
                return 404, {"error": f"no profile {pid}"}
            if "merged_into" not in profile:
                return 200, _view(profile)
            pid = profile["merged_into"]
        return 508, {"error": f"merge chain too long at {pid}"}

    async def _owner(self, key: str, query: Mapping[str, str], hops: int) -> tuple[Any, Answer | None]:
        """This worker's state for the key's partition, or the owner's answer to the same question."""
        partition = partition_for(key.encode(), self.partitions)
        state = self.engine.state.get(partition)
        if state is not None:
            return state, None
        routing = self.engine.routing
        url = routing.owners.get(partition)
        if hops >= MAX_HOPS or (url is None and partition not in routing.refused):
            return None, (503, {"error": f"partition {partition} has no known owner right now; retry"})
        if url is None:  # announced, and refused: the token does not go there
            why = routing.refused[partition]
            return None, (502, {"error": f"the owner of partition {partition} announced an address this worker does not "
                                         f"send the token to ({why}); see the workers' logs"})  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(
                    f"{url}/profiles", params=dict(query), headers={HOPS_HEADER: str(hops + 1), **self.engine.settings.auth_headers},
                    timeout=aiohttp.ClientTimeout(total=5), allow_redirects=False, ssl=self.ssl,
                ) as resp:  # fmt: skip
                    return None, (resp.status, await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return None, (502, {"error": f"the owner of partition {partition} ({url}) gave no answer: {exc!r}"})


def _view(profile: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in profile.items() if k not in INTERNAL_FIELDS}
    view["merges"] = view.pop("merged", [])
    return view
