"""Write keys: which source (and so which channel) a tracking call comes from.

A source is what Segment calls one: a web shop, an app, a till system, each with its own write
key (or keys, while one is being replaced). The source names the channel its calls become
events of, and which identifier Segment's ``anonymousId`` is there (a browser's cookie on the
web, the device in an app). Loaded from YAML and validated whole at start-up, so a bad file
stops the collector with the source and field named.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.ingest.contract import CUSTOMER_CHANNELS

AnonymousType = Literal["cookie_id", "device_id"]


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    channel: Literal["web", "app", "email", "store", "callcenter", "chat"]
    write_keys: tuple[str, ...] = Field(min_length=1)
    anonymous_id: AnonymousType | None = Field(
        None, description="the identifier anonymousId is; default device_id for the app, cookie_id elsewhere"
    )

    @property
    def anonymous_type(self) -> AnonymousType:
        if self.anonymous_id is not None:
            return self.anonymous_id
        return "device_id" if self.channel == "app" else "cookie_id"

    @property
    def topic(self) -> str:
        """The logical input topic its events go to."""
        return f"channel.{self.channel}"


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[Source] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "_File":
        seen: dict[str, str] = {}
        names: set[str] = set()
        for source in self.sources:
            if source.name in names:
                raise ValueError(f"source {source.name!r} is declared twice")
            names.add(source.name)
            for key in source.write_keys:
                if len(key) < 8:
                    raise ValueError(f"source {source.name!r}: a write key must have at least 8 characters")
                if key in seen:
                    raise ValueError(f"write key of {source.name!r} is also {seen[key]!r}'s")
                seen[key] = source.name
        return self


class SourcesError(ValueError):
    pass


class Sources:
    """Write key -> source, and the Basic-auth check of a call."""

    def __init__(self, sources: list[Source]) -> None:
        assert all(s.channel in CUSTOMER_CHANNELS for s in sources)
        self.by_key = {key: s for s in sources for key in s.write_keys}

    @classmethod
    def load(cls, path: Path) -> "Sources":
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            return cls(_File.model_validate(doc).sources)
        except (OSError, yaml.YAMLError) as exc:
            raise SourcesError(f"{path}: {exc}") from exc
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise SourcesError(f"{path}: {loc}: {first['msg']}") from exc

    def lookup(self, write_key: str | None) -> Source | None:
        """The source a write key belongs to; compared in constant time against each key."""
        if not write_key:
            return None
        given = write_key.encode("utf-8", "replace")
        found = None
        for key, source in self.by_key.items():
            if hmac.compare_digest(given, key.encode()):
                found = source
        return found


def basic_auth_user(header: str | None) -> str | None:
    """The user name of an ``Authorization: Basic`` header (Segment's write key, empty password), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _password = decoded.partition(":")
    return user or None
