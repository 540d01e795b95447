import subprocess
import sys
import time
from pathlib import Path


from pipeline.actions.catalogue import Catalogue
from pipeline.engine.processor import Processor
from pipeline.runtime.state.base import PartitionTransaction
from pipeline.runtime.state.memory import MemoryStore
from pipeline.runtime.state.partition import PartitionState, timer_key
from pipeline.runtime.state.rocksdb import RocksDBStore
from pipeline.settings import PACKAGE_DATA, Settings
from tests.helpers import purchase
from tests.helpers import clean, write_rules


def test_transaction_reads_its_own_writes_and_orders_timer_index_safely() -> None:
    store = MemoryStore()
    txn = PartitionTransaction(store)
    txn.set(b"customer_id:C1", {"n": 1})
    txn.set(b"t:0001|a", {"due": 1})
    txn.delete(b"t:0000|b")
    assert txn.get(b"customer_id:C1") == {"n": 1}
    items = txn.take()
    # new index entries first, removed ones last: any prefix of the changelog is consistent
    assert [k for k, _ in items] == [b"t:0001|a", b"customer_id:C1", b"t:0000|b"]
    assert items[-1][1] is None
    assert not txn
    # Until the background flush reports back, reads see the taken values, not the stale store.
    assert txn.get(b"customer_id:C1") == {"n": 1} and txn.get(b"t:0000|b") is None
    store.write(items, 0)
    txn.flushed()
    assert txn.get(b"customer_id:C1") == {"n": 1}


def test_a_snapshot_encoded_in_slices_keeps_each_value_as_it_was_when_taken() -> None:
    store = MemoryStore()
    txn = PartitionTransaction(store)
    for n in range(10):
        txn.set(f"c{n}".encode(), {"n": n})
    txn.snapshot()
    assert not txn.encode(3)  # a slice: the rest waits for the next batch
    # A later event changes c9 in place before the checkpoint reached it: the checkpoint
    # must still hold c9 as of its offsets, not the later change.
    profile = txn.get(b"c9")
    profile["n"] = 99
    txn.set(b"c9", profile)
    txn.set(b"c8", {"n": 88})
    assert txn.encode(100)
    taken = dict(txn.taken())
    assert taken[b"c9"] == b'{"n":9}' and taken[b"c8"] == b'{"n":8}' and len(taken) == 10
    assert txn.get(b"c9") == {"n": 99} and len(txn) == 2  # the new values wait for the next checkpoint
    store.write(list(taken.items()), 0)
    txn.flushed()
    assert txn.take() == [(b"c9", b'{"n":99}'), (b"c8", b'{"n":88}')]


def test_only_keys_the_cache_does_not_hold_count_against_the_memory_bound() -> None:
    store = MemoryStore()
    txn = PartitionTransaction(store, cache_keys=2)
    for n in range(3):
        txn.set(f"c{n}".encode(), {"n": n})
        txn.set(f"c{n}".encode(), {"n": n})  # written again before the checkpoint: still one key
    assert txn.held == 3
    store.write(txn.take(), 0)
    txn.flushed()  # the two written last stay decoded in the cache
    assert txn.held == 0
    for n in range(4):
        profile = txn.get(f"c{n}".encode()) or {}
        profile["seen"] = True
        txn.set(f"c{n}".encode(), profile)
    assert len(txn) == 4 and txn.held == 2  # c0, read back from the store, and c3, new


def test_identifier_and_timer_entries_weigh_a_sixteenth_of_a_value_against_the_memory_bound() -> None:
    txn = PartitionTransaction(MemoryStore())
    for n in range(32):
        txn.set(f"i|email:c{n}@example.com".encode(), [f"customer_id:C{n}", "ev-1"])
        txn.set(timer_key(1000.0 + n, f"customer_id:C{n}", "abandoned_cart"), {"due": 1000.0 + n})
    assert txn.held == 4  # 64 small entries
    txn.set(b"customer_id:C1", {"n": 1})
    assert txn.held == 5


def test_rocksdb_store_keeps_data_and_offset_together(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "p0")
    assert store.changelog_offset() == -1
    store.write([(b"a", b"1"), (b"t:1", b"x"), (b"t:2", b"y")], 41)
    store.write([(b"a", None)], 42)
    store.close()
    store = RocksDBStore(tmp_path / "p0")
    assert store.get(b"a") is None and store.changelog_offset() == 42
    assert list(store.items(b"t:")) == [(b"t:1", b"x"), (b"t:2", b"y")]
    store.wipe()
    assert store.changelog_offset() == -1 and store.get(b"t:1") is None
    store.close()


