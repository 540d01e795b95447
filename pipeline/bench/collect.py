"""The collector's throughput and latency, on Faust's web server and on bare aiohttp, beside the raw produce ceiling.

    python -m pipeline.bench.collect [--seconds S] [--concurrency C] [--batch N]

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP`` is set), then for each server (``omni collect``,
and the same handler on a bare aiohttp application: ``python -m pipeline.bench.collect bare``) posts
batches of N ``Order Completed`` calls from C concurrent clients for S seconds, each answered only after
the broker acknowledged it. The ceiling: the same events produced straight from this process, C batches
in flight. Prints requests and events per second and the p50 and p99 of the answer's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, TCPConnector, web

from pipeline.ops.broker import EmbeddedBroker, free_port
from pipeline.ops.process import die_with_parent
from pipeline.ops.topics import apply_topics, load_topics
from pipeline.settings import Settings

KEY = "bench-web-write-key"


def _sources(directory: Path) -> Path:
    path = directory / "sources.yaml"
    path.write_text(f"sources:\n  - {{name: bench, channel: web, write_keys: [{KEY}]}}\n")
    return path


def _bodies(count: int, batch: int) -> list[bytes]:
    """Distinct batch bodies (fresh message ids), made before the clock starts."""
    out = []
    for b in range(count):
        calls = [{"type": "track", "messageId": uuid.uuid4().hex, "userId": f"C{(b * batch + i) % 5000}",
                  "anonymousId": f"ck-{(b * batch + i) % 7000}", "event": "Order Completed",
                  "timestamp": "2026-12-07T10:00:00Z",
                  "properties": {"order_id": f"O-{b}-{i}", "currency": "EUR", "total": 24.0,
                                 "products": [{"sku": "TSH-001", "price": 12.0, "quantity": 2}]}}
                 for i in range(batch)]  # fmt: skip
        out.append(orjson.dumps({"batch": calls}))
    return out


async def load(url: str, seconds: float, concurrency: int, batch: int) -> dict[str, float]:
    bodies = _bodies(max(200, concurrency * 20), batch)
    headers = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode(), "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(n: int, session: ClientSession) -> None:
        i = n
        while time.monotonic() < deadline:
            started = time.monotonic()
            async with session.post(f"{url}/v1/batch", data=bodies[i % len(bodies)], headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(time.monotonic() - started)
            i += concurrency

    started = time.monotonic()
    async with ClientSession(connector=TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(n, session) for n in range(concurrency)))
    elapsed = time.monotonic() - started
    return _figures(latencies, elapsed, batch, statuses)


def _figures(latencies: list[float], elapsed: float, batch: int, statuses: dict[int, int] | None = None) -> dict[str, float]:
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "events_per_s": round(len(latencies) * batch / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "non_200": sum(n for s, n in (statuses or {}).items() if s != 200),
    }


async def ceiling(settings: Settings, seconds: float, concurrency: int, batch: int) -> dict[str, float]:
    """The same events produced straight to the broker: what any collector's rate is bounded by."""
    from pipeline.collect.sink import KafkaSink, Out
    from pipeline.runtime import kafka

    bodies = [orjson.loads(b)["batch"] for b in _bodies(max(200, concurrency * 20), batch)]
    records = [[Out("channel.web", c["anonymousId"].encode(), orjson.dumps(c)) for c in calls] for calls in bodies]
    producer = kafka.producer(settings)
    await producer.start()
    sink = KafkaSink(settings, producer, load_topics(settings.topics_file))
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        i = n
        while time.monotonic() < deadline:
            started = time.monotonic()
            await sink.send(records[i % len(records)])
            latencies.append(time.monotonic() - started)
            i += concurrency

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    finally:
        await producer.stop()
    return _figures(latencies, time.monotonic() - started, batch)


def serve_bare(port: int) -> None:
    """The collector's handler on a bare aiohttp application, with the same producer and sink (for comparison only)."""
    from pipeline.collect.app import build_collector
    from pipeline.collect.server import aiohttp_app
    from pipeline.collect.sink import KafkaSink
    from pipeline.runtime import kafka

    settings = Settings.from_env()
    collector = build_collector(settings)

    async def main() -> None:
        producer = kafka.producer(settings)
        await producer.start()
        collector.sink = KafkaSink(settings, producer, load_topics(settings.topics_file))
        runner = web.AppRunner(aiohttp_app(collector), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        await producer.stop()

    asyncio.run(main())


def _wait_answering(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            urllib.request.urlopen(urllib.request.Request(f"{url}/v1/batch", data=b"{}", method="POST"), timeout=1)
        except urllib.error.HTTPError:
            return  # it answers (401: no key)
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def run(settings: Settings, seconds: float, concurrency: int, batch: int) -> dict[str, dict[str, float]]:
    asyncio.run(apply_topics(settings, load_topics(settings.topics_file)))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KAFKA_BOOTSTRAP": settings.bootstrap or "", "OMNI_TOPIC_PREFIX": settings.topic_prefix,
               "OMNI_COLLECT_SOURCES_FILE": str(_sources(Path(tmp))), "OMNI_STATE_DIR": tmp}  # fmt: skip
        for name, command in (
            ("faust", ["-m", "pipeline.cli", "collect", "--port"]),
            ("bare_aiohttp", ["-m", "pipeline.bench.collect", "bare", "--port"]),
        ):
            port = free_port()
            proc = subprocess.Popen([sys.executable, *command, str(port)], env=env, preexec_fn=die_with_parent)
            try:
                _wait_answering(f"http://127.0.0.1:{port}", proc)
                asyncio.run(load(f"http://127.0.0.1:{port}", 3.0, concurrency, batch))  # warm up
                results[name] = asyncio.run(load(f"http://127.0.0.1:{port}", seconds, concurrency, batch))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            print(f"{name:>14}: {results[name]}", flush=True)
    results["produce_ceiling"] = asyncio.run(ceiling(settings, seconds, concurrency, batch))
    print(f"{'ceiling':>14}: {results['produce_ceiling']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["measure", "bare"], default="measure")
    parser.add_argument("--port", type=int, default=None, help="bare: where to listen")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", default=None, help="JSON with the figures")
    args = parser.parse_args(argv)
    if args.mode == "bare":
        serve_bare(args.port)
        return
    settings = Settings.from_env(topic_prefix=f"bench-collect-{uuid.uuid4().hex[:6]}.")
    if settings.bootstrap:
        results = run(settings, args.seconds, args.concurrency, args.batch)
    else:
        with EmbeddedBroker(settings) as broker:
            results = run(settings.model_copy(update={"bootstrap": broker.bootstrap}), args.seconds, args.concurrency, args.batch)
    if args.out:
        Path(args.out).write_text(orjson.dumps({"concurrency": args.concurrency, "batch": args.batch, **results},
                                               option=orjson.OPT_INDENT_2).decode())  # fmt: skip


if __name__ == "__main__":
    main()
