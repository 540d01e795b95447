"""deploy/prometheus: the rules pass promtool's checks and its unit tests (the negative-uplift alert fires)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.settings import PROJECT_ROOT

PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"), reason="no promtool here (.ci/run installs it)"
)


CONFIGS = ("prometheus.yml", "compose.yml")


@needs_promtool
def test_rules_are_valid_and_the_negative_uplift_alert_fires_on_made_up_series(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: .ci/run installs Debian's prometheus package"
    # A full check opens the token file a job names, which exists only where Prometheus is deployed:
    # the configs are checked as they are, with their token files pointed at a stand-in.
    shutil.copy(PROMETHEUS / "rules.yml", tmp_path / "rules.yml")
    (tmp_path / "token").write_text("stand-in\n")
    for name in CONFIGS:
        config = yaml.safe_load((PROMETHEUS / name).read_text())
        for job in config["scrape_configs"]:
            if "authorization" in job:
                job["authorization"]["credentials_file"] = str(tmp_path / "token")
        (tmp_path / name).write_text(yaml.safe_dump(config))
    for args in (["check", "rules", "rules.yml"], *(["check", "config", name] for name in CONFIGS)):
        check = subprocess.run([promtool, *args], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def _names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry can expose (counters end in _total, histograms in _bucket...)."""
    names = set()
    for family in registry.collect():
        names |= {family.name, *(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count"))}
    return names


def exposed_names() -> set[str]:
    """What the worker serves: on /metrics, and on /metrics/business with the token."""
    from pipeline.ops.metrics import Metrics

    from pipeline.senders.webhook import WebhookMetrics

    metrics = Metrics()
    return _names(metrics.registry) | _names(metrics.business) | _names(WebhookMetrics().registry)  # and the webhook sender's


def test_prometheus_reads_business_metrics_with_the_token_and_open_ones_without() -> None:
    """Every config scrapes each worker twice: /metrics openly, /metrics/business with a bearer token from a file."""
    for name in CONFIGS:
        jobs = {job["job_name"]: job for job in yaml.safe_load((PROMETHEUS / name).read_text())["scrape_configs"]}
        assert set(jobs) == {"omni-worker", "omni-business"}, name
        open_job, business = jobs["omni-worker"], jobs["omni-business"]
        assert open_job["metrics_path"] == "/metrics" and "authorization" not in open_job
        assert business["metrics_path"] == "/metrics/business"
        assert business["authorization"]["type"] == "Bearer" and business["authorization"]["credentials_file"]
        assert "credentials" not in business["authorization"], "the token belongs in a file, not in the config"
        assert business["static_configs"] == open_job["static_configs"], name
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["prometheus"]["secrets"] == ["omni_api_token"]
    assert compose["secrets"]["omni_api_token"] == {"environment": "OMNI_API_TOKEN"}
    assert "/run/secrets/omni_api_token" in (PROMETHEUS / "compose.yml").read_text()


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(omni_[a-z_]+)\b", expr))


def test_rules_use_only_metrics_the_worker_exposes() -> None:
    exprs = [r["expr"] for g in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"] for r in g["rules"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= exposed_names(), f"not exposed by the worker: {sorted(used - exposed_names())}"


DEPLOY = PROJECT_ROOT / "deploy"


def _setting_env_names() -> set[str]:
    from pipeline.settings import ENV_ALIASES, Settings

    return {ENV_ALIASES.get(name, f"OMNI_{name.upper()}") for name in Settings.model_fields}


def test_compose_and_kubernetes_name_only_real_settings_and_files() -> None:
    """Not run here (no Docker engine, no cluster): what they name must at least exist."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    known = _setting_env_names()
    services = compose["services"]
    assert {"kafka", "topics", "worker-1", "worker-2", "prometheus", "grafana"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    for name, service in services.items():
        for key in service.get("environment", {}):
            if name not in ("kafka",):
                assert key in known, f"{name} sets {key}, which no setting reads"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "worker.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"StatefulSet", "PodDisruptionBudget", "Service", "ConfigMap"} <= set(kinds)
    for key in kinds["ConfigMap"]["data"]:
        assert key in known, key
    sts = kinds["StatefulSet"]["spec"]
    assert sts["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    (container,) = sts["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["memory"]
    for env in container["env"]:
        assert env["name"] == "POD_IP" or env["name"] in known, env["name"]
    assert "OMNI_STATE_DIR=/var/lib/omni/state" in (DEPLOY / "Dockerfile").read_text()
