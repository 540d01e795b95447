"""The first identity step: one profile key per event, from its strongest identifier.

An account id outranks a loyalty card, which outranks an e-mail address, and so
on down to a browser cookie, so the same person logged in on the web and
scanning a card in the store lands on the same profile as soon as an event
carries their account id. Linking weaker identifiers to an existing profile
(the identity graph) is the job of a later, stateful step.
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
    """The state key an event is processed under: a customer, or a product for product events."""
    if event["type"] in PRODUCT_EVENT_TYPES:
        return f"sku:{event['properties']['sku']}"
    key = profile_key(event["identifiers"])
    if key is None:  # the validator rejects these; reaching here is a bug, not data
        raise ValueError(f"event {event['event_id']} has no identifier")
    return key
