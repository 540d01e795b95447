"""deploy/prometheus: the rules pass promtool's checks and its unit tests (the negative-uplift alert fires)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from pipeline.settings import PROJECT_ROOT

PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"), reason="no promtool here (.ci/run installs it)"
)


@needs_promtool
def test_rules_are_valid_and_the_negative_uplift_alert_fires_on_made_up_series() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: .ci/run installs Debian's prometheus package"
    check = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def test_rules_use_only_metrics_the_worker_exposes() -> None:
    from pipeline.ops.metrics import Metrics

    exposed = {family.name for family in Metrics().registry.collect()}
    exprs = [r["expr"] for g in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"] for r in g["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\b(omni_[a-z_]+)\b", expr)}
    assert used and used <= exposed, f"not exposed by the worker: {sorted(used - exposed)}"
