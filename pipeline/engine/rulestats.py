"""Per-rule figures over HTTP: the ledgers of every state partition, summed over all workers.

Any worker answers ``GET /rules/stats``: it sums the ledgers of the partitions it
owns and asks each other worker (found through the consumer group's routing map,
like the profile lookup) for theirs with ``?local=1``. ``complete`` says whether
every partition was counted; while a rebalance settles it may not be.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from pipeline.engine.loop import Engine
from pipeline.measure import ledger
from pipeline.measure.uplift import figures


class RuleStats:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.partitions = engine.job.partition_counts[engine.job.state_topic]

    def local(self) -> dict[str, Any]:
        return {"partitions": sorted(self.engine.state), "ledger": ledger.summed(self.engine.state.values())}

    async def everywhere(self) -> dict[str, Any]:
        mine = self.local()
        total, covered = mine["ledger"], set(mine["partitions"])
        peers = {url for p, url in self.engine.routing.owners.items() if p not in covered and url}
        headers = self.engine.settings.auth_headers
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=headers) as session:
            for url in sorted(peers):
                try:
                    async with session.get(f"{url}/rules/stats", params={"local": "1"}) as resp:
                        theirs = await resp.json()
                except (aiohttp.ClientError, TimeoutError):
                    continue  # reported as incomplete below
                ledger.add(total, theirs["ledger"])
                covered |= set(theirs["partitions"])
        rules = list(self.engine.job.processor.rules.catalogue.rules)  # type: ignore[attr-defined]
        return {
            "generated_at": time.time(),
            "complete": covered >= set(range(self.partitions)),
            "partitions": sorted(covered),
            "rules": [f.as_dict() for f in figures(total, rules)],
        }
