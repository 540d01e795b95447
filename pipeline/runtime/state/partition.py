"""One state partition: its store, its open transaction and its due-time heap of timers."""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.runtime.state.base import ERASURE_PREFIX, TIMER_PREFIX, PartitionTransaction, Store
from pipeline.runtime.state.fence import Fence


def timer_key(due: float, key: str, timer_id: str) -> bytes:
    # Fixed-width due time first, so RocksDB keeps the index in firing order.
    return TIMER_PREFIX + f"{int(due * 1000):015d}|{key}|{timer_id}".encode()


@dataclass(slots=True)
class PartitionState:
    partition: int
    store: Store
    txn: PartitionTransaction
    timers: list[tuple[float, str, str]] = field(default_factory=list)  # heap of (due, key, timer id)
    pending: int = 0  # live timers (the heap may still hold cancelled ones)
    # Cancelled timers stay in the heap until their time (taking one out of a heap is a scan). Past twice
    # the live ones and this many more, the heap is rebuilt from the live ones (compact_timers).
    heap_slack: int = 10_000
    heap_dropped: int = 0  # cancelled entries the rebuilds took out, for the metrics to collect
    # Timers due already when set (an action to send now): not in the index yet. They fire at the
    # next emit, nearly always before any checkpoint, and indexing them would write an entry and its
    # deletion to the changelog for nothing; a checkpoint that comes first indexes them (index_unfired).
    unindexed: set[tuple[float, str, str]] = field(default_factory=set)
    # Timers expected to be cancelled long before they come due (a profile's lock waits milliseconds for an
    # answer, and its bound is minutes): neither in the heap nor in the index until a checkpoint comes, or
    # their time. Most are cancelled before either, and cost a dict entry and nothing else: in the heap, a
    # cancelled entry would stay until its due time, and a merge a second would keep minutes' worth.
    deferred: dict[tuple[str, str], float] = field(default_factory=dict)  # (key, timer id) -> due
    deferred_next: float = math.inf  # no deferred timer is due before this
    fence: Fence = field(default_factory=Fence)  # outputs sent since the checkpoint this state came from
    # Whether any identifier of this partition was ever erased. Until one is, a new customer
    # needs no lookup among the markers: a keyed hash and a store miss each, saved.
    erasures: bool = False

    @classmethod
    def open(
        cls, partition: int, store: Store, cache_keys: int = 2_000, fence: Fence | None = None, heap_slack: int = 10_000
    ) -> "PartitionState":
        state = cls(partition, store, PartitionTransaction(store, cache_keys), fence=fence or Fence.load(store))
        state.heap_slack = heap_slack
        state.reload_timers()
        state.erasures = next(iter(store.items(ERASURE_PREFIX)), None) is not None
        return state

    def sent_before(self, output_id: str) -> bool:
        """Whether an output decided now was already sent before a crash (``pipeline.runtime.state.fence``).

        True once per id: the job records the decision and sends nothing. The job never sees
        the fence's marks or offsets, only this answer.
        """
        ids = self.fence.ids
        return bool(ids) and ids.pop(output_id, None) is not None

    def reload_timers(self) -> None:
        self.timers = []
        for _key, raw in self.store.items(TIMER_PREFIX):
            entry = orjson.loads(raw)
            self.timers.append((entry["due"], entry["key"], entry["timer_id"]))
        heapq.heapify(self.timers)
        self.pending = len(self.timers)

    def schedule(self, due: float, key: str, timer_id: str, deferred: bool = False) -> None:
        """Set a timer: in the heap and the index, or with ``deferred`` only in memory until a checkpoint or its time."""
        self.pending += 1
        if deferred:
            self.deferred[(key, timer_id)] = due
            self.deferred_next = min(self.deferred_next, due)
            return
        if due <= time.time():
            self.unindexed.add((due, key, timer_id))
        else:
            self.txn.set(timer_key(due, key, timer_id), {"due": due, "key": key, "timer_id": timer_id})
        heapq.heappush(self.timers, (due, key, timer_id))

    def unschedule(self, due: float, key: str, timer_id: str) -> None:
        if self.deferred and self.deferred.get((key, timer_id)) == due:
            del self.deferred[(key, timer_id)]
            self.pending -= 1
            return
        entry = (due, key, timer_id)
        if entry in self.unindexed:
            self.unindexed.discard(entry)
        else:
            self.txn.delete(timer_key(due, key, timer_id))  # the heap entry is skipped when it comes due
        self.pending -= 1
        if len(self.timers) > 2 * self.pending + self.heap_slack:
            self.compact_timers()

    def compact_timers(self) -> None:
        """Rebuild the heap from the timers still set: the index as the store holds it and as written since, and
        those due already and not yet in it (``unindexed``).

        One pass over the index in key order, about a microsecond a live timer, paid for by the
        cancellations since the last rebuild (at least as many as the live timers, and ``heap_slack`` more).
        """
        index: dict[bytes, Any] = {key: raw for key, raw in self.store.items(TIMER_PREFIX)}
        index.update(self.txn.changes(TIMER_PREFIX))
        live = set(self.unindexed)
        for value in index.values():
            if value is not None:
                entry = orjson.loads(value) if isinstance(value, bytes) else value
                live.add((entry["due"], entry["key"], entry["timer_id"]))
        self.heap_dropped += max(len(self.timers) - len(live), 0)
        self.timers = list(live)
        heapq.heapify(self.timers)
        self.pending = len(self.timers) + len(self.deferred)  # what is set now, whatever was counted before

    def index_unfired(self) -> None:
        """Before a checkpoint: every timer the profiles hold must have its index entry, or a restart loses it."""
        for due, key, timer_id in self.unindexed:
            self.txn.set(timer_key(due, key, timer_id), {"due": due, "key": key, "timer_id": timer_id})
        self.unindexed.clear()
        for (key, timer_id), due in self.deferred.items():
            self.txn.set(timer_key(due, key, timer_id), {"due": due, "key": key, "timer_id": timer_id})
            heapq.heappush(self.timers, (due, key, timer_id))
        self.deferred.clear()
        self.deferred_next = math.inf

    def overdue(self, before: float) -> int:
        """Heap entries due before ``before`` (cancelled ones among them are skipped when they fire).

        Walks only the top of the heap: a child is never due earlier than its parent, so the walk
        stops where entries are not overdue, instead of reading every timer each second.
        """
        heap, count, stack = self.timers, 0, [0]
        while stack:
            i = stack.pop()
            if i < len(heap) and heap[i][0] < before:
                count += 1
                stack += (2 * i + 1, 2 * i + 2)
        return count

    def due(self, now: float) -> list[tuple[float, str, str]]:
        """Pop every heap entry due by ``now``; callers check each is still scheduled."""
        if now >= self.deferred_next:  # a deferred timer's time came before any checkpoint: into the heap
            for (key, timer_id), due in list(self.deferred.items()):
                if due <= now:
                    del self.deferred[(key, timer_id)]
                    self.unindexed.add((due, key, timer_id))
                    heapq.heappush(self.timers, (due, key, timer_id))
            self.deferred_next = min(self.deferred.values(), default=math.inf)
        out = []
        while self.timers and self.timers[0][0] <= now:
            out.append(heapq.heappop(self.timers))
        return out
