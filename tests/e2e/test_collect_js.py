"""The JavaScript SDKs drive a play each through `omni collect` and a worker process.

* ``@segment/analytics-node`` (Node) sends an ``Order Completed`` for an espresso machine: the
  descaler follow-up comes out.
* analytics.js (``@segment/analytics-next``) in a shop's page loaded by headless Chromium identifies
  the shopper and adds to the cart: the cart reminder comes out, in her language. The page comes from
  another origin than the collector's, so the browser's CORS preflight is answered for real.

Both need Node and its packages (``npm ci`` in ``tests/js``: ``make test`` runs it) and Chromium
(``.ci/run`` installs Debian's). They are not skipped where those are missing: they fail, saying what is.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from pipeline.bench.workers import WorkerProcess, wait_ready
from pipeline.collect.process import CollectorProcess
from pipeline.ops.broker import free_port
from pipeline.settings import PROJECT_ROOT, Settings
from tests.helpers import catalogue_with_delay, create_topics, read_json, write_rules

JS = PROJECT_ROOT / "tests" / "js"
KEY = "js-web-write-key"


def node_modules() -> Path:
    modules = JS / "node_modules" / "@segment"
    assert (modules / "analytics-node").is_dir() and (modules / "analytics-next").is_dir(), \
        "the JavaScript SDKs are not installed: run `npm ci --prefix tests/js` (make test does)"  # fmt: skip
    return modules


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n  - {{name: web shop, channel: web, write_keys: [{KEY}]}}\n")
    return path


async def test_analytics_node_orders_an_espresso_machine_and_gets_the_descaler_follow_up(
    settings: Settings, tmp_path: Path, sources: Path
) -> None:
    node_modules()
    node = shutil.which("node")
    assert node is not None, "node is missing: .ci/run installs Debian's nodejs"
    await create_topics(settings)
    worker = WorkerProcess.start(settings, tmp_path / "worker.log", catalogue_with_delay(tmp_path, "2s"))
    collector = CollectorProcess.start(settings, tmp_path / "collect.log", sources)
    try:
        wait_ready([worker], 4)
        calls = [
            {"method": "identify", "params": {"userId": "C-node", "traits": {"email": "node@example.se", "locale": "sv-SE"}}},
            {"method": "track", "params": {"userId": "C-node", "event": "Order Completed", "properties": {
                "order_id": "O-node-1", "currency": "SEK", "revenue": 3990,
                "products": [{"product_id": "COF-200", "price": 3990, "quantity": 1}]}}},
        ]  # fmt: skip
        done = await asyncio.to_thread(
            subprocess.run, [node, str(JS / "send_node.mjs"), collector.url, KEY], input=json.dumps(calls),
            capture_output=True, text=True, timeout=60, cwd=JS,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)
        assert [r["error"] for r in results] == [None, None], results
        follow_ups = await read_json(settings, "actions.email", timeout_s=30,
                                     until=lambda got: any(b'"consumables_follow_up"' in (r.value or b"") for r in got))  # fmt: skip
        (action,) = [a for a in follow_ups if a["rule"] == "consumables_follow_up"]  # a loyalty reward may come too
    finally:
        collector.stop()
        assert worker.stop() == 0
    assert (action["rule"], action["customer"], action["offer"]["sku"]) == ("consumables_follow_up", "customer_id:C-node", "DESC-200")
    assert action["trigger_event_ids"] == [results[1]["messageId"]]
    assert action["address"] == "node@example.se" and action["message"].startswith("Dags för nya")


async def test_analytics_js_in_headless_chromium_fills_a_cart_and_gets_the_reminder(
    settings: Settings, tmp_path: Path, sources: Path
) -> None:
    umd = node_modules() / "analytics-next" / "dist" / "umd"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "chromium is missing: .ci/run installs Debian's chromium package"
    settings = settings.model_copy(update={"rules_file": write_rules(tmp_path, abandoned_cart={"window": "2s"})})
    await create_topics(settings)
    worker = WorkerProcess.start(settings, tmp_path / "worker.log")
    collector = CollectorProcess.start(settings, tmp_path / "collect.log", sources)
    shop, reported, runner = await _shop(collector.port, umd, [
        ["page", []],
        ["identify", ["C-web", {"email": "Web@Example.dk", "locale": "da-DK"}]],
        ["track", ["Product Added", {"product_id": "TSH-001", "name": "T-shirt", "price": 19.0, "quantity": 1}]],
    ])  # fmt: skip
    chromium = None
    try:
        wait_ready([worker], 4)
        chromium = await asyncio.create_subprocess_exec(
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", shop,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        page = await asyncio.wait_for(reported, timeout=60)
        assert "error" not in page, page["error"]
        assert [i["failed"] for i in page["ids"]] == [None, None, None], page
        (action,) = await read_json(settings, "actions.email", until=lambda got: len(got) >= 1, timeout_s=30)
        page_view = (await read_json(settings, "channel.web", until=lambda got: len(got) >= 3))[0]
    finally:
        if chromium is not None and chromium.returncode is None:
            chromium.kill()
            await chromium.wait()
        await runner.cleanup()
        collector.stop()
        assert worker.stop() == 0
    assert (action["rule"], action["customer"], action["address"]) == ("abandoned_cart", "customer_id:C-web", "web@example.dk")
    assert action["message"].startswith("Du glemte noget") and page["ids"][2]["messageId"] in action["trigger_event_ids"]
    # The anonymous page view before the identify call is the same shopper's: her cookie joined her profile.
    assert page_view["identifiers"] == {"cookie_id": page["anonymousId"]} and page_view["type"] == "page_view"


async def _shop(collector_port: int, umd: Path, calls: list[Any]) -> tuple[str, asyncio.Future[dict[str, Any]], web.AppRunner]:
    """A shop's web server on another loopback port: the page, analytics.js's bundles, and /done for the page's report."""
    html = (JS / "page.html").read_text().replace("__COLLECTOR__", f"127.0.0.1:{collector_port}") \
        .replace("__WRITE_KEY__", KEY).replace("__CALLS__", json.dumps(calls))  # fmt: skip
    reported: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def done(request: web.Request) -> web.Response:
        if not reported.done():
            reported.set_result(orjson.loads(await request.read()))
        return web.Response(text="thanks")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/done", done)
    app.router.add_static("/analytics-next/bundles", umd)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/", reported, runner
