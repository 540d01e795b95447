"""The ingest contract: what channel systems produce, as pydantic-validated TypedDicts.

These types are the source of truth; ``schemas/`` holds the JSON Schema
generated from them (``omni schemas``) and a test fails when the two differ.
They are TypedDicts rather than models because validation is on every event's
path: pydantic validates JSON bytes straight into plain dicts, at less than half
the cost of building model instances that the pipeline would throw away.
Properties allow extra fields so that channel systems can send context we do
not use yet without being dead-lettered for it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args, get_type_hints

from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import NotRequired, TypedDict

# Strict: a number sent as a string is an error, not silently coerced, because the
# validated dict is what the pipeline forwards and stores. NaN and Infinity are JSON
# extensions pydantic's parser accepts; in a total or a price they would poison a
# profile (orjson writes them back as null), so they are refused.
_CLOSED = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
_OPEN = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

CUSTOMER_CHANNELS = ("web", "app", "email", "store", "callcenter", "chat")
Channel = Literal["web", "app", "email", "store", "callcenter", "chat", "ops"]
IDENTIFIER_TYPES = ("customer_id", "loyalty_id", "email", "phone", "device_id", "cookie_id")

Sku = Annotated[str, Field(min_length=1, max_length=100)]
Id = Annotated[str, Field(min_length=1, max_length=200)]


@with_config(_CLOSED)
class Identifiers(TypedDict, total=False):
    customer_id: str | None
    loyalty_id: str | None
    email: str | None
    phone: str | None
    device_id: str | None
    cookie_id: str | None


@with_config(_OPEN)
class Props(TypedDict):
    """Properties of an event type that needs none; extra context is kept."""


@with_config(_CLOSED)
class _Event(TypedDict):
    """What every event carries; each event type adds its ``type`` and ``properties``."""

    event_id: Id
    channel: Channel
    occurred_at: AwareDatetime
    identifiers: NotRequired[Identifiers]


@with_config(_CLOSED)
class _PlainEvent(_Event):
    """An event type that needs no properties (any it is sent are kept)."""

    properties: NotRequired[Props]


# --- properties of the typed events -------------------------------------------


@with_config(_OPEN)
class SkuProps(Props):
    sku: Sku


@with_config(_OPEN)
class CartAddProps(Props):
    sku: Sku
    qty: NotRequired[Annotated[int, Field(ge=1, le=10_000, description="default 1")]]
    price: Annotated[float, Field(ge=0)]


@with_config(_OPEN)
class PurchaseItem(TypedDict):
    sku: Sku
    qty: NotRequired[Annotated[int, Field(ge=1, le=10_000, description="default 1")]]
    price: Annotated[float, Field(ge=0)]
    category: NotRequired[str | None]


@with_config(_OPEN)
class PurchaseProps(Props):
    order_id: Id
    items: Annotated[list[PurchaseItem], Field(min_length=1, max_length=500)]
    total: Annotated[float, Field(ge=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    fulfilment: NotRequired[Annotated[Literal["delivery", "pickup"], Field(description="default delivery")]]
    store_id: NotRequired[str | None]


@with_config(_OPEN)
class SignupProps(Props):
    locale: NotRequired[Annotated[str | None, Field(max_length=35)]]
    time_zone: NotRequired[Annotated[str | None, Field(max_length=64, description="IANA name, e.g. Europe/Oslo")]]


@with_config(_OPEN)
class ConsentProps(Props):
    channel: Literal["email", "sms", "push", "web", "callcenter", "store"]
    granted: bool


@with_config(_OPEN)
class StoreProps(Props):
    store_id: Id


@with_config(_OPEN)
class CallProps(Props):
    reason: Annotated[str, Field(max_length=500)]


@with_config(_OPEN)
class OrderProps(Props):
    order_id: Id


@with_config(_OPEN)
class InventoryProps(Props):
    sku: Sku
    store_id: NotRequired[str | None]
    available_qty: Annotated[int, Field(ge=0, le=1_000_000_000)]


@with_config(_OPEN)
class OrderReadyProps(Props):
    order_id: Id
    store_id: Id


# --- the event types ------------------------------------------------------------


@with_config(_CLOSED)
class PageView(_PlainEvent):
    type: Literal["page_view"]


@with_config(_CLOSED)
class ProductView(_Event):
    type: Literal["product_view"]
    properties: SkuProps


@with_config(_CLOSED)
class AddToCart(_Event):
    type: Literal["add_to_cart"]
    properties: CartAddProps


@with_config(_CLOSED)
class RemoveFromCart(_Event):
    type: Literal["remove_from_cart"]
    properties: SkuProps


@with_config(_CLOSED)
class CheckoutStarted(_PlainEvent):
    type: Literal["checkout_started"]


@with_config(_CLOSED)
class Purchase(_Event):
    type: Literal["purchase"]
    properties: PurchaseProps


@with_config(_CLOSED)
class Login(_PlainEvent):
    type: Literal["login"]


@with_config(_CLOSED)
class Signup(_Event):
    type: Literal["signup"]
    properties: NotRequired[SignupProps]


@with_config(_CLOSED)
class ConsentUpdated(_Event):
    type: Literal["consent_updated"]
    properties: ConsentProps


@with_config(_CLOSED)
class EmailDelivered(_PlainEvent):
    type: Literal["email_delivered"]


@with_config(_CLOSED)
class EmailOpen(_PlainEvent):
    type: Literal["email_open"]


@with_config(_CLOSED)
class EmailClick(_PlainEvent):
    type: Literal["email_click"]


@with_config(_CLOSED)
class Unsubscribe(_PlainEvent):
    type: Literal["unsubscribe"]


@with_config(_CLOSED)
class LoyaltyScan(_Event):
    type: Literal["loyalty_scan"]
    properties: StoreProps


@with_config(_CLOSED)
class GeofenceEnter(_Event):
    type: Literal["geofence_enter"]
    properties: StoreProps


@with_config(_CLOSED)
class Call(_Event):
    type: Literal["call"]
    properties: CallProps


@with_config(_CLOSED)
class ChatMessage(_PlainEvent):
    type: Literal["chat_message"]


@with_config(_CLOSED)
class PickupCollected(_Event):
    type: Literal["pickup_collected"]
    properties: OrderProps


@with_config(_CLOSED)
class InventoryUpdate(_Event):
    """A product event: it names no customer, so it needs no identifier."""

    type: Literal["inventory_update"]
    properties: InventoryProps


@with_config(_CLOSED)
class OrderReadyForPickup(_Event):
    type: Literal["order_ready_for_pickup"]
    properties: OrderReadyProps


CUSTOMER_EVENTS: tuple[type[Any], ...] = (
    PageView, ProductView, AddToCart, RemoveFromCart, CheckoutStarted, Purchase, Login, Signup,
    ConsentUpdated, EmailDelivered, EmailOpen, EmailClick, Unsubscribe, LoyaltyScan, GeofenceEnter,
    Call, ChatMessage, PickupCollected,
)  # fmt: skip


def _type_name(event_type: type[Any]) -> str:
    return get_args(get_type_hints(event_type)["type"])[0]  # type: ignore[no-any-return]


EVENT_MODELS: dict[str, type[Any]] = {
    _type_name(m): m for m in (*CUSTOMER_EVENTS, InventoryUpdate, OrderReadyForPickup)
}

# Which event types each input topic accepts, and which channel they must carry.
TOPIC_CONTRACT: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    **{f"channel.{c}": (frozenset(map(_type_name, CUSTOMER_EVENTS)), frozenset({c})) for c in CUSTOMER_CHANNELS},
    "ops.inventory": (frozenset({"inventory_update"}), frozenset({"ops"})),
    "ops.orders": (frozenset({"order_ready_for_pickup"}), frozenset({"ops"})),
}
INPUT_TOPICS: tuple[str, ...] = tuple(TOPIC_CONTRACT)
PRODUCT_EVENT_TYPES = frozenset({"inventory_update"})

Event = Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="type")]  # type: ignore[valid-type]
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)  # type: ignore[arg-type]  # a union built at run time


# --- what senders report back on ``outcomes`` -------------------------------------------

OUTCOME_KINDS = ("delivered", "bounced", "opened", "clicked", "converted", "failed")


@with_config(_CLOSED)
class OutcomeReport(TypedDict):
    """A sender's report on one action, keyed (and routed) by the action's ``customer``."""

    action_id: Id
    customer: Annotated[str, Field(min_length=1, max_length=300, description="the action's customer (profile id)")]
    outcome: Literal["delivered", "bounced", "opened", "clicked", "converted", "failed"]
    occurred_at: AwareDatetime
    rule: NotRequired[Annotated[str, Field(max_length=100)]]
    channel: NotRequired[Annotated[str, Field(max_length=20)]]
    detail: NotRequired[Annotated[str, Field(max_length=1000, description="e.g. the SMTP server's answer")]]


OUTCOME_ADAPTER: TypeAdapter[Any] = TypeAdapter(OutcomeReport)


# --- a person's erasure request on ``privacy.requests`` ---------------------------------


@with_config(_CLOSED)
class ErasureRequest(TypedDict):
    """Erase everything held about the person one identifier belongs to (any of their identifiers will do)."""

    request_id: Id
    identifier_type: Literal["customer_id", "loyalty_id", "email", "phone", "device_id", "cookie_id"]
    identifier: Annotated[str, Field(min_length=1, max_length=300)]
    requested_at: AwareDatetime


ERASURE_ADAPTER: TypeAdapter[Any] = TypeAdapter(ErasureRequest)
