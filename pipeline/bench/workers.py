"""Worker processes for measurements: start `omni worker`, read its /metrics, stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import urllib.request

import orjson

from pipeline.ops.broker import free_port
from pipeline.ops.process import die_with_parent, stop_process
from pipeline.ops.watch import scrape
from pipeline.settings import Settings

DONE_METRICS = ("omni_events_processed_total", "omni_duplicates_total", "omni_deadletter_total")


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(
        cls, settings: Settings, log: Path, catalogue: Path | None = None, rules: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> "WorkerProcess":  # fmt: skip
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": settings.bootstrap or "",
            "OMNI_TOPIC_PREFIX": settings.topic_prefix,
            "OMNI_STATE_DIR": str(settings.state_dir),
            "OMNI_WEB_PORT": str(port),
            "OMNI_CATALOGUE_FILE": str(catalogue or settings.catalogue_file),
            "OMNI_RULES_FILE": str(rules or settings.rules_file),
            **({"OMNI_API_TOKEN": settings.api_token} if settings.api_token else {}),
            "OMNI_COMMIT_INTERVAL_S": str(settings.commit_interval_s),
            "OMNI_ERASURE_SALT": settings.erasure_salt,
            "OMNI_TOPICS_FILE": str(settings.topics_file),
            **(env or {}),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker"], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        return cls(proc, port, log)

    def metrics(self) -> dict[str, float]:
        try:
            return scrape(f"http://127.0.0.1:{self.port}/metrics")
        except OSError:
            return {}

    def health(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as resp:
                return orjson.loads(resp.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def done(self) -> float:
        """Input records finished with, from /health: polled often, and /metrics costs the worker more."""
        health = self.health()
        if health is not None:
            return float(health["records_done"])  # type: ignore[arg-type]
        m = self.metrics()  # not ready (503), or between restarts
        return sum(m.get(name, 0.0) for name in DONE_METRICS)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float | None:
        """User and system CPU the worker has used so far (all its threads), or None where /proc has no answer."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        return stop_process(self.proc, sig, timeout)


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def wait_ready(workers: list[WorkerProcess], partitions: int, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
    """Until the workers own every state partition between them (the group has settled)."""

    def settled() -> bool:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker exited; see {w.log}")
        owned = [h.get("state_partitions", []) if (h := w.health()) else [] for w in workers]
        return all(owned) and sorted(p for o in owned for p in o) == list(range(partitions))  # type: ignore[attr-defined]

    wait_until(settled, timeout_s, "the workers to share the partitions", poll_s=poll_s)
