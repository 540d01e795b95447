"""The omnichannel job's routing, with no broker: what goes where for one polled batch."""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson
from aiokafka import TopicPartition

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.omnichannel import OmnichannelJob
from pipeline.ops.topics import load_topics
from pipeline.runtime.job import Outbox
from pipeline.settings import Settings
from tests.helpers import event


def test_an_event_that_cannot_be_forwarded_is_dead_lettered_not_a_crash() -> None:
    settings = Settings(topic_prefix="u.")
    job = OmnichannelJob(settings, Catalogue.load(settings.catalogue_file), load_topics(settings.topics_file))
    good = orjson.dumps(event("page_view", "web", {"customer_id": "C1"}, "ev-1"))
    # Valid JSON and a valid event, but orjson cannot write a 65-bit integer back out.
    huge = orjson.dumps(event("page_view", "web", {"customer_id": "C2"}, "ev-2")).replace(
        b'"properties":{}', b'"properties":{"x":18446744073709551616}'
    )
    now_ms = int(time.time() * 1000)
    records = [SimpleNamespace(key=b"C", value=v, offset=i, timestamp=now_ms, headers=[]) for i, v in enumerate((good, huge))]
    out = Outbox(job.partition_counts)
    job.on_source(TopicPartition("u.channel.web", 0), records, time.time(), out, owned={})  # owns no profile: forwards
    sent = {topic: recs for (topic, _), recs in out.take().items()}
    assert [orjson.loads(r.value)["event"]["event_id"] for r in sent["u.internal.events-by-customer"]] == ["ev-1"]
    assert [dict(r.headers)["dlq.reason"] for r in sent["u.deadletter"]] == [b"invalid_event"]


def test_a_bug_on_an_events_first_hop_dead_letters_that_record_and_the_next_goes_on() -> None:
    from pipeline.runtime.state.memory import MemoryStore
    from pipeline.runtime.state.partition import PartitionState

    settings = Settings(topic_prefix="u.")
    specs = load_topics(settings.topics_file)
    job = OmnichannelJob(settings, Catalogue.load(settings.catalogue_file), specs)
    owned = {p: PartitionState.open(p, MemoryStore()) for p in range(specs["internal.events-by-customer"].partitions)}
    apply = job.processor.identity.apply_event

    def buggy(state, pid, profile, ev, out):  # type: ignore[no-untyped-def]
        if ev["event_id"] == "ev-2":
            raise RuntimeError("a bug")
        return apply(state, pid, profile, ev, out)

    job.processor.identity.apply_event = buggy
    values = [orjson.dumps(event("page_view", "web", {"customer_id": f"C{n}"}, f"ev-{n}")) for n in (1, 2, 3)]
    now_ms = int(time.time() * 1000)
    records = [SimpleNamespace(key=b"C", value=v, offset=i, timestamp=now_ms, headers=[]) for i, v in enumerate(values)]
    out = Outbox(job.partition_counts)
    job.on_source(TopicPartition("u.channel.web", 0), records, time.time(), out, owned)
    sent = {topic: recs for (topic, _), recs in out.take().items()}
    assert [dict(r.headers)["dlq.reason"] for r in sent["u.deadletter"]] == [b"processing_error"]
    assert job.processor.applied == 2 and len(job.latencies) == 2
    stored = {key for state in owned.values() for key in state.txn._dirty}
    assert {b"customer_id:C1", b"customer_id:C3"} <= stored and b"customer_id:C2" not in stored