def test_processor_schedules_fires_once_and_reloads_timers_from_the_store(tmp_path: Path) -> None:
    processor = Processor(Settings(rules_file=write_rules(tmp_path)), Catalogue.load(PACKAGE_DATA / "catalogue.yaml"))
    store = MemoryStore()
    state = PartitionState.open(0, store)
    e = clean(purchase("C1", "e1", ["VAC-100"]))
    for _ in range(2):  # the second time redelivered
        processor.handle(state, "customer_id:C1", {"op": "apply", "event": e}, time.time(), [], [])
    assert processor.tally.duplicates == 1
    store.write(state.txn.take(), 0)
    reopened = PartitionState.open(0, store)
    assert len(reopened.timers) == 1
    due = reopened.timers[0][0]
    assert processor.fire_due(reopened, due - 1, [], []) == []
    ((_, action),) = processor.fire_due(reopened, due, [], [])
    assert action.offer is not None and action.offer["sku"] == "BAG-100"
    assert processor.fire_due(reopened, due + 1, [], []) == []
    profile = reopened.txn.get(b"customer_id:C1")
    assert profile["timers"] == {} and action.action_id in profile["actions"]
    assert reopened.txn.get(timer_key(due, "customer_id:C1", next(iter([action.facts["order_id"]])))) is None


def test_a_timer_due_already_is_indexed_only_if_a_checkpoint_comes_before_it_fires() -> None:
    state = PartitionState.open(0, MemoryStore())
    now = time.time()
    state.schedule(now - 1, "customer_id:C1", "fires-now")
    state.schedule(now + 3600, "customer_id:C1", "later")
    assert [k for k, _ in state.txn.take()] == [timer_key(now + 3600, "customer_id:C1", "later")]
    state.txn.flushed()
    state.index_unfired()  # what the engine does before a checkpoint
    assert [k for k, _ in state.txn.take()] == [timer_key(now - 1, "customer_id:C1", "fires-now")]
    state.txn.flushed()
    state.schedule(now - 2, "customer_id:C2", "sent-at-once")
    state.unschedule(now - 2, "customer_id:C2", "sent-at-once")  # fired before any checkpoint
    assert state.txn.take() == [] and state.pending == 2


def test_overdue_counts_only_timers_past_the_limit() -> None:
    state = PartitionState.open(0, MemoryStore())
    now = time.time()
    for i in range(50):
        state.schedule(now + 100 + i, f"customer_id:C{i}", "later")
    for i in range(7):
        state.schedule(now - 60 - i, f"customer_id:L{i}", "late")
    assert state.overdue(now - 5) == 7 and state.overdue(now + 1000) == 57


def test_a_checkpoint_written_in_slices_moves_the_offset_only_with_its_last_slice(tmp_path: Path) -> None:
    import asyncio

    from pipeline.runtime.checkpoint import WRITE_SLICE_BYTES, _write_in_slices

    store = RocksDBStore(tmp_path / "db")
    store.write([(b"a", b"old")], 7)
    items: list[tuple[bytes, bytes | None]] = [(f"k{i}".encode(), b"x" * (WRITE_SLICE_BYTES // 3)) for i in range(10)]
    items.append((b"a", None))
    seen: list[int] = []
    real_write = store.write

    def spy(part: list[tuple[bytes, bytes | None]], offset: int | None) -> None:
        real_write(part, offset)
        seen.append(store.changelog_offset())

    store.write = spy  # type: ignore[method-assign]
    asyncio.run(_write_in_slices(store, items, 42))
    assert len(seen) > 1  # it was sliced
    assert seen[:-1] == [7] * (len(seen) - 1)  # a crash between slices finds the old offset: recovery re-reads them
    assert seen[-1] == 42
    assert store.get(b"a") is None and store.get(b"k9") == b"x" * (WRITE_SLICE_BYTES // 3)
    store.close()


def test_rocksdb_writes_skip_the_wal_so_a_crash_loses_data_and_offset_together(tmp_path: Path) -> None:
    """The changelog is the store's log: a crash may lose the memtable, never the agreement of data and offset."""
    crash = f"""
from pathlib import Path
from pipeline.runtime.state.rocksdb import RocksDBStore
store = RocksDBStore(Path({str(tmp_path / "db")!r}))
store.write([(b"c1", b"old")], 3)
store.close()  # a clean close flushes
store = RocksDBStore(Path({str(tmp_path / "db")!r}))
store.write([(b"c1", b"new"), (b"c2", b"new")], 7)
import os
os._exit(0)  # a crash: no close, no flush
"""
    subprocess.run([sys.executable, "-c", crash], check=True)
    store = RocksDBStore(tmp_path / "db")
    assert (store.get(b"c1"), store.get(b"c2"), store.changelog_offset()) == (b"old", None, 3)
    store.close()
