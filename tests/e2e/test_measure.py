"""What each play earns: the report recovers effects a simulated world was built with, and its page draws."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.measure.evaluate import EFFECTS, evaluate
from pipeline.measure.report import page
from pipeline.measure.uplift import figures


def test_the_report_recovers_each_plays_true_effect_within_its_interval() -> None:
    """A real broker and worker, and a closed-loop world (``pipeline/measure/evaluate.py``).

    The world is deterministic (who is held out and who buys are hashes of profile and action
    ids), so this run gives the same figures every time; it is not a coin toss per run.
    """
    result = evaluate(customers_per_play=1000, log=lambda line: None)
    verdicts = {v["rule"]: v for v in result["verdicts"]}
    assert set(verdicts) == set(EFFECTS)
    for rule, v in verdicts.items():
        assert v["treated"] > 600 and v["held_out"] > 200, v
        assert v["recovered"], f"{rule}: true {v['true_uplift']} outside [{v['ci_low']}, {v['ci_high']}]"
    flagged = {r["rule"] for r in result["stats"]["rules"] if r["negative"]}
    assert flagged == {"repeat_purchase"}  # the play built to hurt, and only it
    rows = {r["rule"]: r for r in result["stats"]["rules"]}
    assert rows["abandoned_cart"]["delivered"] == rows["abandoned_cart"]["sent"] > rows["abandoned_cart"]["opened"] > 0


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"), reason="no chromium here (.ci/run installs it)")
def test_the_report_page_draws_its_charts_in_headless_chromium(tmp_path: Path) -> None:
    ledger = {
        "abandoned_cart": {"treated": {"sent": 900, "touches": 900, "conversions": 240, "delivered": 880, "opened": 400,
                                       "clicked": 90, "revenue": 4200.0},
                           "holdout": {"held": 100, "touches": 100, "conversions": 15, "revenue": 300.0},
                           "suppressed": {"frequency_cap": 40, "no_consent": 12}},
        "repeat_purchase": {"treated": {"sent": 500, "touches": 500, "conversions": 40},
                            "holdout": {"held": 200, "touches": 200, "conversions": 50}, "suppressed": {"no_channel": 3}},
    }  # fmt: skip
    stats = {"generated_at": time.time(), "complete": True, "partitions": [0, 1, 2, 3],
             "rules": [f.as_dict() for f in figures(ledger, ["abandoned_cart", "repeat_purchase"])]}  # fmt: skip
    html = tmp_path / "report.html"
    html.write_text(page(stats), encoding="utf-8")
    browser = _chromium()
    assert browser is not None, "chromium is missing: .ci/run installs Debian's chromium package"
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    for chart, least in (("uplift", 2), ("funnel", 10), ("suppressed", 3)):
        marker = f'id="{chart}" class="chart" data-drawn="'
        assert marker in dom, f"the {chart} chart was not drawn"
        drawn = int(dom.split(marker, 1)[1].split('"', 1)[0])
        assert drawn >= least, f"{chart}: {drawn} marks drawn"
        assert "<svg" in dom.split(marker, 1)[1].split("</div>", 1)[0]
    assert "Significantly negative uplift: repeat_purchase" in dom
