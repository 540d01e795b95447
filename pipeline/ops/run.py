"""``omni run``: the whole system on one machine, with a live view, stopped by one Ctrl-C.

Children run in their own sessions, so the terminal's Ctrl-C reaches only this
process, which then stops them in order (simulator, worker, broker) and waits
for each. If this process dies without cleaning up, the kernel sends the
children SIGTERM (PR_SET_PDEATHSIG), so no broker or worker is left orphaned.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.actions.catalogue import Catalogue
from pipeline.ops.broker import EmbeddedBroker, free_port
from pipeline.ops.process import die_with_parent
from pipeline.ops.topics import apply_topics, load_topics
from pipeline.ops.watch import watch
from pipeline.settings import PACKAGE_DATA, Settings

RUN_DIR = Path(".run")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def _stop(proc: subprocess.Popen[bytes] | None, name: str, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        print(f"  {name} stopped", flush=True)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"  {name} did not stop in {timeout:.0f} s; killed", flush=True)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def run_all(settings: Settings, rate: float, customers: int) -> int:
    RUN_DIR.mkdir(exist_ok=True)
    demo = PACKAGE_DATA / "catalogue.demo.yaml"
    catalogue = Catalogue.load(demo)
    broker: EmbeddedBroker | None = None
    worker = simulator = None
    try:
        if settings.bootstrap:
            print(f"broker: using KAFKA_BOOTSTRAP={settings.bootstrap}")
        else:
            broker = EmbeddedBroker(settings, log_path=RUN_DIR / "broker.log").start()
            settings = settings.model_copy(update={"bootstrap": broker.bootstrap})
            print(f"broker: embedded Tansu on {broker.bootstrap} (in memory; everything is gone when it stops)")
        drift = asyncio.run(apply_topics(settings, load_topics(settings.topics_file)))
        for line in drift:
            print(f"topics: drift: {line}")
        print(f"topics: {len(load_topics(settings.topics_file))} in place from {settings.topics_file.name}")

        state_dir = RUN_DIR / "state"
        if broker is not None:
            shutil.rmtree(state_dir, ignore_errors=True)  # the embedded broker starts empty; so does state
        web_port = settings.web_port if not broker else free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": settings.bootstrap or "",
            "OMNI_STATE_DIR": str(state_dir),
            "OMNI_WEB_PORT": str(web_port),
            "OMNI_CATALOGUE_FILE": str(demo),
            "OMNI_RULES_FILE": str(PACKAGE_DATA / "rules.demo.yaml"),
        }
        metrics_url = f"http://{settings.web_host}:{web_port}/metrics"
        worker = _spawn(["worker"], env, RUN_DIR / "worker.log")
        print(f"worker: starting (log {RUN_DIR / 'worker.log'}); Prometheus metrics at {metrics_url}")
        if not _wait_healthy(f"http://{settings.web_host}:{web_port}/health", worker, 60):
            print(f"worker did not become ready; see {RUN_DIR / 'worker.log'}")
            return 1
        simulator = _spawn(
            ["simulate", "--rate", str(rate), "--customers", str(customers), "--bad-rate", "0.01"],
            env,
            RUN_DIR / "simulator.log",
        )
        print(f"simulator: {customers} customers across web, app, store, e-mail, call centre and chat, ~{rate:g} events/s")
        if catalogue.note:
            print(f"note: {catalogue.note}")
        print("next-best-actions as they are emitted (Ctrl-C stops everything):\n")
        asyncio.run(_watch_until_signal(settings, metrics_url))
        return 0
    finally:
        print("\nstopping...", flush=True)
        _stop(simulator, "simulator")
        _stop(worker, "worker")
        if broker is not None:
            broker.stop()
            print("  broker stopped", flush=True)


async def _watch_until_signal(settings: Settings, metrics_url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await watch(settings, metrics_url, stop=stop)
