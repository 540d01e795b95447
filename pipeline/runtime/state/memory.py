"""An in-memory store: the same contract as RocksDB, for fast unit tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

from pipeline.runtime.state.base import Store


class MemoryStore(Store):
    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._offset = -1
        self._topic: str | None = None
        self._written_at: float | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def write(self, items: list[tuple[bytes, bytes | None]], changelog_offset: int | None) -> None:
        for key, value in items:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        if changelog_offset is not None:
            self._offset = changelog_offset
            self._written_at = time.time()

    def items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._data if k.startswith(prefix)):
            yield key, self._data[key]

    def changelog_offset(self) -> int:
        return self._offset

    def written_at(self) -> float | None:
        return self._written_at

    def bound_to(self) -> str | None:
        return self._topic

    def bind(self, changelog_topic: str) -> None:
        self._topic = changelog_topic

    def wipe(self) -> None:
        self._data.clear()
        self._offset = -1
        self._topic = None
        self._written_at = None

    def close(self) -> None:
        pass
