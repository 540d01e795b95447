"""Durations as rules write them: "500ms", "2s", "15m", "48h", "60d", "2w"."""

from __future__ import annotations

import re

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError naming the bad text."""
    match = DURATION_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a duration (use e.g. '2s', '48h', '60d')")
    return float(match.group(1)) * UNITS[match.group(2)]


def describe_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            n = int(seconds // UNITS[unit])
            return f"{n}{unit}"
    return f"{seconds:g}s"
