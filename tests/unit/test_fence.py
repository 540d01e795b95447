"""The output fence's record, and an action decided again after a crash being recorded but not sent."""

from __future__ import annotations

import time
from pathlib import Path

from aiokafka import TopicPartition

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.processor import Processor
from pipeline.runtime.state.fence import FENCE_KEY, Fence
from pipeline.runtime.state.memory import MemoryStore
from pipeline.runtime.state.partition import PartitionState
from pipeline.settings import PACKAGE_DATA, Settings
from tests.helpers import clean, purchase, write_rules

EMAIL_0, EMAIL_1 = TopicPartition("actions.email", 0), TopicPartition("actions.email", 1)


def test_marks_only_rise_and_the_record_round_trips_through_a_store() -> None:
    fence = Fence()
    assert fence.advance({EMAIL_0: 10, EMAIL_1: 3})
    assert not fence.advance({EMAIL_0: 7}), "a lower end is an older bound: the mark stays"
    assert fence.advance({EMAIL_0: 12})
    record = fence.encode({"a1": 100.0})
    assert record is not None
    store = MemoryStore()
    store.write([(FENCE_KEY, record)], 0)
    loaded = Fence.load(store)
    assert loaded.marks == {EMAIL_0: 12, EMAIL_1: 3} and loaded.ids == {"a1": 100.0}
    assert loaded.encode({"a1": 100.0}) is None, "nothing new: no record to write"
    assert loaded.encode({}) is not None


def test_a_partition_without_a_record_has_no_marks() -> None:
    fence = Fence.load(MemoryStore())
    assert fence.written is None and fence.marks == {} and fence.ids == {}


def test_prune_forgets_only_old_ids() -> None:
    fence = Fence(ids={"old": 10.0, "new": 1000.0})
    fence.prune(500.0)
    assert fence.ids == {"new": 1000.0}


def test_an_action_found_sent_is_recorded_again_but_not_sent_again(tmp_path: Path) -> None:
    processor = Processor(Settings(rules_file=write_rules(tmp_path)), Catalogue.load(PACKAGE_DATA / "catalogue.yaml"))

    def decide(fenced: dict[str, float]) -> tuple[PartitionState, list[object]]:
        state = PartitionState.open(0, MemoryStore())
        state.fence.ids.update(fenced)
        processor.handle(state, "customer_id:C1", {"op": "apply", "event": clean(purchase("C1", "e1", ["VAC-100"]))}, time.time(), [], [])  # fmt: skip
        due = state.timers[0][0]
        return state, [action for _, action in processor.fire_due(state, due, [], [])]

    _, (action,) = decide({})
    state, sent = decide({action.action_id: time.time()})  # type: ignore[attr-defined]
    assert sent == []
    assert processor.tally.fenced == 1
    assert state.fence.ids == {}, "matched once: the decision is in the profile now"
    profile = state.txn.get(b"customer_id:C1")
    assert action.action_id in profile["actions"] and profile["timers"] == {}  # type: ignore[attr-defined]
