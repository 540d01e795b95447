"""The product catalogue: which durable product needs which consumable, and when.

Loaded from YAML and validated whole at start-up, so a bad catalogue stops the
worker with a message naming the product and field instead of half-loading.
"""

from __future__ import annotations

import string
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.actions.durations import parse_duration


class ConsumableOffer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: str = Field(min_length=1)
    name: str
    delay: str = Field(description="how long after the durable purchase to offer it, e.g. '60d'")
    message: dict[str, str] = Field(
        default_factory=dict, description="offer text per language, with {consumable} and {durable}; the rule's otherwise"
    )

    @field_validator("delay")
    @classmethod
    def _valid_delay(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("message")
    @classmethod
    def _known_placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        for lang, text in value.items():
            used = {name for _, name, _, _ in string.Formatter().parse(text) if name}
            if used - {"consumable", "durable"}:
                raise ValueError(f"message.{lang} uses unknown {sorted(used - {'consumable', 'durable'})}")
        return value

    @cached_property
    def delay_s(self) -> float:
        """Parsed once: the consumables play asks on every durable purchase."""
        return parse_duration(self.delay)


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    category: str
    price: float = Field(ge=0)
    consumable: ConsumableOffer | None = None


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    note: str | None = Field(None, description="shown on screen, e.g. that a demo compresses time")
    products: dict[str, Product]

    @classmethod
    def load(cls, path: Path) -> "Catalogue":
        with open(path, encoding="utf-8") as fh:
            return cls.model_validate(yaml.safe_load(fh))

    def consumable_for(self, sku: str) -> ConsumableOffer | None:
        product = self.products.get(sku)
        return product.consumable if product else None

    def consumable_skus(self) -> frozenset[str]:
        return frozenset(p.consumable.sku for p in self.products.values() if p.consumable)


def with_delay(folder: Path, delay: str, source: Path | None = None) -> Path:
    """A copy of a product catalogue (the shipped one by default) with every follow-up delay set to ``delay``.

    For tests, the benchmark and evaluations, where sixty days are two seconds.
    """
    from pipeline.settings import PACKAGE_DATA

    doc = yaml.safe_load((source or PACKAGE_DATA / "catalogue.yaml").read_text())
    for product in doc["products"].values():
        if product.get("consumable"):
            product["consumable"]["delay"] = delay
    path = folder / f"catalogue-{delay}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
