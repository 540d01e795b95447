"""What the worker's HTTP API shows to whom: the open /metrics holds no business figure; those, like
profiles, need the token. The app is served in this process; nothing here needs a broker."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.app import create_app
from pipeline.ops.broker import free_port
from pipeline.ops.metrics import Metrics
from pipeline.settings import Settings
from tests.helpers import issue_certificate

TOKEN = "unit-token"
LEDGER = {
    "abandoned_cart": {
        "treated": {"sent": 40.0, "touches": 40.0, "conversions": 6.0, "revenue": 1234.5, "delivered": 39.0},
        "holdout": {"held": 10.0, "touches": 10.0, "conversions": 1.0, "revenue": 99.0},
        "suppressed": {"quiet_hours": 3.0},
    }
}


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_the_open_registry_holds_no_business_figure_and_the_business_one_holds_them_all() -> None:
    metrics = Metrics()
    metrics.show_ledger(LEDGER)
    open_page = families(generate_latest(metrics.registry).decode())
    assert "omni_rule" not in open_page
    assert not any(labels.get("what") in ("revenue", "conversions") for s in open_page.values() for labels, _ in s)
    business = families(generate_latest(metrics.business).decode())
    assert set(business) == {"omni_rule"}
    assert ({"rule": "abandoned_cart", "group": "treated", "what": "revenue"}, 1234.5) in business["omni_rule"]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Metrics]]:
    settings = Settings(api_token=TOKEN, state_dir=tmp_path / "state")
    app = create_app(settings, Catalogue.load(settings.catalogue_file))
    app.metrics.show_ledger(LEDGER)  # type: ignore[attr-defined]
    async with TestClient(TestServer(app.web.web_app)) as http:
        yield http, app.metrics  # type: ignore[attr-defined]


async def test_open_metrics_carry_no_revenue_and_business_metrics_need_the_token(
    client: tuple[TestClient, Metrics],
) -> None:
    http, _ = client
    resp = await http.get("/metrics")
    assert resp.status == 200
    page = families(await resp.text())
    assert "omni_events_in" in page and "omni_rule" not in page
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = await http.get("/metrics/business", headers=headers)
        assert resp.status == 401 and "bearer" in (await resp.json())["error"], headers
    resp = await http.get("/metrics/business", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200 and resp.content_type == "text/plain"
    business = families(await resp.text())
    assert ({"rule": "abandoned_cart", "group": "holdout", "what": "revenue"}, 99.0) in business["omni_rule"]


async def test_no_token_configured_lets_nobody_read_business_metrics(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")  # OMNI_API_TOKEN unset
    app = create_app(settings, Catalogue.load(settings.catalogue_file))
    async with TestClient(TestServer(app.web.web_app)) as http:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            assert (await http.get("/metrics/business", headers=headers)).status == 401
        assert (await http.get("/metrics")).status == 200


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to issue test certificates")
async def test_with_https_the_worker_serves_its_api_over_tls_only(tmp_path: Path) -> None:
    cafile, cert, key = issue_certificate(tmp_path / "ca", "omni-test-ca")
    settings = Settings(api_token=TOKEN, state_dir=tmp_path / "state", web_port=free_port(), web_scheme="https",
                        web_tls_certfile=cert, web_tls_keyfile=key, web_tls_cafile=cafile)  # fmt: skip
    app = create_app(settings, Catalogue.load(settings.catalogue_file))
    app.web.init_server()
    await app.web.start_server()  # as the worker does: Faust's server, with the settings' TLS
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{settings.web_url}/metrics/business", headers=headers, ssl=settings.web_client_ssl()) as resp:
                assert settings.web_url.startswith("https://") and resp.status == 200
            with pytest.raises(aiohttp.ClientError):  # the same port in plain http: no answer
                await http.get(f"http://127.0.0.1:{settings.web_port}/metrics")
    finally:
        await app.web.stop_server()
