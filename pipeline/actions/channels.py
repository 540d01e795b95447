"""Reachability and engagement per channel: what channel choice (``policy.Policy.channel``) weighs.

(Consent, weighed there too, is opt-out: a channel is allowed until the customer
withdraws it with ``consent_updated`` ``granted: false``, or ``unsubscribe`` for e-mail.)
"""

from __future__ import annotations

from typing import Any

# Which identifier makes a channel reachable (the web: a browser we can show an offer in).
ADDRESS_OF = {"email": "email", "sms": "phone", "push": "device_id", "web": "cookie_id"}


def address_for(profile: dict[str, Any], channel: str) -> str | None:
    """The most recently used address of the channel's kind that has not bounced."""
    values = profile["identifiers"].get(ADDRESS_OF.get(channel, ""), [])
    bounced = profile.get("unreachable", {})
    for value in reversed(values):
        if value not in bounced:
            return value  # type: ignore[no-any-return]
    return None


def engagement(profile: dict[str, Any], channel: str) -> int:
    counters = profile["counters"]
    if channel == "email":
        return counters.get("email_open", 0) + 2 * counters.get("email_click", 0)
    if channel == "push":
        return 1 if "app" in profile["channels"] else 0
    if channel == "web":
        return 1 if "web" in profile["channels"] else 0
    return 0
