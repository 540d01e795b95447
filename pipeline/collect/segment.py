"""Segment's tracking calls as events of our contract: pure functions, no HTTP and no Kafka.

One call (``track``, ``identify``, ``page``, ``screen``, ``alias``, ``group``, alone or as one
message of a batch) becomes one event for its source's channel topic, or a refusal with the
dead letter's reason and the field of the call at fault, in Segment's names:

* ``messageId`` is the ``event_id``, so an SDK's retry of a call is applied once; a call without
  one gets an id hashed from its content (a retry of the same body hashes the same).
* ``userId`` is the ``customer_id``, ``anonymousId`` the source's anonymous identifier (the
  cookie on the web, the device in the app); traits (``context.traits``, and the identify
  call's own) give e-mail, phone and the other identifiers the mapping file names.
* ``timestamp`` is ``occurred_at``; without it ``originalTimestamp`` corrected by ``sentAt``
  for the device's clock, as Segment does; without either, the time the call arrived.
* The event type comes from the mapping file (``pipeline/data/segment.yaml``): track events by
  name, the other calls by kind. A call that maps to nothing is refused as ``unmapped_event``.
* Last, the event passes the same validator the worker's ingest runs, so a call the pipeline
  would dead-letter is refused here, while the caller is still listening.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.collect.sources import Source
from pipeline.ingest.contract import TOPIC_CONTRACT
from pipeline.ingest.validate import Rejection, Validator

CALLS = ("track", "identify", "page", "screen", "alias", "group")
# Each endpoint under /v1/: Segment's HTTP API names (/v1/track), analytics.js's short ones (the
# call's first letter, /v1/b for its batches), and /v1/import, the batch endpoint's older name.
PATHS: dict[str, str] = {**{c: c for c in CALLS}, **{c[0]: c for c in CALLS}, "batch": "batch", "b": "batch", "import": "batch"}

UNMAPPED = "unmapped_event"
PROCESSING_ERROR = "processing_error"
INVALID_CALL = "invalid_call"
# What a collector refuses besides the ingest validator's reasons (pipeline.ingest.validate.REASONS).
REASONS = (UNMAPPED, INVALID_CALL, "unauthorized", "oversized", "malformed_json", "not_an_object", "malformed_body")

# The event types a channel topic takes (the same for every channel).
CUSTOMER_TYPES: frozenset[str] = TOPIC_CONTRACT["channel.web"][0]


# --- the mapping file -------------------------------------------------------------------------


class TrackRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    properties: dict[str, str] = Field(default_factory=dict, description="our property name: theirs, renamed first")

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in CUSTOMER_TYPES:
            raise ValueError(f"{value!r} is not a customer event type of ours ({', '.join(sorted(CUSTOMER_TYPES))})")
        return value


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    calls: dict[Literal["page", "screen", "identify", "alias", "group"], TrackRule | None] = Field(default_factory=dict)
    track: dict[str, TrackRule] = Field(default_factory=dict)
    traits: dict[str, Literal["loyalty_id", "email", "phone", "device_id", "cookie_id"]] = Field(default_factory=dict)
    default_currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    path: str = Field("", description="where it was loaded from, for error messages")

    @field_validator("calls", "track", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        """``Product Viewed: product_view`` is short for ``{type: product_view}``."""
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @classmethod
    def load(cls, path: Path) -> "Mapping":
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            return cls.model_validate({**doc, "path": str(path)})
        except (OSError, yaml.YAMLError) as exc:
            raise MappingError(f"{path}: {exc}") from exc
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise MappingError(f"{path}: {loc}: {first['msg']}") from exc


class MappingError(ValueError):
    pass


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mapped:
    """One event of our contract for a channel topic, with its record key."""

    topic: str
    key: bytes
    value: bytes
    event_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a call is not an event: the dead letter's reason, and the call's field at fault (Segment's name)."""

    reason: str
    field: str
    detail: str

    @property
    def client_error(self) -> bool:
        """A call the caller got wrong (answered 400); not one we have no mapping for, nor one a bug of ours
        met (both answered 200: the call is kept in the dead letter, for a replay once mapped or fixed)."""
        return self.reason not in (UNMAPPED, PROCESSING_ERROR)

    def at(self, prefix: str) -> "Refused":
        """The same refusal for the message at ``prefix`` of a batch (``batch[3]``)."""
        return Refused(self.reason, f"{prefix}.{self.field}" if self.field else prefix, self.detail)

    @property
    def message(self) -> str:
        return f"{self.field}: {self.detail}" if self.field else self.detail


