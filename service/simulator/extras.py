"""What a chat request adds on top of plain tokens: web search and prompt caching.

**Web search** runs for the ``web`` plugin (or a model id ending in ``:online``) and for the
``openrouter:web_search`` server tool: each search adds ``max_results`` results (default 5)
to the prompt, 150 / 400 / 800 tokens each at ``search_context_size`` low / medium / high;
the answer cites each result with a ``url_citation``; the usage reports
``server_tool_use_details`` and a cost of the tokens plus the engine's fee per search (native:
the model's ``pricing.web_search``; Exa $0.007 and Parallel $0.005 for up to 10 results,
then $0.001 a result; Perplexity $0.005; Firecrawl nothing), while
``cost_details.upstream_inference_cost`` is the tokens' cost alone, as the recordings show.
The plugin searches once; the tool once, or ``[[sim:searches=N]]`` times (at most its
``max_uses``).

**Prompt caching** follows the model's style. ``explicit`` (Anthropic, Gemini): the prompt up
to a part marked ``cache_control`` (or, with a top-level ``cache_control``, the whole prompt)
is written to the cache the first time (``cache_write_tokens``, at ``input_cache_write``, or
``input_cache_write_1h`` for ``ttl: "1h"``) and read from it on a later request with the same
prefix within the lifetime (``cached_tokens``, at ``input_cache_read``); prefixes shorter than
the model's minimum are not cached. ``automatic`` (OpenAI): every prompt's prefix before its
last message is cached without a mark or a write price, and read back the same way.

**The file parser** reads files for a model that cannot (or with a named engine): with
``mistral-ocr`` (named, or OpenRouter's default) each page costs $0.002, in ``cost`` but not
in ``upstream_inference_cost``; ``cloudflare-ai`` and ``pdf-text`` are free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from .catalog import ModelInfo

_TOKENS_PER_RESULT = {"low": 150, "medium": 400, "high": 800}


@dataclass(frozen=True, slots=True)
class WebSearchPlan:
    tool: bool
    engine: str
    results: int
    searches: int
    fee_per_search: Decimal
    context_size: str

    @property
    def result_tokens(self) -> int:
        return self.searches * self.results * _TOKENS_PER_RESULT[self.context_size]

    @property
    def fee(self) -> Decimal:
        return self.fee_per_search * self.searches

    def usage_details(self) -> dict[str, int]:
        return {
            "web_search_requests": self.searches,
            "tool_calls_requested": self.searches,
            "tool_calls_executed": self.searches,
        }


@dataclass(frozen=True, slots=True)
class CacheUse:
    read: int = 0
    written: int = 0
    one_hour: bool = False


BYOK_FEE = Decimal("0.05")
"""The simulator's stand-in for OpenRouter's fee on a BYOK call, as a share of the inference's
catalog price (the provider bills the inference to the organisation)."""
OCR_USD_PER_PAGE = Decimal("0.002")
"""``mistral-ocr`` through the ``file-parser`` plugin: $2 per 1,000 pages."""


@dataclass(frozen=True, slots=True)
class Extras:
    web: WebSearchPlan | None = None
    cache: CacheUse = field(default_factory=CacheUse)
    ocr_pages: int = 0
    """Pages the file parser read with ``mistral-ocr``: billed in ``cost``, not upstream."""
    byok: bool = False
    """``[[sim:byok]]``: the organisation's own provider key served the call."""

    @property
    def fees(self) -> Decimal:
        """OpenRouter's own fees: searches and OCR pages (in ``cost`` only)."""
        web = self.web.fee if self.web is not None else Decimal(0)
        return web + OCR_USD_PER_PAGE * self.ocr_pages

    def prompt_cost_change(self, model: ModelInfo) -> Decimal:
        """Cache reads and writes are billed at their own prices instead of the prompt's."""
        cache = self.cache
        change = Decimal(0)
        read_price = model.price("input_cache_read")
        if cache.read and read_price is not None:
            change += (read_price - model.prompt_price) * cache.read
        write_price = model.price("input_cache_write_1h" if cache.one_hour else "input_cache_write")
        if cache.written and write_price is not None:
            change += (write_price - model.prompt_price) * cache.written
        return change
