"""The rules catalogue: which plays run, when, on which channels and in which words.

Rules are data (``pipeline/data/rules.yaml`` ships; ``omni worker --rules FILE``
loads another). The file is validated whole before anything uses it: an error
names the rule and the field, and a bad file never half-loads, at start-up or
when a running worker reloads it (:class:`RulesFile`).
"""

from __future__ import annotations

import logging
import string
from datetime import time as clock
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.actions.durations import parse_duration
from pipeline.actions.model import ActionChannel
from pipeline.profiles.profile import time_zone

log = logging.getLogger(__name__)

Duration = Annotated[float, BeforeValidator(parse_duration), Field(description="'2s', '48h', '60d'...")]
CUSTOMER_CHANNELS: tuple[ActionChannel, ...] = ("email", "push", "sms")


class FrequencyCap(BaseModel):
    """At most ``count`` marketing actions per customer in any ``period``, across channels."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    count: int = Field(ge=1)
    period: Duration

    @classmethod
    def parse(cls, text: str) -> "FrequencyCap":
        count, sep, period = text.partition("/")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"{text!r} is not a cap (use e.g. '1/1d', '3/7d')")
        return cls(count=int(count), period=period.strip())  # type: ignore[arg-type]


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: clock = Field(description="local time actions to the customer stop, e.g. '21:00'")
    end: clock = Field(description="local time they may go again, e.g. '08:00'")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 21:00 as the number 1260 (base 60), which would pass as 00:21.
        if not isinstance(value, str):
            raise ValueError(f"write the time in quotes, e.g. '21:00' (YAML read {value!r})")
        return value


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    locale: str = "en"
    time_zone: str = Field("Europe/Copenhagen", description="for customers whose own time zone is unknown")
    quiet_hours: QuietHours | None = None
    frequency_caps: list[Annotated[FrequencyCap, BeforeValidator(lambda v: FrequencyCap.parse(v) if isinstance(v, str) else v)]] = []

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if time_zone(value) is None:
            raise ValueError(f"{value!r} is not an IANA time zone")
        return value


STAFF_CHANNELS: tuple[ActionChannel, ...] = ("store", "callcenter")


@lru_cache(maxsize=1024)
def language(locale: str) -> str:
    """``da-DK``, ``da_DK``, ``DA`` -> ``da``: messages are keyed by language."""
    return locale.replace("_", "-").split("-")[0].lower()


class _Rule(BaseModel):
    """What every rule has. ``kind`` decides the frequency cap: transactional actions are never capped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    kind: Literal["marketing", "transactional"] = "marketing"
    channels: tuple[ActionChannel, ...] = Field(
        CUSTOMER_CHANNELS, min_length=1, description="candidates; the one the customer engages with most wins"
    )
    messages: dict[str, str] = Field(min_length=1, description="text per language, with {placeholders}")
    offer_valid: Duration = Field(14 * 86_400.0, description="how long an offer stays active on the profile")
    holdout: float = Field(
        0.05, ge=0.0, le=0.5, description="share of customers who get no action from this rule, to measure its effect"
    )
    attribution_window: Duration = Field(
        7 * 86_400.0, description="a purchase this soon after the action counts as its conversion; 0 measures nothing"
    )

    #: placeholders a message may use; each play lists its own
    fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _channels_of_one_kind(self) -> "_Rule":
        staff = [c for c in self.channels if c in STAFF_CHANNELS]
        if staff and len(staff) != len(self.channels):
            raise ValueError(f"channels mixes staff channels {staff} with customer channels: give one or the other")
        return self

    @model_validator(mode="after")
    def _placeholders_known(self) -> "_Rule":
        for group in ("messages", "reminder_messages"):
            for lang, text in (getattr(self, group, None) or {}).items():
                try:
                    used = {name for _, name, _, _ in string.Formatter().parse(text) if name}
                except ValueError as exc:
                    raise ValueError(f"{group}.{lang}: {exc}") from None
                unknown = used - self.fields
                if unknown:
                    raise ValueError(f"{group}.{lang} uses unknown {sorted(unknown)}; known: {sorted(self.fields)}")
        return self


class ConsumablesRule(_Rule):
    """A durable purchase schedules an offer on its consumable, after the product catalogue's delay."""

    play: Literal["consumables_follow_up"]
    fields: ClassVar[frozenset[str]] = frozenset({"consumable", "durable"})


class AbandonedCartRule(_Rule):
    play: Literal["abandoned_cart"]
    window: Duration = Field(description="quiet time after the last add before the one reminder")
    fields: ClassVar[frozenset[str]] = frozenset({"items", "count"})


class BackInStockRule(_Rule):
    play: Literal["back_in_stock"]
    fields: ClassVar[frozenset[str]] = frozenset({"product", "where"})


class ClickAndCollectRule(_Rule):
    play: Literal["click_and_collect"]
    kind: Literal["marketing", "transactional"] = "transactional"
    hold: Duration = Field(description="how long a ready order waits at the store")
    remind_after: Duration = Field(description="one reminder if not collected by then")
    reminder_messages: dict[str, str] = Field(min_length=1)
    fields: ClassVar[frozenset[str]] = frozenset({"order", "store", "until"})


