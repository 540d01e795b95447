"""Where an event enters the identity graph: its strongest identifier.

An account id outranks a loyalty card, which outranks an e-mail address, and so
on down to a browser cookie. The event goes first to the actor of that identifier
(see ``protocol.py``), which knows the profile that owns it; a new identifier founds
a profile named after it, so an unmerged customer's identifier and profile share a
partition and the event needs no second hop.
"""

from __future__ import annotations

from typing import Any

from pipeline.ingest.contract import IDENTIFIER_TYPES, PRODUCT_EVENT_TYPES


def profile_key(identifiers: dict[str, str]) -> str | None:
    for kind in IDENTIFIER_TYPES:
        value = identifiers.get(kind)
        if value:
            return f"{kind}:{value}"
    return None


def routing_key(event: dict[str, Any]) -> str:
    """The key an event is routed by: its strongest identifier, or the product for product events."""
    if event["type"] in PRODUCT_EVENT_TYPES:
        return f"sku:{event['properties']['sku']}"
    key = profile_key(event["identifiers"])
    if key is None:  # the validator rejects these; reaching here is a bug, not data
        raise ValueError(f"event {event['event_id']} has no identifier")
    return key
