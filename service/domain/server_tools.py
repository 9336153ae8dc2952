"""The tools OpenRouter runs itself for a request: web search, as the ``web`` plugin or the
``openrouter:web_search`` server tool, with its options, checks and worst-case cost.

Plugins run once, before the model answers; a server tool is called by the model when it
decides, up to ``max_uses`` times, each call another round of inference over the whole
conversation plus what the searches found. Both cost money on top of tokens (OpenRouter bills
per search), so the policy layer can gate them by kind, and the reservation prices them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from service.errors import FieldViolation

WEB_SEARCH_TOOL = "openrouter:web_search"
"""The server tool's name, as OpenRouter and the callers file's ``allowed_server_tools`` say it."""
MAX_RESULTS = 25
"""OpenRouter's upper bound for ``max_results`` (Perplexity's is 20)."""
DEFAULT_RESULTS = 5
"""OpenRouter's default ``max_results``."""
MAX_USES = 10
"""Searches one request may ask for: a bound the gateway sets, since each costs money and, as
a server tool, another round of inference."""
DEFAULT_USES = 1
"""Searches when the caller sets no ``max_uses``; always sent, so the reservation's bound
holds upstream too."""
MAX_DOMAINS = 32
MAX_SEARCH_PROMPT_CHARS = 4000
_DOMAIN = re.compile(r"^(\*\.)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?:/[^\s]*)?$")


class WebSearchMode(StrEnum):
    PLUGIN = "plugin"
    """OpenRouter's ``web`` plugin: one search before the model answers (``:online``)."""
    TOOL = "tool"
    """The ``openrouter:web_search`` server tool: the model searches when it decides."""


class WebSearchEngine(StrEnum):
    NATIVE = "native"
    EXA = "exa"
    FIRECRAWL = "firecrawl"
    PARALLEL = "parallel"
    PERPLEXITY = "perplexity"


class SearchContextSize(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


# What one search result can add to the prompt, in characters: Exa's per-result text at each
# search_context_size (low 5K, medium 15K, high 30K; medium when unset), or max_characters.
_RESULT_CHARS = {
    SearchContextSize.LOW: 5_000,
    SearchContextSize.MEDIUM: 15_000,
    SearchContextSize.HIGH: 30_000,
}
_TOKENS_PER_RESULT_CHAR = 1
"""A web page's text is mostly Latin script, a token or less a character; pages in denser
scripts can cost up to twice as much and are bounded more loosely."""

# OpenRouter's price per search by engine (its web-search pages, 2026): Exa up to $0.015 (its
# deepest mode) and Parallel $0.005 for up to 10 results, then $0.001 a result more;
# Perplexity $0.005; Firecrawl is billed to the organisation's own Firecrawl credits. Native
# search is the provider's price, ``pricing.web_search`` of the model.
_ENGINE_PRICE = {
    WebSearchEngine.EXA: Decimal("0.015"),
    WebSearchEngine.PARALLEL: Decimal("0.005"),
    WebSearchEngine.PERPLEXITY: Decimal("0.005"),
    WebSearchEngine.FIRECRAWL: Decimal(0),
}
_PER_EXTRA_RESULT = Decimal("0.001")
_INCLUDED_RESULTS = 10

# The ``file-parser`` plugin: OpenRouter reads a document for a model that cannot, with the
# engine the request names or, by default, ``mistral-ocr``, which it bills per page (even on
# the organisation's own provider key); ``cloudflare-ai`` is free. Chat usage reports the
# fee only inside ``cost``, with no page count.
OCR_USD_PER_PAGE = Decimal("0.002")
"""``mistral-ocr``: $2 per 1,000 pages."""
OCR_MAX_PAGES = 1_000
"""Mistral OCR's limit per document: the most pages one file is billed for. A PDF's page
count cannot be bounded from its size (a page tree of a thousand pages compresses to a few
hundred bytes), so a file the parser may OCR is reserved at this many."""


@dataclass(frozen=True, slots=True)
class WebSearch:
    """Web search for one request. ``None`` fields are not sent (OpenRouter's defaults)."""

    mode: WebSearchMode = WebSearchMode.PLUGIN
    engine: WebSearchEngine | None = None
    """None: native for models that have it, else Exa (OpenRouter's choice)."""
    max_results: int | None = None
    max_uses: int | None = None
    search_prompt: str = field(default="", repr=False)
    """The plugin's instruction that introduces the results (prompt text: never logged)."""
    context_size: SearchContextSize | None = None
    allowed_domains: tuple[str, ...] = ()
    excluded_domains: tuple[str, ...] = ()

    @property
    def results(self) -> int:
        return self.max_results or DEFAULT_RESULTS

    @property
    def uses(self) -> int:
        return self.max_uses or DEFAULT_USES

    @property
    def rounds(self) -> int:
        """Rounds of inference at most: the plugin answers once, after its search; the tool
        may search after every round but the last."""
        return 1 if self.mode is WebSearchMode.PLUGIN else self.uses + 1

    def result_tokens(self) -> int:
        """What every search's results together can add to the prompt, in tokens."""
        chars = _RESULT_CHARS[self.context_size or SearchContextSize.MEDIUM]
        return self.uses * self.results * chars * _TOKENS_PER_RESULT_CHAR

    def search_price(self, native: Decimal | None) -> Decimal:
        """The most one search can cost (the engine's fee, not tokens) on a model whose own
        search costs ``native`` (``pricing.web_search``; None: it has none)."""
        if self.engine is WebSearchEngine.NATIVE:
            return native or Decimal(0)
        if self.engine is not None:
            return self._engine_price(self.engine)
        # OpenRouter picks: the model's own search, or Exa.
        return max(native or Decimal(0), self._engine_price(WebSearchEngine.EXA))

    def _engine_price(self, engine: WebSearchEngine) -> Decimal:
        fee = _ENGINE_PRICE[engine]
        if engine in (WebSearchEngine.EXA, WebSearchEngine.PARALLEL):
            fee += _PER_EXTRA_RESULT * max(0, self.results - _INCLUDED_RESULTS)
        return fee


def check_web_search(search: WebSearch, violations: list[FieldViolation]) -> None:
    """Every bad option of ``search``, named as the contract spells it."""
    where = "web_search"
    if search.max_results is not None and not 1 <= search.max_results <= MAX_RESULTS:
        violations.append(FieldViolation(f"{where}.max_results", f"must be 1 to {MAX_RESULTS}"))
    if search.max_uses is not None and not 1 <= search.max_uses <= MAX_USES:
        violations.append(FieldViolation(f"{where}.max_uses", f"must be 1 to {MAX_USES}"))
    if search.search_prompt:
        if search.mode is not WebSearchMode.PLUGIN:
            violations.append(
                FieldViolation(f"{where}.search_prompt", "only applies to WEB_SEARCH_MODE_PLUGIN")
            )
        elif len(search.search_prompt) > MAX_SEARCH_PROMPT_CHARS:
            violations.append(
                FieldViolation(
                    f"{where}.search_prompt", f"longer than {MAX_SEARCH_PROMPT_CHARS} characters"
                )
            )
    for name, domains in (
        ("allowed_domains", search.allowed_domains),
        ("excluded_domains", search.excluded_domains),
    ):
        if len(domains) > MAX_DOMAINS:
            violations.append(FieldViolation(f"{where}.{name}", f"at most {MAX_DOMAINS} domains"))
        for i, domain in enumerate(domains):
            if not _DOMAIN.match(domain):
                violations.append(
                    FieldViolation(f"{where}.{name}[{i}]", "must be a domain, e.g. example.com")
                )
