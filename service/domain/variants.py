"""Model-id suffixes (``openai/gpt-4o-mini:online``) and what they mean.

A suffix is a shortcut for a request setting, and the policy must see through it: a
``:online`` suffix is a web-search request, subject to the plugin rules like the ``web``
plugin itself. The suffix is still sent upstream as written (``:nitro`` and ``:floor`` also
open priority and flex tiers, which no explicit setting does), but the gateway refuses one
it does not know, since it could not say what the policy thinks of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.domain.providers import ProviderSort


class Variant(StrEnum):
    FREE = "free"
    """The free endpoints of a model (own rate limits; providers that may train on prompts)."""
    NITRO = "nitro"
    """Sort by throughput; priority-tier endpoints become eligible."""
    FLOOR = "floor"
    """Sort by price; flex-tier endpoints become eligible."""
    ONLINE = "online"
    """Web search: the same as the ``web`` plugin (deprecated by OpenRouter, still served)."""
    EXACTO = "exacto"
    """A quality-first provider order for tool calling; an explicit sort takes precedence."""
    THINKING = "thinking"
    """Extended reasoning: reasoning on, at the default (medium) effort."""
    EXTENDED = "extended"
    """A larger context window."""


SORT_OF: dict[Variant, ProviderSort] = {
    Variant.NITRO: ProviderSort.THROUGHPUT,
    Variant.FLOOR: ProviderSort.PRICE,
}
WEB_PLUGIN = "web"


@dataclass(frozen=True, slots=True)
class ModelId:
    """A model id split into its catalog id and its suffixes, in the order written."""

    base: str
    variants: tuple[Variant, ...] = ()

    @property
    def sort(self) -> ProviderSort | None:
        """The provider sort a suffix implies (the last one written wins)."""
        implied = [SORT_OF[v] for v in self.variants if v in SORT_OF]
        return implied[-1] if implied else None

    @property
    def web_search(self) -> bool:
        return Variant.ONLINE in self.variants

    @property
    def thinking(self) -> bool:
        return Variant.THINKING in self.variants


class UnknownVariantError(ValueError):
    def __init__(self, suffix: str) -> None:
        super().__init__(suffix)
        self.suffix = suffix


def parse_model_id(model: str) -> ModelId:
    """Split ``author/slug:suffix:suffix``; raises ``UnknownVariantError`` for a suffix that
    is not one of ``Variant`` (suffixes stack, e.g. ``:free:online``)."""
    base, *suffixes = model.split(":")
    variants = []
    for suffix in suffixes:
        try:
            variants.append(Variant(suffix))
        except ValueError:
            raise UnknownVariantError(suffix) from None
    return ModelId(base, tuple(variants))
