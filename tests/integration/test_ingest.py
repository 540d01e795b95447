"""Every input is accounted for: processed or dead-lettered with its reason, never both, never lost."""

from __future__ import annotations

import time

import orjson

from pipeline.actions.catalogue import Catalogue
from pipeline.settings import Settings
from pipeline.simulate.population import BAD_KINDS, Population
from tests.helpers import create_topics, event, produce, read_topic, running_engine, sample, wait_for


async def test_bad_input_goes_to_deadletter_with_reason_and_nothing_is_lost(settings: Settings) -> None:
    await create_topics(settings)
    population = Population(Catalogue.load(settings.catalogue_file), customers=50, seed=3)
    now = time.time()
    good = [p for _ in range(60) for p in population.journey(now) if p.topic == "channel.web"]
    bad = {kind: population.bad_record(kind, now) for kind in BAD_KINDS}
    values = [p.value for p in good] + [p.value for p in bad.values()]
    # One more: a valid event produced twice (a retrying channel system).
    dup = orjson.dumps(event("login", "web", {"customer_id": "C-DUP"}, "ev-dup-1"))
    values += [dup, dup]
    await produce(settings, "channel.web", values)

    async with running_engine(settings) as engine:
        m = engine.metrics
        expected = len(values)
        await wait_for(
            lambda: sample(m, "omni_events_processed_total") + sample(m, "omni_duplicates_total")
            + sample(m, "omni_deadletter_total") >= expected,
            30, "every record processed or dead-lettered",
        )  # fmt: skip
        processed = sample(m, "omni_events_processed_total")
        duplicates = sample(m, "omni_duplicates_total")
        dead = sample(m, "omni_deadletter_total")

    assert dead == len(bad)
    assert duplicates == 1
    assert processed == len(good) + 1  # the duplicate counted once
    assert processed + duplicates + dead == expected  # in = processed + dead-lettered

    letters = await read_topic(settings, "deadletter")
    assert len(letters) == len(bad)
    by_reason = {r.headers["dlq.reason"].decode(): r for r in letters}
    expected_reasons = {k if k != "invalid_event" else "invalid_event" for k in bad}
    assert set(by_reason) == expected_reasons
    for kind, produced in bad.items():
        letter = by_reason[kind]
        assert letter.value == produced.value, f"{kind}: original bytes must be kept"
        assert letter.headers["dlq.topic"].decode() == settings.topic("channel.web")
        assert letter.headers["dlq.partition"] == b"0"
        assert int(letter.headers["dlq.offset"]) >= len(good)
        assert letter.headers["dlq.error"], f"{kind}: a human-readable error is given"
