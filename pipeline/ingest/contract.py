"""The ingest contract: what channel systems produce, as pydantic models.

These models are the source of truth; ``schemas/`` holds the JSON Schema
generated from them (``omni schemas``) and a test fails when the two differ.
Properties allow extra fields so that channel systems can send context we do
not use yet without being dead-lettered for it.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

CUSTOMER_CHANNELS = ("web", "app", "email", "store", "callcenter", "chat")
Channel = Literal["web", "app", "email", "store", "callcenter", "chat", "ops"]
IDENTIFIER_TYPES = ("customer_id", "loyalty_id", "email", "phone", "device_id", "cookie_id")

Sku = Annotated[str, Field(min_length=1, max_length=100)]
Id = Annotated[str, Field(min_length=1, max_length=200)]


class Identifiers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    customer_id: str | None = None
    loyalty_id: str | None = None
    email: str | None = None
    phone: str | None = None
    device_id: str | None = None
    cookie_id: str | None = None


class Props(BaseModel):
    """Properties of an event type that needs none; extra context is kept."""

    model_config = ConfigDict(extra="allow", strict=True)


class _Event(BaseModel):
    # Strict: a number sent as a string is an error, not silently coerced, because the
    # pipeline forwards the event as it was sent (see pipeline.ingest.validate).
    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: Id
    channel: Channel
    occurred_at: AwareDatetime
    identifiers: Identifiers = Identifiers()
    properties: Props = Props()


# --- properties of the typed events -------------------------------------------


class SkuProps(Props):
    sku: Sku


class CartAddProps(Props):
    sku: Sku
    qty: int = Field(1, ge=1, le=10_000)
    price: float = Field(ge=0)


class PurchaseItem(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    sku: Sku
    qty: int = Field(1, ge=1, le=10_000)
    price: float = Field(ge=0)
    category: str | None = None


class PurchaseProps(Props):
    order_id: Id
    items: list[PurchaseItem] = Field(min_length=1, max_length=500)
    total: float = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    fulfilment: Literal["delivery", "pickup"] = "delivery"
    store_id: str | None = None


class SignupProps(Props):
    locale: str | None = Field(None, max_length=35)


class ConsentProps(Props):
    channel: Literal["email", "sms", "push", "web", "callcenter", "store"]
    granted: bool


class StoreProps(Props):
    store_id: Id


class CallProps(Props):
    reason: str = Field(max_length=500)


class OrderProps(Props):
    order_id: Id


class InventoryProps(Props):
    sku: Sku
    store_id: str | None = None
    available_qty: int = Field(ge=0)


class OrderReadyProps(Props):
    order_id: Id
    store_id: Id


# --- the event types ------------------------------------------------------------


class PageView(_Event):
    type: Literal["page_view"]


class ProductView(_Event):
    type: Literal["product_view"]
    properties: SkuProps


class AddToCart(_Event):
    type: Literal["add_to_cart"]
    properties: CartAddProps


class RemoveFromCart(_Event):
    type: Literal["remove_from_cart"]
    properties: SkuProps


class CheckoutStarted(_Event):
    type: Literal["checkout_started"]


class Purchase(_Event):
    type: Literal["purchase"]
    properties: PurchaseProps


class Login(_Event):
    type: Literal["login"]


class Signup(_Event):
    type: Literal["signup"]
    properties: SignupProps = SignupProps()


class ConsentUpdated(_Event):
    type: Literal["consent_updated"]
    properties: ConsentProps


class EmailDelivered(_Event):
    type: Literal["email_delivered"]


class EmailOpen(_Event):
    type: Literal["email_open"]


class EmailClick(_Event):
    type: Literal["email_click"]


class Unsubscribe(_Event):
    type: Literal["unsubscribe"]


class LoyaltyScan(_Event):
    type: Literal["loyalty_scan"]
    properties: StoreProps


class GeofenceEnter(_Event):
    type: Literal["geofence_enter"]
    properties: StoreProps


class Call(_Event):
    type: Literal["call"]
    properties: CallProps


class ChatMessage(_Event):
    type: Literal["chat_message"]


class PickupCollected(_Event):
    type: Literal["pickup_collected"]
    properties: OrderProps


class InventoryUpdate(_Event):
    """A product event: it names no customer, so it needs no identifier."""

    type: Literal["inventory_update"]
    properties: InventoryProps


class OrderReadyForPickup(_Event):
    type: Literal["order_ready_for_pickup"]
    properties: OrderReadyProps


CUSTOMER_EVENTS: tuple[type[_Event], ...] = (
    PageView, ProductView, AddToCart, RemoveFromCart, CheckoutStarted, Purchase, Login, Signup,
    ConsentUpdated, EmailDelivered, EmailOpen, EmailClick, Unsubscribe, LoyaltyScan, GeofenceEnter,
    Call, ChatMessage, PickupCollected,
)  # fmt: skip


def _type_name(model: type[_Event]) -> str:
    return model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]


EVENT_MODELS: dict[str, type[_Event]] = {
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
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
