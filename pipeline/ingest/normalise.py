"""Identifier normalisation: one spelling per identifier, junk dropped.

Two channel systems must produce the same string for the same person, or the
customer is not recognised across channels: e-mail is trimmed and lower-cased,
phone numbers become E.164. Values known to be placeholders from broken
tracking snippets never identify anyone.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

JUNK_VALUES = frozenset({"", "null", "none", "undefined", "nan", "anonymous", "unknown", "-1", "n/a"})
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ALL_ZERO_RE = re.compile(r"^[0\-:.]+$")


def is_junk(value: str) -> bool:
    v = value.strip().lower()
    return v in JUNK_VALUES or bool(ALL_ZERO_RE.match(v))


def normalise_email(value: str) -> str | None:
    v = value.strip().lower()
    return v if EMAIL_RE.match(v) else None


def normalise_phone(value: str, region: str) -> str | None:
    # phonenumbers costs tens of microseconds a call; normalise_one caches the result.
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=1 << 15)
def normalise_one(kind: str, value: str, region: str) -> tuple[str | None, str | None]:
    """(normalised value, None) or (None, reason dropped). Cached: a customer's identifiers recur."""
    if is_junk(value):
        return None, "junk"
    if kind == "email":
        norm = normalise_email(value)
    elif kind == "phone":
        norm = normalise_phone(value.strip(), region)
    else:
        norm = value.strip()
    return (norm, None) if norm is not None else (None, "invalid")


def normalise_identifiers(
    raw: dict[str, str | None], region: str, blocked: frozenset[str] = frozenset()
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Return (clean identifiers, [(type, reason) dropped]).

    ``blocked`` holds values (or ``type:value``) an operator has found shared by
    strangers, a shop's test account or a kiosk's device id: one of those would
    link every customer who ever touched it.
    """
    clean: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    for kind, value in raw.items():
        if value is None:
            continue
        norm, reason = normalise_one(kind, value, region)
        if norm is None:
            dropped.append((kind, reason or "invalid"))
        elif blocked and (norm in blocked or f"{kind}:{norm}" in blocked):
            dropped.append((kind, "blocked"))
        else:
            clean[kind] = norm
    return clean, dropped


def parse_identifier(kind: str, raw: str, region: str) -> tuple[str | None, str | None]:
    """An identifier a person typed (a lookup, an operator's command) as the pipeline spells it.

    ``("email:anna@example.dk", None)``, or ``(None, why not)``.
    """
    from pipeline.ingest.contract import IDENTIFIER_TYPES

    if kind not in IDENTIFIER_TYPES:
        return None, f"unknown identifier type {kind!r}; one of {', '.join(IDENTIFIER_TYPES)}"
    value, reason = normalise_one(kind, raw, region)
    if value is None:
        return None, f"{kind} {raw!r} is {reason}"
    return f"{kind}:{value}", None
