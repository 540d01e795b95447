"""The plays: one class per kind of rule in the catalogue (``rules.yaml``'s ``play:``)."""

from __future__ import annotations

from pipeline.actions.catalogue import Catalogue
from pipeline.actions.plays.base import Play
from pipeline.actions.plays.callcenter import CallCentreScreen
from pipeline.actions.plays.cart import AbandonedCart
from pipeline.actions.plays.consumables import ConsumablesFollowUp
from pipeline.actions.plays.loyalty import Loyalty, RepeatPurchase
from pipeline.actions.plays.pickup import Arrival, ClickAndCollect
from pipeline.actions.plays.stock import BackInStock
from pipeline.actions.rules import RulesCatalogue

PLAYS: dict[str, type[Play]] = {
    "consumables_follow_up": ConsumablesFollowUp,
    "abandoned_cart": AbandonedCart,
    "back_in_stock": BackInStock,
    "click_and_collect": ClickAndCollect,
    "arrival": Arrival,
    "loyalty": Loyalty,
    "repeat_purchase": RepeatPurchase,
    "callcenter_screen": CallCentreScreen,
}


def build_plays(rules: RulesCatalogue, products: Catalogue) -> dict[str, Play]:
    """The enabled rules, each at work."""
    return {name: PLAYS[rule.play](name, rule, products) for name, rule in rules.enabled.items()}
