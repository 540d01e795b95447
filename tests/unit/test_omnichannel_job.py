"""The omnichannel job's routing, with no broker: what goes where for one polled batch."""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson
from aiokafka import TopicPartition

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.job import Outbox
from pipeline.engine.omnichannel import OmnichannelJob
from pipeline.ops.topics import load_topics
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
