"""Two workers and a rebalance in the middle: every event is applied to its profile exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson

from pipeline.settings import Settings
from tests.helpers import create_topics, event, produce, running_engine, sample, wait_for


async def test_events_apply_once_across_a_rebalance(settings: Settings) -> None:
    await create_topics(settings)
    customers = [f"R{i:03d}" for i in range(40)]
    first_half = [orjson.dumps(event("login", "web", {"customer_id": c}, f"a-{c}-{n}")) for n in range(5) for c in customers]
    second_half = [orjson.dumps(event("login", "app", {"customer_id": c}, f"b-{c}-{n}")) for n in range(5) for c in customers]
    expected = len(first_half) + len(second_half)

    async with running_engine(settings) as one:
        await produce(settings, "channel.web", first_half)
        await wait_for(lambda: sample(one.metrics, "omni_events_processed_total") >= len(first_half), 20, "the first half")
        # A second worker joins: partitions, and the repartitioned copies of events the first
        # worker applied at ingest, move to it.
        async with running_engine(settings.model_copy(update={"state_dir": settings.state_dir / "two"})) as two:
            await produce(settings, "channel.app", second_half)

            def processed() -> float:
                return sum(sample(e.metrics, "omni_events_processed_total") for e in (one, two))

            await wait_for(lambda: processed() >= expected, 30, "every event")
            await asyncio.sleep(1.5)  # anything applied twice would show up by now
            assert processed() == expected
            logins: Counter[str] = Counter()
            for engine in (one, two):
                for state in engine.state.values():
                    for c in customers:
                        profile = state.txn.get(f"customer_id:{c}".encode())
                        if profile:
                            logins[c] += profile["counters"]["login"]
    assert logins == Counter({c: 10 for c in customers})
