"""An `omni collect` process for tests and measurements: start it, wait until it answers, stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.ops.broker import free_port
from pipeline.ops.process import die_with_parent, stop_process
from pipeline.ops.watch import scrape
from pipeline.settings import Settings


@dataclass
class CollectorProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(
        cls, settings: Settings, log: Path, sources: Path | None = None, port: int | None = None,
        env: dict[str, str] | None = None, wait_s: float = 60.0,
    ) -> "CollectorProcess":  # fmt: skip
        """Started and answering (``/health``), or raise with the end of its log."""
        port = port or free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": settings.bootstrap or "",
            "OMNI_TOPIC_PREFIX": settings.topic_prefix,
            "OMNI_TOPICS_FILE": str(settings.topics_file),
            "OMNI_STATE_DIR": str(settings.state_dir),
            "OMNI_COLLECT_SOURCES_FILE": str(sources or settings.collect_sources_file),
            "OMNI_COLLECT_MAPPING_FILE": str(settings.collect_mapping_file),
            "OMNI_COLLECT_ACK_TIMEOUT_S": str(settings.collect_ack_timeout_s),
            **(env or {}),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "collect", "--port", str(port)], env=env,
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
        collector = cls(proc, port, log)
        collector.wait_ready(wait_s)
        return collector

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.alive():
                raise RuntimeError(f"omni collect exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise TimeoutError(f"omni collect did not answer in {timeout_s:.0f}s: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        try:
            return scrape(f"{self.url}/metrics")
        except OSError:
            return {}

    def sample(self, name: str, **labels: str) -> float:
        """The sum of a metric's series that carry these labels (0 when the collector does not answer)."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return 0.0
        return sum(
            s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        return stop_process(self.proc, sig, timeout)
