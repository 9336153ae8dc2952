"""Deterministic JSON documents that conform to (or deliberately violate) a JSON Schema.

The generator covers what structured-output schemas use in practice: objects with required
properties, enums/const, string length and common formats, numeric bounds, arrays with
minItems, local ``$ref`` (``#/$defs/...``), ``anyOf``/``oneOf`` (first branch) and ``allOf``.
It does not try to satisfy ``pattern``, ``uniqueItems`` over several equal items, or
``not``; schemas relying on those get a best effort.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

_MAX_DEPTH = 24

_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}


def instance_for(schema: Any) -> Any:
    """A small document valid against `schema` (for the supported keywords)."""
    return _instance(schema, schema if isinstance(schema, Mapping) else {}, 0)


def _instance(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    if not isinstance(schema, Mapping):
        return "example" if schema is not False else None
    if depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return _instance(_resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return _instance(branches[0], root, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        return _instance(_merge(all_of, root), root, depth + 1)
    kind = _primary_type(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "example"


def _primary_type(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        # ["string", "null"] is how strict schemas spell "optional"; prefer the real type.
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def _resolve(root: Mapping[str, Any], ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    node: Any = root
    for raw in ref.lstrip("#").split("/"):
        if not raw:
            continue
        part = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return {}
        node = node[part]
    return node


def _merge(schemas: Iterable[Any], root: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for schema in schemas:
        if isinstance(schema, Mapping) and "$ref" in schema:
            schema = _resolve(root, schema["$ref"])
        if not isinstance(schema, Mapping):
            continue
        merged.update({k: v for k, v in schema.items() if k not in ("properties", "required")})
        properties.update(schema.get("properties") or {})
        required.extend(r for r in schema.get("required") or [] if r not in required)
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _object(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    names = (
        [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
    )
    return {name: _instance(properties.get(name, {}), root, depth + 1) for name in names}


def _array(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> list[Any]:
    min_items = schema.get("minItems")
    max_items = schema.get("maxItems")
    # One item shows the element shape; more only when minItems demands it.
    count = min_items if isinstance(min_items, int) and min_items > 0 else 1
    if isinstance(max_items, int):
        count = min(count, max_items)
    items = schema.get("items", {})
    return [_instance(items, root, depth + 1) for _ in range(count)]


def _string(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    text = _STRING_FORMATS.get(fmt, "example") if isinstance(fmt, str) else "example"
    min_length = schema.get("minLength")
    max_length = schema.get("maxLength")
    if isinstance(min_length, int) and len(text) < min_length:
        text += "x" * (min_length - len(text))
    if isinstance(max_length, int) and len(text) > max_length:
        text = text[:max_length]
    return text


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum")
    exclusive_low = schema.get("exclusiveMinimum")
    high = schema.get("maximum")
    exclusive_high = schema.get("exclusiveMaximum")
    value: float = 0
    if isinstance(low, int | float):
        value = low
    elif isinstance(exclusive_low, int | float):
        value = exclusive_low + 1 if integer else exclusive_low + 0.5
    if isinstance(high, int | float) and value > high:
        value = high
    elif isinstance(exclusive_high, int | float) and value >= exclusive_high:
        value = exclusive_high - 1 if integer else exclusive_high - 0.5
    if integer:
        return int(value)
    return float(value)


def violating_instance(schema: Any) -> Any:
    """A document that parses as JSON but breaks the schema in an obvious way."""
    valid = instance_for(schema)
    if isinstance(valid, dict):
        resolved = _resolve_top(schema)
        required = resolved.get("required") if isinstance(resolved, Mapping) else None
        if isinstance(required, list) and required and valid:
            broken = dict(valid)
            broken.pop(next(iter(valid)))
            broken["unexpected_field"] = "not in the schema"
            return broken
        if valid:
            name = next(iter(valid))
            return {**valid, name: [] if isinstance(valid[name], str) else "wrong type"}
        return ["not", "an", "object"]
    return {"unexpected": "an object where the schema wants something else"}


def _resolve_top(schema: Any) -> Any:
    if isinstance(schema, Mapping) and "$ref" in schema:
        return _resolve(schema, schema["$ref"])
    if isinstance(schema, Mapping) and isinstance(schema.get("allOf"), list):
        return _merge(schema["allOf"], schema)
    return schema


_FENCED_JSON = re.compile(r"```(?:json)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_SCHEMA_MARKER = re.compile(r"JSON\s+Schema\s*:", re.IGNORECASE)
_SCHEMA_KEYS = frozenset({"type", "properties", "$schema", "$defs", "anyOf", "oneOf", "$ref"})


def schema_from_instructions(texts: Iterable[str]) -> dict[str, Any] | None:
    """A JSON Schema embedded in a system prompt, as an instruction-only fallback puts it.

    Looks for a ```json fenced block or a JSON object following "JSON Schema:".
    """
    decoder = json.JSONDecoder()
    for text in texts:
        candidates = [m.group(1) for m in _FENCED_JSON.finditer(text)]
        for marker in _SCHEMA_MARKER.finditer(text):
            start = text.find("{", marker.end())
            if start >= 0:
                candidates.append(text[start:])
        for candidate in candidates:
            try:
                parsed, _ = decoder.raw_decode(candidate.strip())
            except ValueError:
                continue
            if isinstance(parsed, dict) and _SCHEMA_KEYS & parsed.keys():
                return parsed
    return None
