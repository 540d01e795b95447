"""Erasure's memory: identifiers of erased people, kept only as keyed hashes.

An erased identifier leaves a marker in its state partition: ``e|`` and an HMAC of
the identifier under the operator's salt, with the time of the erasure. Nothing
else of the person stays. The marker is what keeps a replay of old input topics
(hosted platforms document that theirs resurrects deleted people) from founding
the profile again: an event that happened before the erasure is dropped, one that
happened after it is a new start (the person came back and is a new customer).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Any

from pipeline.runtime.state.base import ERASURE_PREFIX
from pipeline.runtime.state.partition import PartitionState

MARKER_PREFIX = ERASURE_PREFIX


def subject_hash(salt: str, identifier: str) -> str:
    """A keyed hash of an identifier (``email:anna@example.dk``): the same in every worker, not reversible without the salt."""
    keyed = _keyed(salt).copy()
    keyed.update(identifier.encode())
    return keyed.hexdigest()[:32]


@lru_cache(maxsize=4)
def _keyed(salt: str) -> hmac.HMAC:
    """The HMAC with its key already mixed in: every new customer is checked, and keying it anew cost more than the hash."""
    return hmac.new(salt.encode(), digestmod=hashlib.sha256)


def marker_key(salt: str, identifier: str) -> bytes:
    return MARKER_PREFIX + subject_hash(salt, identifier).encode()


def mark_erased(state: PartitionState, salt: str, identifier: str, at: float) -> None:
    """Remember that ``identifier`` was erased at ``at`` (a later erasure moves the time on)."""
    key = marker_key(salt, identifier)
    state.erasures = True
    before = state.txn.get(key)
    if before is None or before["at"] < at:
        state.txn.set(key, {"at": at})


def erased_at(state: PartitionState, salt: str, identifier: str) -> float | None:
    """When ``identifier`` was erased, if it was (read in the partition that owns it)."""
    if not state.erasures:
        return None
    marker: dict[str, Any] | None = state.txn.get(marker_key(salt, identifier))
    return None if marker is None else float(marker["at"])


def audit_record(
    request: dict[str, Any], salt: str, found: str | None, removed: dict[str, int], at: float
) -> dict[str, Any]:
    """What ``privacy.audit`` keeps of an erasure: what was removed, never the data itself."""
    return {
        "audit": "erasure",
        "request_id": request["request_id"],
        "subject": subject_hash(salt, request["subject"]),
        "profile": subject_hash(salt, found) if found is not None else None,
        "result": "erased" if found is not None else "not_found",
        "removed": removed,
        "erased_at": at,
    }
