"""Channel choice: one channel per action, consented, reachable, most engaged.

Consent is opt-out here: a channel is allowed until the customer withdraws it
(``consent_updated`` with ``granted: false``, or ``unsubscribe`` for e-mail).
"""

from __future__ import annotations

from typing import Any

# Which identifier makes a channel reachable.
ADDRESS_OF = {"email": "email", "sms": "phone", "push": "device_id"}
MARKETING_CHANNELS = ("email", "push", "sms")


def address_for(profile: dict[str, Any], channel: str) -> str | None:
    values = profile["identifiers"].get(ADDRESS_OF.get(channel, ""), [])
    return values[-1] if values else None


def engagement(profile: dict[str, Any], channel: str) -> int:
    counters = profile["counters"]
    if channel == "email":
        return counters.get("email_open", 0) + 2 * counters.get("email_click", 0)
    if channel == "push":
        return 1 if "app" in profile["channels"] else 0
    return 0


def choose_channel(profile: dict[str, Any], candidates: tuple[str, ...] = MARKETING_CHANNELS) -> str | None:
    usable = [
        c for c in candidates if profile["consent"].get(c, True) and address_for(profile, c) is not None
    ]
    if not usable:
        return None
    # max() keeps the first of equals, so the candidates' order breaks ties.
    return max(usable, key=lambda c: engagement(profile, c))
