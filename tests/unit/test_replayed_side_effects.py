"""A replayed input sends again what it sent to other actors the first time.

Those messages may have run at once in the worker, in another state partition, and
been lost with a checkpoint torn between the two partitions' changelog writes (the
sender's part landed). Each receiver takes the repeat as a repeat. The whole story,
through a worker that tears a checkpoint on purpose, is in
``tests/e2e/test_torn_checkpoint.py``; these are the rules one step at a time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.processor import Processor
from pipeline.profiles.product import product_step
from pipeline.runtime.state.memory import MemoryStore
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import Settings
from tests.helpers import clean, event, write_rules

Sent = list[tuple[str, dict[str, Any]]]


def _stock(event_id: str, qty: int) -> dict[str, Any]:
    return {"op": "product", "event": clean(event("inventory_update", "ops", {}, event_id, sku="PRN-300", available_qty=qty))}


def test_a_restock_applied_before_sends_its_notices_again() -> None:
    state = PartitionState.open(0, MemoryStore())
    out: Sent = []
    product_step(state, "sku:PRN-300", _stock("inv-1", 0), out, 100)
    product_step(state, "sku:PRN-300", {"op": "interest", "profile": "customer_id:C1", "ts": 1.0, "event_id": "v1"}, out, 100)
    out.clear()
    product_step(state, "sku:PRN-300", _stock("inv-2", 5), out, 100)
    first = list(out)
    assert [(target, msg["about"]) for target, msg in first] == [("customer_id:C1", "back_in_stock")]
    assert "waiting" not in state.txn.get(b"sku:PRN-300"), "back online: the list is cleared"
    out.clear()
    product_step(state, "sku:PRN-300", _stock("inv-2", 5), out, 100)  # the replay
    assert out == first


def test_an_erased_customer_is_not_kept_among_the_notices_to_send_again() -> None:
    state = PartitionState.open(0, MemoryStore())
    out: Sent = []
    product_step(state, "sku:PRN-300", _stock("inv-1", 0), out, 100)
    product_step(state, "sku:PRN-300", {"op": "interest", "profile": "customer_id:C1", "ts": 1.0, "event_id": "v1"}, out, 100)
    product_step(state, "sku:PRN-300", _stock("inv-2", 5), out, 100)
    product_step(state, "sku:PRN-300", {"op": "unwait", "profiles": ["customer_id:C1"]}, out, 100)
    out.clear()
    product_step(state, "sku:PRN-300", _stock("inv-2", 5), out, 100)
    assert out == []
    assert "C1" not in str(state.txn.get(b"sku:PRN-300"))


def test_interest_in_a_product_tells_the_profile_every_time() -> None:
    """The profile's list of where it waits (what erasure reads) may have lost the first notice."""
    state = PartitionState.open(0, MemoryStore())
    out: Sent = []
    product_step(state, "sku:PRN-300", _stock("inv-1", 0), out, 100)
    for _ in range(2):
        out.clear()
        product_step(state, "sku:PRN-300", {"op": "interest", "profile": "customer_id:C1", "ts": 1.0, "event_id": "v1"}, out, 100)
        assert out == [("customer_id:C1", {"op": "notice", "about": "waiting", "sku": "PRN-300"})]


def test_a_duplicate_event_claims_its_identifiers_and_states_its_interest_again() -> None:
    settings = Settings(rules_file=write_rules(Path(tempfile.mkdtemp())))
    processor = Processor(settings, Catalogue.load(settings.catalogue_file))
    state = PartitionState.open(0, MemoryStore())
    view = clean(event("product_view", "web", {"customer_id": "C1", "email": "c1@example.com"}, "view-1", sku="PRN-300"))
    first: Sent = []
    processor.handle(state, "customer_id:C1", {"op": "ev", "event": view}, time.time(), first, [])
    again: Sent = []
    processor.handle(state, "customer_id:C1", {"op": "ev", "event": view}, time.time(), again, [])
    assert processor.tally.duplicates == 1
    assert sorted((t, m["op"]) for t, m in again) == [("email:c1@example.com", "claim"), ("sku:PRN-300", "interest")]
    assert sorted((t, m["op"]) for t, m in first) == sorted((t, m["op"]) for t, m in again)
    profile = state.txn.get(b"customer_id:C1")
    assert profile["claims"] == ["email:c1@example.com"], "a conflict answering the claim must be heard"
