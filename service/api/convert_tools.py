"""Protobuf -> domain conversion of web search and prompt-cache marks."""

from __future__ import annotations

from collections.abc import Mapping

from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.completion import CacheControl, CacheTtl
from service.domain.server_tools import (
    SearchContextSize,
    WebSearch,
    WebSearchEngine,
    WebSearchMode,
)
from service.errors import FieldViolation

_TTLS: dict[int, CacheTtl | None] = {
    pb.CACHE_TTL_UNSPECIFIED: None,
    pb.CACHE_TTL_5M: CacheTtl.FIVE_MINUTES,
    pb.CACHE_TTL_1H: CacheTtl.ONE_HOUR,
}
_MODES: dict[int, WebSearchMode] = {
    pb.WEB_SEARCH_MODE_UNSPECIFIED: WebSearchMode.PLUGIN,
    pb.WEB_SEARCH_MODE_PLUGIN: WebSearchMode.PLUGIN,
    pb.WEB_SEARCH_MODE_TOOL: WebSearchMode.TOOL,
}
_ENGINES: dict[int, WebSearchEngine | None] = {
    pb.WEB_SEARCH_ENGINE_UNSPECIFIED: None,
    pb.WEB_SEARCH_ENGINE_NATIVE: WebSearchEngine.NATIVE,
    pb.WEB_SEARCH_ENGINE_EXA: WebSearchEngine.EXA,
    pb.WEB_SEARCH_ENGINE_FIRECRAWL: WebSearchEngine.FIRECRAWL,
    pb.WEB_SEARCH_ENGINE_PARALLEL: WebSearchEngine.PARALLEL,
    pb.WEB_SEARCH_ENGINE_PERPLEXITY: WebSearchEngine.PERPLEXITY,
}
_SIZES: dict[int, SearchContextSize | None] = {
    pb.SEARCH_CONTEXT_SIZE_UNSPECIFIED: None,
    pb.SEARCH_CONTEXT_SIZE_LOW: SearchContextSize.LOW,
    pb.SEARCH_CONTEXT_SIZE_MEDIUM: SearchContextSize.MEDIUM,
    pb.SEARCH_CONTEXT_SIZE_HIGH: SearchContextSize.HIGH,
}


def _known(
    table: Mapping[int, object], value: int, field: str, violations: list[FieldViolation]
) -> bool:
    if value in table:
        return True
    violations.append(FieldViolation(field, "is not a value this contract defines"))
    return False


def cache_control(
    mark: pb.CacheControl, field: str, violations: list[FieldViolation]
) -> CacheControl:
    ttl = _TTLS.get(mark.ttl) if _known(_TTLS, mark.ttl, f"{field}.ttl", violations) else None
    return CacheControl(ttl)


def web_search(options: pb.WebSearchOptions, violations: list[FieldViolation]) -> WebSearch:
    where = "web_search"
    mode = _MODES.get(options.mode, WebSearchMode.PLUGIN)
    _known(_MODES, options.mode, f"{where}.mode", violations)
    engine = _ENGINES.get(options.engine)
    _known(_ENGINES, options.engine, f"{where}.engine", violations)
    size = _SIZES.get(options.search_context_size)
    _known(_SIZES, options.search_context_size, f"{where}.search_context_size", violations)
    return WebSearch(
        mode=mode,
        engine=engine,
        max_results=options.max_results if options.HasField("max_results") else None,
        max_uses=options.max_uses if options.HasField("max_uses") else None,
        search_prompt=options.search_prompt,
        context_size=size,
        allowed_domains=tuple(options.allowed_domains),
        excluded_domains=tuple(options.excluded_domains),
    )
