"""Reading what a chat request asks for beyond tokens (see ``extras`` for the rules)."""

from __future__ import annotations

import hashlib
import time
from decimal import Decimal
from typing import Any

import orjson

from .catalog import ModelInfo
from .extras import CacheUse, WebSearchPlan
from .generate import prompt_tokens
from .state import SimulatorState

WEB_SEARCH_TOOLS = frozenset(
    {
        "openrouter:web_search",
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
    }
)
_ENGINE_FEES = {
    "exa": Decimal("0.007"),
    "parallel": Decimal("0.005"),
    "perplexity": Decimal("0.005"),
    "firecrawl": Decimal(0),
}
_PER_EXTRA_RESULT = Decimal("0.001")
_INCLUDED_RESULTS = 10
_TTL_S = {"5m": 300.0, "1h": 3600.0}


class ExtrasError(ValueError):
    """A malformed plugin, server tool or cache mark: the request gets HTTP 400."""


def _int_option(options: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ExtrasError(f"{name} must be an integer from {low} to {high}")
    return value


def plan_web_search(
    body: dict[str, Any], model: ModelInfo, requested_id: str, searches_wanted: int | None
) -> WebSearchPlan | None:
    """The search a request asks for (plugin, ``:online``, or server tool), or None."""
    options: dict[str, Any] | None = None
    tool = False
    plugins = body.get("plugins")
    for plugin in plugins if isinstance(plugins, list) else ():
        if isinstance(plugin, dict) and plugin.get("id") == "web" and plugin.get("enabled", True):
            options = plugin
    model_id = body.get("model")
    if options is None and isinstance(model_id, str) and model_id.endswith(":online"):
        options = {}
    tools = body.get("tools")
    for entry in tools if isinstance(tools, list) else ():
        if isinstance(entry, dict) and entry.get("type") in WEB_SEARCH_TOOLS:
            parameters = entry.get("parameters")
            options = parameters if isinstance(parameters, dict) else {}
            tool = True
    if options is None:
        return None
    results = _int_option(options, "max_results", 1, 25) or 5
    uses = _int_option(options, "max_uses", 1, 30) or 1
    engine = options.get("engine") or "auto"
    native = model.price("web_search")
    if engine in ("auto", None):
        engine = "native" if native is not None else "exa"
    if engine == "native":
        if native is None:
            raise ExtrasError(f"Native web search is not available for {requested_id}")
        fee = native
    elif engine in _ENGINE_FEES:
        fee = _ENGINE_FEES[engine]
        if engine in ("exa", "parallel"):
            fee += _PER_EXTRA_RESULT * max(0, results - _INCLUDED_RESULTS)
    else:
        raise ExtrasError(f"Unknown web search engine: {engine!r}")
    size = options.get("search_context_size")
    if size is None and isinstance(body.get("web_search_options"), dict):
        size = body["web_search_options"].get("search_context_size")
    size = size or "medium"
    if size not in ("low", "medium", "high"):
        raise ExtrasError("search_context_size must be low, medium or high")
    searches = 1 if not tool else min(searches_wanted or 1, uses)
    return WebSearchPlan(tool, engine, results, searches, fee, size)


def _strip_marks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_marks(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_marks(v) for v in value]
    return value


def _mark_ttl(mark: Any) -> str:
    if not isinstance(mark, dict) or mark.get("type") != "ephemeral":
        raise ExtrasError('cache_control must be {"type": "ephemeral"}')
    ttl = mark.get("ttl", "5m")
    if ttl not in _TTL_S:
        raise ExtrasError("cache_control.ttl must be 5m or 1h")
    return str(ttl)


def _prefixes(messages: list[Any], body: dict[str, Any]) -> list[tuple[Any, int, str]]:
    """(the prompt up to a mark, its tokens, the mark's ttl) for each cache mark, in order:
    the tools' marks first (tool definitions lead the prompt), then the messages'."""
    out: list[tuple[Any, int, str]] = []
    given = body.get("tools")
    tools: list[Any] = given if isinstance(given, list) else []
    for k, tool in enumerate(tools):
        mark = tool.get("cache_control") if isinstance(tool, dict) else None
        if mark is not None:
            head = tools[: k + 1]
            out.append((["tools", head], prompt_tokens([], head), _mark_ttl(mark)))
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            mark = part.get("cache_control") if isinstance(part, dict) else None
            if mark is None:
                continue
            prefix = [*messages[:i], {**message, "content": content[: j + 1]}]
            out.append((prefix, prompt_tokens(prefix), _mark_ttl(mark)))
    top = body.get("cache_control")
    if isinstance(top, dict):
        ttl = top.get("ttl", "5m") if top.get("ttl") in _TTL_S else "5m"
        out.append((list(messages), prompt_tokens(messages), ttl))
    return out


def cache_use(
    state: SimulatorState, model: ModelInfo, messages: list[Any], body: dict[str, Any]
) -> CacheUse:
    """What the request reads from and writes to the simulated prompt cache."""
    if not model.caching:
        return CacheUse()
    if model.caching == "automatic":
        head = messages[:-1]
        prefixes = [(head, prompt_tokens(head), "5m")] if len(messages) > 1 else []
    else:
        prefixes = _prefixes(messages, body)
    now = time.monotonic()
    read = 0
    last_tokens = 0
    last_ttl = "5m"
    keys: list[tuple[str, float]] = []
    for prefix, tokens, ttl in prefixes:
        if tokens < model.cache_min_tokens:
            continue
        digest = hashlib.sha256(
            model.id.encode() + orjson.dumps(_strip_marks(prefix), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        if state.prompt_cache_hit(digest, now):
            read = max(read, tokens)
        keys.append((digest, _TTL_S[ttl]))
        last_tokens, last_ttl = tokens, ttl
    for digest, ttl_s in keys:
        state.prompt_cache_store(digest, now + ttl_s)
    written = 0
    if model.caching == "explicit" and last_tokens > read:
        written = last_tokens - read
    return CacheUse(read=read, written=written, one_hour=last_ttl == "1h")
