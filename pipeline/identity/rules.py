"""What may be linked to what: identifier priorities, per-profile limits and caps.

Plain data and functions, no Kafka: the merge protocol (``protocol.py``) asks
these questions at the moment it decides, and the unit tests ask them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pipeline.ingest.contract import IDENTIFIER_TYPES
from pipeline.settings import Settings

# Strongest first. A profile's id is its founding identifier ("customer_id:C1"), and
# of two profiles that merge the one whose id ranks first survives.
RANK = {kind: i for i, kind in enumerate(IDENTIFIER_TYPES)}

DEFAULT_LIMITS: Mapping[str, int] = {
    "customer_id": 1,  # two accounts are two people, whatever links them
    "loyalty_id": 1,
    "email": 5,
    "phone": 3,
    "device_id": 20,
    "cookie_id": 50,
}

Identifiers = dict[str, list[str]]  # a profile's identifiers: type -> values, most recently used last


def split_id(identifier: str) -> tuple[str, str]:
    """``"email:a@b.dk"`` -> ``("email", "a@b.dk")``."""
    kind, _, value = identifier.partition(":")
    return kind, value


def order_key(profile_id: str) -> tuple[int, str]:
    """The deterministic order of profile ids: the first of two merging profiles survives.

    Deterministic, not first-come: the same links give the same survivor whatever
    order events arrive in at which partition, so a replay rebuilds the same graph,
    and merges always run towards the smaller id, so chains of them cannot loop.
    """
    kind, value = split_id(profile_id)
    return RANK.get(kind, len(RANK)), value


@dataclass(frozen=True, slots=True)
class IdentityRules:
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    max_identifiers: int = 100  # per profile, all types together
    max_merges: int = 50  # profiles one profile may absorb; past it, it stops merging

    def room_for(self, owned: Identifiers, kind: str) -> str | None:
        """None when one more identifier of ``kind`` fits, else the reason it does not."""
        if len(owned.get(kind, ())) >= self.limits.get(kind, 0):
            return f"limit_{kind}"
        if sum(len(v) for v in owned.values()) >= self.max_identifiers:
            return "identifier_cap"
        return None

    def merge_breaks(self, a: Identifiers, b: Identifiers) -> str | None:
        """None when the union of two profiles' identifiers keeps every limit, else the reason.

        Types are checked strongest first, so two different customer ids are named
        as the reason even when lesser limits would break too.
        """
        total = 0
        for kind in IDENTIFIER_TYPES:
            union = set(a.get(kind, ())) | set(b.get(kind, ()))
            if len(union) > self.limits.get(kind, 0):
                return f"limit_{kind}"
            total += len(union)
        if total > self.max_identifiers:
            return "identifier_cap"
        return None


def identity_rules(settings: Settings) -> IdentityRules:
    """The rules the settings ask for: the default limits, with the types ``OMNI_IDENTIFIER_LIMITS`` names changed."""
    unknown = set(settings.identifier_limits) - set(DEFAULT_LIMITS)
    if unknown:
        raise ValueError(f"OMNI_IDENTIFIER_LIMITS names unknown identifier types: {sorted(unknown)}")
    return IdentityRules(
        limits={**DEFAULT_LIMITS, **settings.identifier_limits},
        max_identifiers=settings.max_identifiers_per_profile,
        max_merges=settings.max_merges_per_profile,
    )
