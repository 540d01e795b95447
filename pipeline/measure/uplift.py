"""From counts to conclusions: conversion rates, uplift and its confidence interval, per rule.

Uplift is the treated conversion rate minus the holdout's, in percentage points of
the touches, with a normal-approximation (Wald) interval for a difference of two
proportions. A rule whose whole interval lies below zero is flagged: its actions
make customers buy less.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.measure.ledger import Ledger

Z95 = 1.959964


@dataclass(frozen=True, slots=True)
class RuleFigures:
    rule: str
    sent: int
    held_out: int
    suppressed: dict[str, int]
    delivered: int
    opened: int
    clicked: int
    bounced: int
    conversions: int
    revenue: float
    holdout_conversions: int
    holdout_revenue: float
    rate: float | None
    holdout_rate: float | None
    uplift: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def negative(self) -> bool:
        """Significantly negative: the whole 95 % interval is below zero."""
        return self.ci_high is not None and self.ci_high < 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "negative": self.negative}


def interval(conv_t: int, n_t: int, conv_h: int, n_h: int, z: float = Z95) -> tuple[float, float, float] | None:
    """Uplift and its interval, or None while either group has no touches."""
    if n_t == 0 or n_h == 0:
        return None
    p_t, p_h = conv_t / n_t, conv_h / n_h
    se = math.sqrt(p_t * (1 - p_t) / n_t + p_h * (1 - p_h) / n_h)
    if se == 0:  # both rates 0 or 1: no spread to measure yet; half a conversion's worth instead
        se = math.sqrt(0.25 / n_t + 0.25 / n_h)
    uplift = p_t - p_h
    return uplift, uplift - z * se, uplift + z * se


def figures(ledger: Ledger, rules: list[str]) -> list[RuleFigures]:
    out = []
    for rule in sorted(set(rules) | set(ledger)):
        sections = ledger.get(rule, {})
        t, h = sections.get("treated", {}), sections.get("holdout", {})
        n_t, c_t = int(t.get("touches", 0)), int(t.get("conversions", 0))
        n_h, c_h = int(h.get("touches", 0)), int(h.get("conversions", 0))
        result = interval(c_t, n_t, c_h, n_h)
        out.append(RuleFigures(
            rule=rule, sent=int(t.get("sent", 0)), held_out=int(h.get("held", 0)),
            suppressed={k: int(v) for k, v in sorted(sections.get("suppressed", {}).items())},
            delivered=int(t.get("delivered", 0)), opened=int(t.get("opened", 0)), clicked=int(t.get("clicked", 0)),
            bounced=int(t.get("bounced", 0)), conversions=c_t, revenue=round(t.get("revenue", 0.0), 2),
            holdout_conversions=c_h, holdout_revenue=round(h.get("revenue", 0.0), 2),
            rate=c_t / n_t if n_t else None, holdout_rate=c_h / n_h if n_h else None,
            uplift=result[0] if result else None, ci_low=result[1] if result else None,
            ci_high=result[2] if result else None,
        ))  # fmt: skip
    return out
