"""The state interface: a per-partition store and the transaction in front of it.

Writes never go straight to a store. They collect in a :class:`PartitionTransaction`
(decoded Python objects, one entry per key however often it changes) and reach
the changelog and the store together at a checkpoint. That is where the speed
comes from: a customer with 40 events in a second costs one encode, one
changelog record and one RocksDB put, not 40.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import orjson
from mypy_extensions import mypyc_attr

DELETED: Any = object()
TIMER_PREFIX = b"t:"
IDENTIFIER_PREFIX = b"i|"  # identity-graph entries (pipeline.identity.protocol)
ERASURE_PREFIX = b"e|"  # markers of erased identifiers (pipeline.privacy.erasure)
EXPIRY_PREFIX = b"x|"  # when a merged profile's copy of its state is dropped, in time order (pipeline.identity.protocol)
OFFSET_KEY = b"__changelog_offset__"
WRITTEN_AT_KEY = b"__changelog_written_at__"  # wall time of the last write that moved the offset
TOPIC_KEY = b"__changelog_topic__"
# Against the memory bound (``PartitionTransaction.held``) a changed value weighs PER_VALUE and an
# identifier's or timer-index entry, small beside a profile, weighs 1.
PER_VALUE = 16
SMALL_PREFIXES = (TIMER_PREFIX, IDENTIFIER_PREFIX, EXPIRY_PREFIX)
UNCACHED_PREFIXES = (IDENTIFIER_PREFIX, EXPIRY_PREFIX)  # written, seldom or never read back through the transaction


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled with the hot path; other stores may be plain Python
class Store(ABC):
    """Bytes in, bytes out; remembers the last changelog offset it has applied."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def write(self, items: list[tuple[bytes, bytes | None]], changelog_offset: int | None) -> None:
        """Apply puts (value) and deletes (None) and the offset atomically.

        ``None`` leaves the offset where it was: the engine writes a checkpoint in
        slices, the last one carrying the offset. A crash between slices leaves the
        store ahead of the offset it claims, which recovery repairs by applying the
        changelog from that offset on (the changelog holds the whole checkpoint
        before the first slice is written).
        """

    @abstractmethod
    def items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    @abstractmethod
    def changelog_offset(self) -> int:
        """The last changelog offset applied, or -1 for an empty store."""

    @abstractmethod
    def written_at(self) -> float | None:
        """When the offset last moved (epoch seconds), or None for an empty store: how stale it may be."""

    @abstractmethod
    def bound_to(self) -> str | None:
        """The changelog topic this store mirrors, or None for a store never bound."""

    @abstractmethod
    def bind(self, changelog_topic: str) -> None: ...

    @abstractmethod
    def wipe(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class PartitionTransaction:
    """Uncommitted writes of one partition, and the checkpoint being made of them.

    A checkpoint is a snapshot of the writes at one moment (:meth:`snapshot`, O(1)),
    encoded a slice at a time between batches (:meth:`encode`) and then made durable
    in the background while processing goes on. Encoding thousands of profiles at
    once would stall the loop for tens of milliseconds, and every event arriving
    meanwhile would wait; spread out, the stall disappears into the batches.

    The snapshot is copy-on-write: values are mutable Python objects, so before a
    key still waiting in the snapshot is read or written again, its snapshot value
    is encoded first. The checkpoint thus holds exactly the state as of its
    offsets, never a later event's effect. Until :meth:`flushed`, reads see the
    encoded values, which the store does not have yet.
    """

    __slots__ = ("store", "cache_keys", "_dirty", "_snapshot", "_encoded", "_order", "_cache", "_held")

    def __init__(self, store: Store, cache_keys: int = 2_000) -> None:
        self.store = store
        self.cache_keys = cache_keys
        self._dirty: dict[bytes, Any] = {}  # written since the last snapshot
        self._snapshot: dict[bytes, Any] = {}  # in the checkpoint, not encoded yet
        self._encoded: dict[bytes, bytes | None] = {}  # in the checkpoint, encoded, not in the store yet
        # Changelog order, because a crash can land any prefix of it: new timer-index
        # entries first and removed ones last, so every timer a profile holds always
        # has its index entry and none is lost.
        self._order: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        # Decoded values of recently written keys: a busy customer is decoded from JSON
        # once, not again after every checkpoint.
        self._cache: dict[bytes, Any] = {}
        self._held = 0  # changed keys whose values only the transaction keeps alive (see held)

    def get(self, key: bytes) -> Any | None:
        value = self._dirty.get(key)
        if value is not None:
            return None if value is DELETED else value
        if key in self._snapshot:
            self._encode_key(key)  # the caller may change the value: the snapshot keeps it as it was
        value = self._cache.get(key)
        if value is not None:
            return value
        raw = self._encoded[key] if key in self._encoded else self.store.get(key)
        return None if raw is None else orjson.loads(raw)

    def set(self, key: bytes, value: Any) -> None:
        if key in self._snapshot:
            self._encode_key(key)
        dirty = self._dirty
        if key not in dirty and key not in self._cache:
            self._held += 1 if key.startswith(SMALL_PREFIXES) else PER_VALUE
        dirty[key] = value

    def delete(self, key: bytes) -> None:
        self.set(key, DELETED)

    def __len__(self) -> int:
        return len(self._dirty)

    def changes(self, prefix: bytes) -> Iterator[tuple[bytes, Any | None]]:
        """Keys under ``prefix`` written and not in the store yet, with their values (None: deleted), oldest first.

        What the store says of a key is out of date for these; a later one of the same key is the newer.
        """
        for key, raw in list(self._encoded.items()):
            if key.startswith(prefix):
                yield key, None if raw is None else orjson.loads(raw)
        for written in (self._snapshot, self._dirty):
            for key, value in list(written.items()):
                if key.startswith(prefix):
                    yield key, None if value is DELETED else value

    @property
    def held(self) -> int:
        """Changed values that were not in the cache when first changed, in profiles' worth: the memory a
        checkpoint gives back.

        A busy customer's profile is decoded in the cache anyway; waiting for the next
        checkpoint costs nothing more than that. Bounding all changed keys instead made a
        shop of 5,000 customers checkpoint (and encode every busy profile again) about
        every second rather than every ``commit_interval_s``. New keys, a million new
        customers, are what fill memory, and they are what this counts.

        An identifier's entry or a timer's index entry is a small list or dict (337 and 643
        bytes with their keys, decoded) against about 15 KB for the average profile of a
        100,000-event run, yet counted as one each they were three quarters of the count: on
        live traffic at 15,000 events/s the bound cut a checkpoint every 1.3 s instead of every
        5, and each one encoded every busy profile again. They count as a sixteenth of a value,
        which still overstates them.
        """
        return self._held // PER_VALUE

    # --- checkpoints ---------------------------------------------------------------

    def snapshot(self) -> None:
        """Start a checkpoint of everything written so far."""
        assert not self._snapshot and not self._encoded, "the previous checkpoint is not flushed"
        self._snapshot, self._dirty = self._dirty, {}
        self._held = 0

    def encode(self, limit: int) -> bool:
        """Encode up to ``limit`` keys of the snapshot; True when all of it is encoded."""
        snapshot = self._snapshot
        for key in list(itertools.islice(snapshot, limit)):
            self._encode_key(key)
        return not snapshot

    def taken(self) -> list[tuple[bytes, bytes | None]]:
        """The encoded snapshot, in changelog order."""
        assert not self._snapshot, "the snapshot is not fully encoded"
        encoded = self._encoded
        return [(key, encoded[key]) for keys in self._order for key in keys]

    def take(self) -> list[tuple[bytes, bytes | None]]:
        """Snapshot and encode everything at once (tests and tools; the engine encodes in slices)."""
        self.snapshot()
        self.encode(len(self._snapshot))
        return self.taken()

    def flushed(self) -> None:
        """The taken writes are in the store: stop shadowing it."""
        self._encoded = {}
        self._order = ([], [], [])
        cache = self._cache
        while len(cache) > self.cache_keys:
            del cache[next(iter(cache))]

    def _encode_key(self, key: bytes) -> None:
        value = self._snapshot.pop(key)
        first, middle, last = self._order
        if key.startswith(TIMER_PREFIX):
            # Timer-index entries are never read back through the transaction: caching
            # them would only push customers' profiles out of the cache.
            if value is DELETED:
                self._encoded[key] = None
                last.append(key)
            else:
                self._encoded[key] = orjson.dumps(value)
                first.append(key)
            return
        middle.append(key)
        self._cache.pop(key, None)  # re-inserted last: the cache forgets the least recently written
        if value is DELETED:
            self._encoded[key] = None
        else:
            self._encoded[key] = orjson.dumps(value)
            if not key.startswith(UNCACHED_PREFIXES):  # seldom read again: an event reaches a live profile
                self._cache[key] = value  # by its own key, not through its identifiers; expiries, by a sweep
