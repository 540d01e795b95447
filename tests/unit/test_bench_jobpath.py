"""The job-path harness runs the real job: live traffic in time order decides actions, a backlog replay of the bench's events is timed."""

from __future__ import annotations

from pipeline.bench.jobpath import job_path
from pipeline.settings import Settings


def test_live_traffic_reaches_actions_and_the_timed_half_is_counted() -> None:
    figures = job_path(Settings(), "live", 4000)
    assert figures["timed_events"] == 2000
    assert figures["actions"] > 0 and figures["outputs"] >= figures["actions"]
    assert figures["us_per_event"] > 0


def test_backlog_traffic_is_timed_over_its_second_half() -> None:
    figures = job_path(Settings(), "backlog", 8000)
    assert figures["timed_events"] == 4000 and figures["outputs"] > 0
