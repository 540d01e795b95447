"""Per-rule counts, kept in each state partition beside the profiles they come from.

One entry per partition (``r|ledger``), changed in the same transaction as the
profile whose touch, conversion or outcome it counts, so it is exactly as durable:
checkpointed with the offsets, backed up in the changelog, rebuilt on recovery,
moved with its partition. Any worker sums the ledgers of the partitions it owns;
the report sums them over all workers.
"""

from __future__ import annotations

from typing import Any

from pipeline.runtime.state.partition import PartitionState

LEDGER_KEY = b"r|ledger"
Ledger = dict[str, dict[str, dict[str, float]]]  # rule -> section (treated, holdout, suppressed) -> name -> count


def empty() -> Ledger:
    return {}


def count(state: PartitionState, rule: str, section: str, name: str, amount: float = 1) -> None:
    ledger: Ledger = state.txn.get(LEDGER_KEY) or {}
    sections = ledger.setdefault(rule, {})
    counts = sections.setdefault(section, {})
    counts[name] = counts.get(name, 0) + amount
    state.txn.set(LEDGER_KEY, ledger)


def read(state: PartitionState) -> Ledger:
    return state.txn.get(LEDGER_KEY) or {}  # type: ignore[no-any-return]


def add(total: Ledger, more: Ledger) -> Ledger:
    """Sum two ledgers into ``total``."""
    for rule, sections in more.items():
        mine = total.setdefault(rule, {})
        for section, counts in sections.items():
            into = mine.setdefault(section, {})
            for name, n in counts.items():
                into[name] = round(into.get(name, 0) + n, 2)
    return total


def summed(states: Any) -> Ledger:
    total: Ledger = {}
    for state in states:
        add(total, read(state))
    return total
