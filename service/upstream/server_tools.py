"""OpenRouter's JSON for the tools it runs itself (web search) and for prompt-cache marks."""

from __future__ import annotations

from typing import Any

from service.domain.completion import CacheControl
from service.domain.server_tools import WEB_SEARCH_TOOL, WebSearch, WebSearchMode

WEB_PLUGIN = "web"


def cache_control(mark: CacheControl) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "ephemeral"}
    if mark.ttl is not None:
        out["ttl"] = mark.ttl.value
    return out


def web_plugin(search: WebSearch) -> dict[str, Any]:
    """The ``web`` plugin (``plugins[]``); ``max_uses`` is always sent, so the gateway's
    bound on searches holds upstream."""
    plugin: dict[str, Any] = {"id": WEB_PLUGIN, "max_results": search.results}
    if search.engine is not None:
        plugin["engine"] = search.engine.value
    plugin["max_uses"] = search.uses
    if search.search_prompt:
        plugin["search_prompt"] = search.search_prompt
    if search.allowed_domains:
        plugin["include_domains"] = list(search.allowed_domains)
    if search.excluded_domains:
        plugin["exclude_domains"] = list(search.excluded_domains)
    return plugin


def web_search_tool(search: WebSearch) -> dict[str, Any]:
    """The ``openrouter:web_search`` server tool (``tools[]``)."""
    parameters: dict[str, Any] = {"max_results": search.results, "max_uses": search.uses}
    if search.engine is not None:
        parameters["engine"] = search.engine.value
    if search.context_size is not None:
        parameters["search_context_size"] = search.context_size.value
    if search.allowed_domains:
        parameters["allowed_domains"] = list(search.allowed_domains)
    if search.excluded_domains:
        parameters["excluded_domains"] = list(search.excluded_domains)
    return {"type": WEB_SEARCH_TOOL, "parameters": parameters}


def add_web_search(body: dict[str, Any], search: WebSearch) -> None:
    """The request's search, as a plugin (with ``web_search_options`` for native search's
    context size) or as a server tool next to the function tools."""
    if search.mode is WebSearchMode.TOOL:
        body.setdefault("tools", []).append(web_search_tool(search))
        return
    body.setdefault("plugins", []).append(web_plugin(search))
    if search.context_size is not None:
        body["web_search_options"] = {"search_context_size": search.context_size.value}
