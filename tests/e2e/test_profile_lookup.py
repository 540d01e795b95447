"""Profile lookup by any identifier over HTTP, from either of two worker processes."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.settings import Settings
from tests.helpers import create_topics, event, produce

CUSTOMERS = 16


TOKEN = "the-test-token"  # the settings fixture's OMNI_API_TOKEN


def get(worker: WorkerProcess, query: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{worker.port}/profiles?{query}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def get_when_found(
    worker: WorkerProcess, query: str, until: Callable[[dict[str, Any]], bool] = lambda p: True, timeout_s: float = 20.0
) -> dict[str, Any]:
    """Claims and merges are asynchronous: poll until the profile is found and ``until`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = get(worker, query)
        if (status == 200 and until(body)) or time.monotonic() > deadline:
            assert status == 200, (query, status, body)
            return body  # type: ignore[no-any-return]
        time.sleep(0.2)


async def test_any_worker_finds_a_profile_by_any_identifier(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    anonymous = [event("product_view", "web", {"cookie_id": f"ck-{i}"}, f"a{i}", sku="MUG-002") for i in range(CUSTOMERS)]
    logins = [
        event("login", "web", {"customer_id": f"C{i}", "email": f"c{i}@example.dk", "cookie_id": f"ck-{i}"}, f"l{i}")
        for i in range(CUSTOMERS)
    ]
    await produce(settings, "channel.web", [orjson.dumps(e) for e in anonymous])
    workers = [
        WorkerProcess.start(settings.model_copy(update={"state_dir": tmp_path / f"state-{n}"}), tmp_path / f"worker-{n}.log")
        for n in range(2)
    ]
    try:
        wait_ready(workers, 4)
        owned = [set(w.health()["state_partitions"]) for w in workers]  # type: ignore[index]
        assert owned[0] and owned[1] and not owned[0] & owned[1], owned  # each answers for the other too
        wait_until(lambda: sum(w.metrics().get("omni_events_processed_total", 0) for w in workers) >= CUSTOMERS, 20,
                   "the anonymous visits")  # fmt: skip
        await produce(settings, "channel.web", [orjson.dumps(e) for e in logins])  # now each login merges a cookie
        for worker in workers:
            for i in range(CUSTOMERS):
                by_email = get_when_found(
                    worker, "email=" + urllib.parse.quote(f" C{i}@Example.dk "), until=lambda p: bool(p["merges"])
                )
                assert by_email["id"] == f"customer_id:C{i}"
                assert by_email["identifiers"]["cookie_id"] == [f"ck-{i}"]
                assert by_email["viewed"] == ["MUG-002"]  # the anonymous visit came along
                assert [m["profile"] for m in by_email["merges"]] == [f"cookie_id:ck-{i}"]
                assert "claims" not in by_email and "seen_events" not in by_email
                assert get_when_found(worker, f"cookie_id=ck-{i}")["id"] == f"customer_id:C{i}"
                assert get_when_found(worker, f"id=cookie_id:ck-{i}")["id"] == f"customer_id:C{i}"  # merged: followed
            status, body = get(worker, "email=nobody@example.dk")
            assert status == 404 and "error" in body
        stats = []
        for worker in workers:  # the per-rule figures: any worker sums every partition, each once
            request = urllib.request.Request(f"http://127.0.0.1:{worker.port}/rules/stats",
                                             headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as resp:
                body = orjson.loads(resp.read())
            assert body["complete"] and body["partitions"] == [0, 1, 2, 3]
            stats.append(body["rules"])
        assert stats[0] == stats[1]
        for worker in workers:
            for token in (None, "wrong"):  # personal data: no answer without the token, from either worker
                status, body = get(worker, "email=c1@example.dk", token=token)
                assert status == 401 and "bearer" in body["error"]
            for malformed in ("email=not-an-email", "fax=123", "email=a@b.dk&phone=12345678", ""):
                status, body = get(worker, malformed)
                assert status == 400 and "error" in body, (malformed, status, body)
    finally:
        for worker in workers:
            assert worker.stop() == 0, worker.log.read_text()[-3000:]