class ArrivalRule(_Rule):
    play: Literal["arrival"]
    kind: Literal["marketing", "transactional"] = "transactional"
    channels: tuple[ActionChannel, ...] = ("store",)
    max_delay: Duration = Field(15 * 60.0, description="an arrival reported later than this is not passed on")
    fields: ClassVar[frozenset[str]] = frozenset({"order", "store"})


class LoyaltyRule(_Rule):
    play: Literal["loyalty"]
    kind: Literal["marketing", "transactional"] = "transactional"
    points_per_unit: float = Field(1.0, gt=0, description="points per unit of currency spent, in any channel")
    threshold: int = Field(ge=1, description="a reward each time the balance crosses a multiple of this")
    reward: str = Field(description="what the reward is, e.g. a 10 EUR voucher")
    fields: ClassVar[frozenset[str]] = frozenset({"points", "reward"})


class RepeatPurchaseRule(_Rule):
    play: Literal["repeat_purchase"]
    min_purchases: int = Field(3, ge=2, description="purchases of the same item before a reorder is offered")
    min_interval: Duration = Field(description="the earliest a reorder is offered after the last purchase")
    fields: ClassVar[frozenset[str]] = frozenset({"product"})


class CallCentreRule(_Rule):
    play: Literal["callcenter_screen"]
    kind: Literal["marketing", "transactional"] = "transactional"
    channels: tuple[ActionChannel, ...] = ("callcenter",)
    recent_purchases: int = Field(5, ge=1)
    max_delay: Duration = Field(15 * 60.0, description="a call reported later than this gets no screen")
    fields: ClassVar[frozenset[str]] = frozenset({"summary"})


Rule = Annotated[
    Union[
        ConsumablesRule, AbandonedCartRule, BackInStockRule, ClickAndCollectRule, ArrivalRule, LoyaltyRule,
        RepeatPurchaseRule, CallCentreRule,
    ],
    Field(discriminator="play"),
]  # fmt: skip


class RulesCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Defaults = Field(default_factory=lambda: Defaults())  # type: ignore[call-arg]
    rules: dict[str, Rule]

    @model_validator(mode="after")
    def _default_language_everywhere(self) -> "RulesCatalogue":
        lang = language(self.defaults.locale)
        for name, rule in self.rules.items():
            for group in ("messages", "reminder_messages"):
                texts = getattr(rule, group, None)
                if texts is not None and lang not in {language(k) for k in texts}:
                    raise ValueError(f"rule {name!r}: {group} has no text in the default language {lang!r}")
        return self

    @classmethod
    def load(cls, path: Path) -> "RulesCatalogue":
        """Load and validate the whole file; :class:`RulesError` names the rule and field of the first problem."""
        try:
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh)
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise RulesError(path, _describe(exc)) from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RulesError(path, str(exc)) from None

    @property
    def enabled(self) -> dict[str, Any]:
        return {name: rule for name, rule in self.rules.items() if rule.enabled}


class RulesError(ValueError):
    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in error["loc"]]
        if loc[:1] == ["rules"] and len(loc) >= 2:
            # ("rules", name, play-tag, field...): say it the way a person reads the file
            name, rest = loc[1], loc[3:] if len(loc) > 2 else []
            where = f"rule {name!r}" + (f", field {'.'.join(rest)!r}" if rest else "")
        else:
            where = f"field {'.'.join(loc)!r}" if loc else "the file"
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


class RulesFile:
    """A rules file a running worker re-reads when it changes, so a rule is switched off without a restart.

    A new version that does not validate is refused whole: the worker logs why and
    keeps the rules it has, rather than running half a catalogue.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.catalogue = RulesCatalogue.load(path)
        self._stamp = self._stat()
        self.failed: str | None = None  # why the file on disk was refused, while it is

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def reload_if_changed(self) -> bool:
        """True when a changed file was loaded."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.catalogue = RulesCatalogue.load(self.path)
        except Exception as exc:  # whatever is wrong with the new file, the worker goes on with the old rules
            self.failed = str(exc)
            log.error("rules not reloaded, keeping the previous ones: %s", exc)
            return False
        self.failed = None
        log.info("rules reloaded from %s: enabled %s", self.path, sorted(self.catalogue.enabled))
        return True


def write_variant(path: Path, defaults: dict[str, Any] | None = None, rules: dict[str, dict[str, Any] | None] | None = None,
                  source: Path | None = None) -> Path:  # fmt: skip
    """The shipped rules catalogue (or ``source``) with ``defaults`` merged in and each named rule updated
    (None drops it), written to ``path``: for tests, the benchmark and evaluations."""
    from pipeline.settings import PACKAGE_DATA

    doc = yaml.safe_load((source or PACKAGE_DATA / "rules.yaml").read_text(encoding="utf-8"))
    doc["defaults"].update(defaults or {})
    for name, changes in (rules or {}).items():
        if changes is None:
            del doc["rules"][name]
        else:
            doc["rules"][name].update(changes)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path
