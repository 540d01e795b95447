"""topics.yaml applied to a real broker: idempotent, and drift is reported, never "fixed"."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.ops.topics import apply_topics, load_topics
from pipeline.settings import Settings


async def test_apply_is_idempotent(settings: Settings) -> None:
    specs = load_topics(settings.topics_file)
    assert await apply_topics(settings, specs) == []
    assert await apply_topics(settings, specs) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        names = set(await admin.list_topics())
    finally:
        await admin.close()
    assert {settings.topic(n) for n in specs} <= names


async def test_drift_is_reported_and_nothing_is_deleted(settings: Settings) -> None:
    specs = load_topics(settings.topics_file)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(settings.topic("channel.web"), 2, 1, topic_configs={"cleanup.policy": "delete", "retention.ms": "1000"}),
                NewTopic(settings.topic("internal.state-changelog"), 4, 1, topic_configs={"cleanup.policy": "delete", "retention.ms": "1000"}),
            ]
        )
        drift = await apply_topics(settings, specs)
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics([settings.topic("channel.web")])}
    finally:
        await admin.close()
    assert any(line.startswith("channel.web") and "2 partitions" in line for line in drift), drift
    assert any("state-changelog" in line and "cleanup.policy=delete" in line for line in drift), drift
    assert described[settings.topic("channel.web")] == 2  # reported, not altered
