"""`omni run` (what `make run` starts): every play on screen, the first within 30 s, and one Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What each play of the demo rules sends: the simulator gives every one of them its triggers.
EVERY_PLAY = (
    "offer_consumable", "cart_reminder", "back_in_stock", "pickup_ready", "pickup_reminder", "prepare_order",
    "loyalty_reward", "offer_reorder", "agent_screen",
)  # fmt: skip


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_run_shows_actions_and_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    marker = f"OMNI_TEST_RUN={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        first_action = None
        unseen = set(EVERY_PLAY)
        while time.monotonic() - started < 120 and unseen:
            line = proc.stdout.readline()
            if not line:
                assert proc.poll() is None, "".join(lines)
                time.sleep(0.1)
                continue
            lines.append(line)
            shown = {a for a in unseen if f" {a} " in line}
            if shown and first_action is None:
                first_action = time.monotonic() - started
            unseen -= shown
        assert first_action is not None, "no action shown:\n" + "".join(lines)
        assert first_action < 30, f"first action after {first_action:.1f}s"
        assert not unseen, f"plays never shown: {sorted(unseen)}"
        assert any("metrics at http://" in line for line in lines)
        assert len(processes_with(marker)) >= 3  # run, worker, simulator (and the embedded broker)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        proc.wait(timeout=60)
    os.set_blocking(proc.stdout.fileno(), True)
    rest = proc.stdout.read()
    assert proc.returncode == 0, rest
    stopped = ["simulator stopped", "worker stopped"] + ([] if os.environ.get("KAFKA_BOOTSTRAP") else ["broker stopped"])
    for name in stopped:
        assert name in rest, rest
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == [], "orphaned processes left behind"
