"""How many live profiles a state partition holds, kept as one counter beside them.

Counted where the identity protocol founds a profile, merges one away and brings one back by a
split, in the same transaction, so it is as durable as the profiles (and moves with them). Reading
it costs nothing; counting the keys of a RocksDB holding a million profiles would not.
"""

from __future__ import annotations

from pipeline.runtime.state.partition import PartitionState

CENSUS_KEY = b"r|profiles"


def change(state: PartitionState, by: int) -> None:
    state.txn.set(CENSUS_KEY, (state.txn.get(CENSUS_KEY) or 0) + by)


def live_profiles(state: PartitionState) -> int:
    return state.txn.get(CENSUS_KEY) or 0  # type: ignore[no-any-return]
