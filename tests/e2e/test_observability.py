"""What ops see: a live worker's /metrics and /metrics/business against the dashboard and alert rules, no
business figure on the open page, no personal data in any label, and a real Prometheus scraping a worker
(the business page with the token) and answering queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.actions.catalogue import Catalogue
from pipeline.bench.workers import WorkerProcess, free_port, wait_ready
from pipeline.ingest.normalise import parse_identifier
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.simulate.population import Population
from tests.helpers import create_topics, produce

DEPLOY = PROJECT_ROOT / "deploy"
TOKEN = "the-test-token"  # the settings fixture's OMNI_API_TOKEN


@pytest.fixture
def busy_worker(settings: Settings, tmp_path: Path) -> Iterator[tuple[WorkerProcess, set[str]]]:
    """A worker process that has processed simulated traffic (and some bad records); the identifiers it saw."""
    import asyncio

    asyncio.run(create_topics(settings))
    population = Population(Catalogue.load(settings.catalogue_file), customers=60, seed=5, bad_rate=0.05)
    records = [r for _ in range(400) for r in population.journey(time.time())]
    identifiers: set[str] = set()
    for r in records:
        try:
            event = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            continue
        for kind, raw in (event.get("identifiers") or {}).items() if isinstance(event, dict) else ():
            if isinstance(raw, str) and raw.strip():
                identifiers.add(raw.strip())
                normal, _ = parse_identifier(kind, raw, settings.default_phone_region)
                if normal:
                    identifiers.add(normal.partition(":")[2])
    by_topic: dict[str, list[bytes]] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append(r.value)
    for topic, values in by_topic.items():
        asyncio.run(produce(settings, topic, values))
    worker = WorkerProcess.start(settings, tmp_path / "worker.log")
    try:
        wait_ready([worker], 4)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.metrics().get("omni_events_in_total", 0) < len(records) * 0.8:
            time.sleep(0.5)
        time.sleep(1.5)  # housekeeping refreshes the gauges once a second
        yield worker, identifiers
    finally:
        worker.stop()


def live_names(text: str) -> set[str]:
    """Every name the page declares (a labelled counter with no sample yet is declared by its HELP and TYPE)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name, *(family.name + s for s in suffixes.get(family.type, ()))}
        names |= {sample.name for sample in family.samples}
    return names


def panel_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "omni-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_dashboard_and_alerts_use_only_what_a_live_worker_exposes_and_no_label_holds_personal_data(
    busy_worker: tuple[WorkerProcess, set[str]],
) -> None:
    worker, identifiers = busy_worker
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as resp:
        open_text = resp.read().decode()
    with pytest.raises(urllib.error.HTTPError) as refused:  # business figures: not without the token
        urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics/business", timeout=5)
    assert refused.value.code == 401
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.port}/metrics/business", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        business_text = resp.read().decode()
    assert "omni_rule" not in {f.name for f in text_string_to_metric_families(open_text)}
    assert {f.name for f in text_string_to_metric_families(business_text)} == {"omni_rule"}
    text = open_text + business_text
    names = live_names(text)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    exprs = panel_exprs() + [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {n for e in exprs for n in re.findall(r"\b(omni_[a-z_]+)\b", e)}
    # The webhook sender is a process of its own; tests/unit/test_deploy.py checks its rules against its registry.
    used -= {n for n in used if n.startswith("omni_webhook_")}
    assert used - names == set(), f"panels or rules use metrics this worker does not expose: {sorted(used - names)}"
    for needed in ("omni_events_in_total", "omni_deadletter_total", "omni_profiles", "omni_consumer_lag", "omni_rule"):
        assert needed in names
    values = {v for family in text_string_to_metric_families(text) for s in family.samples for v in s.labels.values()}
    assert len(identifiers) > 100 and values
    leaked = {v for v in values if any(i in v for i in identifiers if len(i) >= 4)}
    assert leaked == set(), f"label values holding identifiers: {sorted(leaked)[:5]}"


def _prometheus() -> str | None:
    return shutil.which("prometheus")


@pytest.mark.skipif(_prometheus() is None and not os.environ.get("CI"), reason="no prometheus here (.ci/run installs it)")
def test_a_real_prometheus_scrapes_the_worker_and_answers_queries(
    busy_worker: tuple[WorkerProcess, set[str]], tmp_path: Path
) -> None:
    worker, _ = busy_worker
    binary = _prometheus()
    assert binary is not None, "prometheus is missing: .ci/run installs Debian's prometheus package"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    (tmp_path / "omni-api-token").write_text(TOKEN)
    for job in config["scrape_configs"]:  # /metrics, and /metrics/business with the token
        job["static_configs"] = [{"targets": [f"127.0.0.1:{worker.port}"]}]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(tmp_path / "omni-api-token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip

    def query(q: str) -> list[dict]:  # type: ignore[type-arg]
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())["data"]["result"]  # type: ignore[no-any-return]

    try:
        deadline, answers = time.monotonic() + 60, {}
        wanted = {
            "up": 'up{job="omni-worker"}',
            "business_up": 'up{job="omni-business"}',
            "events": "sum(omni_events_in_total)",
            "profiles": "sum(omni_profiles)",
            "dead": "sum by (reason) (omni_deadletter_total)",
        }
        while time.monotonic() < deadline and len(answers) < len(wanted):
            for name, q in wanted.items():
                try:
                    result = query(q)
                except OSError:
                    break  # not listening yet
                if result:
                    answers[name] = result
            time.sleep(0.5)
        assert set(answers) == set(wanted), (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(answers["up"][0]["value"][1]) == 1.0
        assert float(answers["business_up"][0]["value"][1]) == 1.0  # the token was taken
        assert float(answers["events"][0]["value"][1]) > 0 and float(answers["profiles"][0]["value"][1]) > 0
        assert {r["metric"]["reason"] for r in answers["dead"]}  # the bad records, by reason
        rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).read())
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert {"OmniWorkerDown", "OmniRuleNegativeUplift", "omni:rule_uplift"} <= loaded
    finally:
        server.terminate()
        server.wait(timeout=20)