# --- the translation --------------------------------------------------------------------------


class Translator:
    """Segment calls -> events of our contract, for one mapping file and the ingest validator."""

    def __init__(self, mapping: Mapping, validator: Validator) -> None:
        self.mapping = mapping
        self.validator = validator

    def __call__(
        self, call: str, message: dict[str, Any], source: Source, received_at: float, sent_at: Any = None
    ) -> Mapped | Refused:
        """One call (``message`` is its JSON object; ``sent_at`` a batch's ``sentAt``) as an event or a refusal."""
        event_id = _event_id(message)
        if isinstance(event_id, Refused):
            return event_id
        context = message.get("context")
        if context is None:
            context = {}
        if not isinstance(context, dict):
            return Refused(INVALID_CALL, "context", "must be an object")
        ids = self._identifiers(call, message, context, source)
        if isinstance(ids, Refused):
            return ids
        key = ids.pop("_key")
        occurred = _occurred_at(message, received_at, sent_at)
        if isinstance(occurred, Refused):
            return occurred

        what = self._type(call, message, context)
        if isinstance(what, Refused):
            return what
        rule, label = what
        props = _properties(call, message)
        if isinstance(props, Refused):
            return props
        for ours, theirs in rule.properties.items():
            if theirs in props:
                props[ours] = props.pop(theirs)
        convert = CONVERTERS.get(rule.type)
        if convert is not None:
            props = convert(label, props, self.mapping, _local(call, message, context))
            if isinstance(props, Refused):
                return props

        event = {
            "event_id": event_id,
            "type": rule.type,
            "channel": source.channel,
            "occurred_at": _iso(occurred),
            "identifiers": ids,
            "properties": props,
        }
        value = orjson.dumps(event)
        checked = self.validator(source.topic, value, received_at)
        if isinstance(checked, Rejection):
            return _from_rejection(checked)
        return Mapped(source.topic, key.encode(), value, event_id)

    def _identifiers(
        self, call: str, message: dict[str, Any], context: dict[str, Any], source: Source
    ) -> dict[str, str] | Refused:
        """Our identifiers, plus ``_key``: the record key (the anonymous id first: one browser's calls stay in order)."""
        ids: dict[str, str] = {}
        user = _text(message, "userId")
        anonymous = _text(message, "anonymousId")
        if isinstance(user, Refused):
            return user
        if isinstance(anonymous, Refused):
            return anonymous
        if call == "alias":
            previous = _text(message, "previousId")
            if isinstance(previous, Refused):
                return previous
            if user is None or previous is None:
                return Refused(INVALID_CALL, "userId" if user is None else "previousId", "an alias call needs userId and previousId")
            anonymous = anonymous or previous
        if user is not None:
            ids["customer_id"] = user
        if anonymous is not None:
            ids[source.anonymous_type] = anonymous
        traits: dict[str, Any] = {}
        for found in (context.get("traits"), message.get("traits") if call == "identify" else None):
            if isinstance(found, dict):
                traits.update(found)
        for trait, kind in self.mapping.traits.items():
            value = traits.get(trait)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                ids.setdefault(kind, str(value))
        if not ids:
            return Refused(INVALID_CALL, "userId", "userId or anonymousId is required")
        ids["_key"] = anonymous or user or next(iter(ids.values()))
        return ids

    def _type(self, call: str, message: dict[str, Any], context: dict[str, Any]) -> tuple[TrackRule, str] | Refused:
        """The mapping's rule for the call, and how to name the call in a message (``Order Completed``)."""
        if call == "track":
            name = message.get("event")
            if not isinstance(name, str) or not name.strip():
                return Refused(INVALID_CALL, "event", "a track call needs the event's name")
            rule = self.mapping.track.get(name)
            if rule is None:
                return Refused(UNMAPPED, "event", f"track event {name!r} maps to no event type (add it to {self.mapping.path or 'the mapping file'})")
            return rule, name
        rule = self.mapping.calls.get(call)  # type: ignore[call-overload]
        if rule is None:
            return Refused(UNMAPPED, "", f"{call} calls map to no event type (calls.{call} in {self.mapping.path or 'the mapping file'})")
        if call == "identify" and rule.type == "login" and any(_local(call, message, context).values()):
            rule = TrackRule(type="signup", properties=rule.properties)  # our profiles take locale and time zone from signups
        return rule, call


