"""Topic definitions (topics.yaml) and an idempotent apply that reports drift."""

from __future__ import annotations

from pathlib import Path

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import BaseModel, ConfigDict, Field

from pipeline.runtime import kafka
from pipeline.settings import Settings

TOPIC_ALREADY_EXISTS = 36
REPARTITION = "internal.events-by-customer"
CHANGELOG = "internal.state-changelog"
MERGES = "identity.merges"  # every merge and split of profiles, for downstream systems to follow
OUTCOMES = "outcomes"  # what senders report back on actions (delivered, bounced, opened...)
PRIVACY_REQUESTS = "privacy.requests"  # a person's erasure requests
PRIVACY_AUDIT = "privacy.audit"  # what each erasure removed (counts and keyed hashes, never the data)
ACTION_TOPIC_PREFIX = "actions."  # one topic per channel, and the holdouts'
HOLDOUTS = "actions.holdout"  # would-be actions of customers in a rule's holdout group: recorded, never sent


class TopicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    partitions: int = Field(ge=1)
    replication_factor: int = Field(ge=1)
    config: dict[str, str]

    @property
    def cleanup_policy(self) -> str:
        return self.config.get("cleanup.policy", "delete")


def load_topics(path: Path) -> dict[str, TopicSpec]:
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    defaults = doc.get("defaults", {})
    specs: dict[str, TopicSpec] = {}
    for name, spec in (doc.get("topics") or {}).items():
        spec = spec or {}
        config = {**defaults.get("config", {}), **spec.get("config", {})}
        specs[name] = TopicSpec(
            name=name,
            partitions=spec.get("partitions", defaults.get("partitions", 1)),
            replication_factor=spec.get("replication_factor", defaults.get("replication_factor", 1)),
            config={k: str(v) for k, v in config.items()},
        )
    if specs[REPARTITION].partitions != specs[CHANGELOG].partitions:
        raise ValueError(f"{REPARTITION} and {CHANGELOG} must have the same number of partitions")
    return specs


async def apply_topics(settings: Settings, specs: dict[str, TopicSpec]) -> list[str]:
    """Create missing topics; return drift found on existing ones (empty means all good)."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        physical = {settings.topic(n): s for n, s in specs.items()}
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, s.partitions, s.replication_factor, topic_configs=s.config)
            for name, s in physical.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, message in response.topic_errors:
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"creating {topic} failed: {message} (error {code})")
        present = [n for n in physical if n in existing]
        return await _drift(admin, {n: physical[n] for n in present})
    finally:
        await admin.close()


async def _drift(admin: AIOKafkaAdminClient, specs: dict[str, TopicSpec]) -> list[str]:
    if not specs:
        return []
    drift: list[str] = []
    described = await admin.describe_topics(list(specs))
    for topic in described:
        spec = specs[topic["topic"]]
        have = len(topic["partitions"])
        if have < spec.partitions:
            drift.append(f"{spec.name}: {have} partitions, topics.yaml wants {spec.partitions}")
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in specs]
    for response in await admin.describe_configs(resources):
        for _err, _msg, _type, name, entries in response.resources:
            configs = {entry[0]: entry[1] for entry in entries}
            have_policy = configs.get("cleanup.policy", "delete")
            if set(have_policy.split(",")) != set(specs[name].cleanup_policy.split(",")):
                drift.append(f"{name}: cleanup.policy={have_policy}, topics.yaml wants {specs[name].cleanup_policy}")
    return drift
