"""``omni soak``: a worker under steady simulated load for minutes, its memory and lag sampled every ten seconds.

Neither may grow without bound. Memory: the mean RSS of the last third of the run may be at most a quarter
above that of the middle third (the first third is warm-up: caches and RocksDB's memtables filling).
Lag: the largest lag of the last third may be at most five seconds of input. The samples are the curves
the README and the closing notes report.

Every business delay (follow-ups, the cart window, repeat purchases, a pickup's reminder and hold) is
shrunk to a minute or two, so that timers are set *and fire* within the run and the state reaches the
size it keeps. With the shipped delays (days) ten minutes only ever show state filling up: timers
pending grew linearly to 42,448 in a run with them, and a bound nobody reaches is no evidence.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

from pipeline.actions.catalogue import with_delay
from pipeline.actions.rules import write_variant
from pipeline.bench.workers import WorkerProcess, wait_ready
from pipeline.ops.broker import EmbeddedBroker
from pipeline.ops.process import die_with_parent
from pipeline.ops.topics import REPARTITION, apply_topics, load_topics
from pipeline.settings import Settings

SAMPLE_EVERY_S = 10.0
DELAY = "1m"  # what days-long business delays become in a soak
PICKUP_HOLD = "2m"  # longer than DELAY: the reminder comes before the hold ends


def soak_rules(folder: Path) -> Path:
    """The shipped rules with their delays shrunk (see the module's docstring) and quiet hours off."""
    return write_variant(folder / "rules.yaml", defaults={"quiet_hours": None}, rules={
        "abandoned_cart": {"window": DELAY},
        "repeat_purchase": {"min_interval": DELAY},
        "click_and_collect": {"remind_after": DELAY, "hold": PICKUP_HOLD},
    })  # fmt: skip


def soak(
    rate: float, minutes: float, customers: int = 20_000, batch_ms: float = 500.0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    seconds = minutes * 60
    with EmbeddedBroker(Settings.from_env()) as broker, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = Settings.from_env().model_copy(update={
            "bootstrap": broker.bootstrap, "topic_prefix": f"soak-{uuid.uuid4().hex[:6]}.", "state_dir": tmp / "state",
            "rules_file": soak_rules(tmp), "catalogue_file": with_delay(tmp, DELAY),
        })  # fmt: skip
        asyncio.run(apply_topics(settings, load_topics(settings.topics_file)))
        worker = WorkerProcess.start(settings, tmp / "worker.log")
        env = {**os.environ, "KAFKA_BOOTSTRAP": settings.bootstrap or "", "OMNI_TOPIC_PREFIX": settings.topic_prefix}
        simulator: subprocess.Popen[bytes] | None = None
        samples: list[dict[str, float]] = []
        try:
            wait_ready([worker], load_topics(settings.topics_file)[REPARTITION].partitions)
            simulator = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "simulate", "--rate", str(rate), "--duration", str(seconds),
                 "--customers", str(customers), "--bad-rate", "0.01", "--batch-ms", str(batch_ms),
                 "--catalogue", str(settings.catalogue_file)],
                env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "simulator.log", "wb"), preexec_fn=die_with_parent,
            )  # fmt: skip
            log(f"soak: {rate:,.0f} events/s for {minutes:g} min, {customers:,} customers; a sample every {SAMPLE_EVERY_S:g} s")
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                time.sleep(SAMPLE_EVERY_S - (time.monotonic() - started) % SAMPLE_EVERY_S)
                if not worker.alive():
                    raise RuntimeError("the worker died: " + (tmp / "worker.log").read_text()[-2000:])
                m = worker.metrics()
                sample = {
                    "t_s": round(time.monotonic() - started), "rss_mb": round(worker.rss_mb(), 1),
                    "lag": m.get("omni_consumer_lag", 0.0), "events_in": m.get("omni_events_in_total", 0.0),
                    "profiles": m.get("omni_profiles", 0.0), "timers": m.get("omni_timers_pending", 0.0),
                    "actions": m.get("omni_actions_total", 0.0),
                }  # fmt: skip
                samples.append(sample)
                log("  " + "  ".join(f"{k} {v:,.0f}" for k, v in sample.items()))
        finally:
            if simulator is not None and simulator.poll() is None:
                simulator.terminate()
                simulator.wait(timeout=30)
            alive = worker.alive()
            worker.stop()
    return {"rate": rate, "minutes": minutes, "customers": customers, "batch_ms": batch_ms, "delay": DELAY,
            "samples": samples, "worker_alive_at_end": alive, **verdict(samples, rate)}  # fmt: skip


def verdict(samples: list[dict[str, float]], rate: float) -> dict[str, Any]:
    if not samples:  # a run shorter than one sample says nothing
        return {"rss_growth": None, "worst_lag_last_third": None, "memory_bounded": False, "lag_bounded": False}
    third = max(1, len(samples) // 3)
    middle, last = samples[third : 2 * third] or samples, samples[-third:]
    rss_growth = mean(s["rss_mb"] for s in last) / mean(s["rss_mb"] for s in middle)
    worst_lag = max(s["lag"] for s in last)
    return {
        "rss_growth": round(rss_growth, 3),
        "worst_lag_last_third": worst_lag,
        "memory_bounded": rss_growth <= 1.25,
        "lag_bounded": worst_lag <= 5 * rate,
    }
