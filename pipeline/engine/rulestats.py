"""Per-rule figures over HTTP: the ledgers of every state partition, summed over all workers.

Any worker answers ``GET /rules/stats``: it sums the ledgers of the partitions it
owns and asks each other worker (found through the consumer group's routing map,
like the profile lookup, and to the same checked addresses only) for theirs with
``?local=1``. ``complete`` says whether every partition was counted; while a
rebalance settles, or while an owner's announced address is refused, it is not.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from pipeline.measure import ledger
from pipeline.measure.uplift import figures
from pipeline.runtime.engine import Engine


class RuleStats:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.partitions = engine.job.partition_counts[engine.job.state_topic]
        self.ssl = engine.settings.web_client_ssl() or True  # https: peers' certificates checked

    def local(self) -> dict[str, Any]:
        """This worker's ledgers, one per partition it owns, so a caller never counts a partition twice."""
        return {"ledgers": {str(p): ledger.read(state) for p, state in self.engine.state.items()}}

    async def everywhere(self) -> dict[str, Any]:
        by_partition: dict[int, ledger.Ledger] = {p: ledger.read(state) for p, state in self.engine.state.items()}
        peers = {url for p, url in self.engine.routing.owners.items() if p not in by_partition and url}
        headers = self.engine.settings.auth_headers
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=headers) as session:
            for url in sorted(peers):
                try:
                    get = session.get(f"{url}/rules/stats", params={"local": "1"}, allow_redirects=False, ssl=self.ssl)
                    async with get as resp:
                        if resp.status != 200:
                            continue  # reported as incomplete below
                        theirs = (await resp.json())["ledgers"]
                except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                    continue
                for p, counts in theirs.items():
                    by_partition.setdefault(int(p), counts)  # a partition changing hands is counted once
        total: ledger.Ledger = {}
        for counts in by_partition.values():
            ledger.add(total, counts)
        rules = list(self.engine.job.processor.rules.catalogue.rules)  # type: ignore[attr-defined]
        return {
            "generated_at": time.time(),
            "complete": set(by_partition) >= set(range(self.partitions)),
            "partitions": sorted(by_partition),
            "rules": [f.as_dict() for f in figures(total, rules)],
        }
