"""The action contract: what downstream senders consume from ``actions.<channel>``."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

ActionChannel = Literal["email", "sms", "push", "web", "callcenter", "store"]
ACTION_CHANNELS: tuple[str, ...] = ("email", "sms", "push", "web", "callcenter", "store")


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action_id: str = Field(description="deterministic: the same trigger never yields a second id")
    rule: str
    kind: Literal["marketing", "transactional"] = Field(description="marketing actions count against the frequency cap")
    action: str = Field(description="what the sender should do, e.g. offer_consumable")
    customer: str = Field(description="the profile id the action is for")
    channel: ActionChannel
    locale: str
    message: str
    reason: str = Field(description="why, in words a person can check")
    trigger_event_ids: list[str]
    facts: dict[str, Any] = Field(description="the profile facts the decision used")
    offer: dict[str, Any] | None = None
    address: str | None = Field(None, description="where to deliver: e-mail address, phone or device")
    created_at: float = Field(description="unix seconds when the action was decided")
    due_at: float | None = Field(None, description="unix seconds it was scheduled for, for delayed actions")

    def to_json(self) -> bytes:
        """The record value senders read: the fields as validated, in declaration order.

        A validated model's ``__dict__`` holds plain JSON types already; ``model_dump``
        would copy them all first, at five times the cost, for every action sent.
        """
        return orjson.dumps(self.__dict__)


def action_id(rule: str, customer: str, cause: str) -> str:
    return hashlib.blake2b(f"{rule}|{customer}|{cause}".encode(), digest_size=12).hexdigest()