def _text(message: dict[str, Any], field: str) -> str | None | Refused:
    """An id field: a non-empty string (a number is taken as its digits), or absent."""
    value = message.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Refused(INVALID_CALL, field, "must be a string")
    text = str(value)
    if len(text) > 300:
        return Refused(INVALID_CALL, field, "longer than 300 characters")
    return text


def _event_id(message: dict[str, Any]) -> str | Refused:
    mid = message.get("messageId")
    if mid is None:
        # No id given (a hand-written call): one from the content, so a retry of the same body is still one event.
        content = {k: v for k, v in message.items() if k not in ("sentAt", "writeKey", "_metadata")}
        return "h-" + hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    if not isinstance(mid, str) or not 1 <= len(mid) <= 200:
        return Refused(INVALID_CALL, "messageId", "must be a string of 1 to 200 characters")
    return mid


def _instant(value: Any, field: str) -> float | Refused:
    if not isinstance(value, str):
        return Refused("bad_timestamp", field, "must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return Refused("bad_timestamp", field, f"{value[:40]!r} is not an ISO 8601 date-time")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # Segment reads a time without a zone as UTC
    return parsed.timestamp()


def _occurred_at(message: dict[str, Any], received_at: float, batch_sent_at: Any) -> float | Refused:
    if message.get("timestamp") is not None:
        return _instant(message["timestamp"], "timestamp")
    if message.get("originalTimestamp") is not None:
        original = _instant(message["originalTimestamp"], "originalTimestamp")
        if isinstance(original, Refused):
            return original
        sent = message.get("sentAt", batch_sent_at)
        sent_at = _instant(sent, "sentAt") if sent is not None else None
        if isinstance(sent_at, float):
            return received_at - (sent_at - original)  # the device's clock, corrected by how far off it was when sending
        return original
    return received_at


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _local(call: str, message: dict[str, Any], context: dict[str, Any]) -> dict[str, str | None]:
    """The customer's locale and time zone, from the traits or the context (analytics.js sends both).

    ``context.traits`` are the user's on every call; the top-level ``traits`` only on identify (on a
    group call they are the group's).
    """
    traits: dict[str, Any] = {}
    for found in (context.get("traits"), message.get("traits") if call == "identify" else None):
        if isinstance(found, dict):
            traits.update(found)

    def first(*values: Any) -> str | None:
        return next((v for v in values if isinstance(v, str) and v.strip()), None)

    return {
        "locale": first(traits.get("locale"), context.get("locale")),
        "time_zone": first(traits.get("timezone"), traits.get("time_zone"), context.get("timezone")),
    }


def _properties(call: str, message: dict[str, Any]) -> dict[str, Any] | Refused:
    """The call's properties as the event's, before conversion (page and screen add their name)."""
    props = message.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        return Refused(INVALID_CALL, "properties", "must be an object")
    props = dict(props)
    if call in ("page", "screen"):
        for field in ("name", "category"):
            if isinstance(message.get(field), str):
                props.setdefault(field, message[field])
    if call == "group" and message.get("groupId") is not None:
        props.setdefault("group_id", message["groupId"])
    return props


# --- Segment's e-commerce properties as ours ---------------------------------------------------

Converter = Callable[[str, dict[str, Any], Mapping, dict[str, str | None]], "dict[str, Any] | Refused"]


def _product(props: dict[str, Any], where: str, label: str) -> str | Refused:
    """Our sku: Segment's ``sku``, else its ``product_id``."""
    for field in ("sku", "product_id"):
        value = props.get(field)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    return Refused(INVALID_CALL, f"{where}sku", f"{label} needs {where}sku or {where}product_id")


def _sku_only(label: str, props: dict[str, Any], mapping: Mapping, local: dict[str, str | None]) -> dict[str, Any] | Refused:
    sku = _product(props, "properties.", label)
    if isinstance(sku, Refused):
        return sku
    return {**props, "sku": sku}


def _cart_add(label: str, props: dict[str, Any], mapping: Mapping, local: dict[str, str | None]) -> dict[str, Any] | Refused:
    sku = _product(props, "properties.", label)
    if isinstance(sku, Refused):
        return sku
    if props.get("price") is None:
        return Refused(INVALID_CALL, "properties.price", f"{label} needs the product's price")
    out = {k: v for k, v in props.items() if k != "quantity"}
    return {**out, "sku": sku, "qty": props.get("quantity", 1), "price": props["price"]}


def _purchase(label: str, props: dict[str, Any], mapping: Mapping, local: dict[str, str | None]) -> dict[str, Any] | Refused:
    order_id = props.get("order_id")
    if isinstance(order_id, bool) or not isinstance(order_id, (str, int)) or not str(order_id).strip():
        return Refused(INVALID_CALL, "properties.order_id", f"{label} needs the order's id")
    products = props.get("products")
    if not isinstance(products, list) or not products:
        return Refused(INVALID_CALL, "properties.products", f"{label} needs at least one product")
    items: list[dict[str, Any]] = []
    for i, product in enumerate(products):
        where = f"properties.products.{i}."
        if not isinstance(product, dict):
            return Refused(INVALID_CALL, where[:-1], "must be an object")
        sku = _product(product, where, label)
        if isinstance(sku, Refused):
            return sku
        if product.get("price") is None:
            return Refused(INVALID_CALL, f"{where}price", f"{label} needs each product's price")
        item = {"sku": sku, "qty": product.get("quantity", 1), "price": product["price"]}
        if isinstance(product.get("category"), str):
            item["category"] = product["category"]
        items.append(item)
    total = props.get("total", props.get("revenue"))
    if total is None:
        try:
            total = sum(float(i["price"]) * float(i["qty"]) for i in items)
        except (TypeError, ValueError):
            total = None  # the validator names the bad price or quantity
    currency = props.get("currency") or mapping.default_currency
    rest = {k: v for k, v in props.items() if k not in ("products", "total", "revenue", "currency", "order_id")}
    return {**rest, "order_id": str(order_id), "items": items, "total": total,
            "currency": currency.upper() if isinstance(currency, str) else currency}  # fmt: skip


def _signup(label: str, props: dict[str, Any], mapping: Mapping, local: dict[str, str | None]) -> dict[str, Any] | Refused:
    return {**props, **{k: v for k, v in local.items() if v is not None and k not in props}}


CONVERTERS: dict[str, Converter] = {
    "product_view": _sku_only,
    "remove_from_cart": _sku_only,
    "add_to_cart": _cart_add,
    "purchase": _purchase,
    "signup": _signup,
}

# Our contract's field paths, in the names of the Segment call they came from.
_SEGMENT_FIELDS = {
    "event_id": "messageId",
    "occurred_at": "timestamp",
    "identifiers.customer_id": "userId",
    "identifiers.cookie_id": "anonymousId",
    "identifiers.device_id": "anonymousId",
    "properties.qty": "properties.quantity",
    "properties.items": "properties.products",
}


def segment_field(loc: str) -> str:
    """``properties.items.0.qty`` -> ``properties.products.0.quantity``; ``identifiers.email`` -> ``traits.email``."""
    if loc in _SEGMENT_FIELDS:
        return _SEGMENT_FIELDS[loc]
    if loc.startswith("identifiers."):
        return "traits." + loc.removeprefix("identifiers.")
    if loc.startswith("properties.items."):
        loc = "properties.products." + loc.removeprefix("properties.items.")
        if loc.endswith(".qty"):
            loc = loc.removesuffix(".qty") + ".quantity"
    return loc


def _from_rejection(rejection: Rejection) -> Refused:
    if rejection.reason in ("absurd_timestamp", "bad_timestamp"):
        detail = rejection.detail.split(": ", 1)[-1].replace("occurred_at", "the time")
        return Refused(rejection.reason, "timestamp", detail)
    if rejection.reason == "no_identifiers":
        return Refused(rejection.reason, "userId", f"no usable identifier ({rejection.detail})")
    loc, sep, msg = rejection.detail.partition(": ")
    if not sep:
        return Refused(rejection.reason, "", rejection.detail)
    return Refused(rejection.reason, segment_field(loc), msg)
