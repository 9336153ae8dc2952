"""The schema instance generator and the system-prompt schema finder, without HTTP."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from service.simulator.schema_instance import (
    instance_for,
    schema_from_instructions,
    violating_instance,
)

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    {"type": "string", "minLength": 20, "maxLength": 25},
    {"type": "string", "maxLength": 3},
    {"type": "integer", "minimum": 7},
    {"type": "integer", "exclusiveMinimum": 7},
    {"type": "number", "maximum": -2.5},
    {"type": "integer", "exclusiveMaximum": -3},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 3},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 0},
    {"const": "fixed"},
    {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    {"allOf": [{"required": ["x"], "properties": {"x": {"type": "null"}}}, {"required": ["y"]}]},
    {"$ref": "#/definitions/node", "definitions": {"node": {"type": "boolean"}}},
    {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}}
        },
        "$defs": {
            "item": {
                "type": "object",
                "required": ["id", "when", "kind"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "when": {"type": "string", "format": "date-time"},
                    "kind": {"type": ["string", "null"], "enum": ["a", "b"]},
                },
            }
        },
    },
    {"type": "object", "properties": {"optional": {"type": "string"}}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_instance_conforms(schema: dict[str, Any]) -> None:
    assert jsonschema_rs.validator_for(schema).is_valid(instance_for(schema))


@pytest.mark.parametrize("schema", [s for s in SCHEMAS if "const" not in s])
def test_violating_instance_does_not_conform(schema: dict[str, Any]) -> None:
    assert not jsonschema_rs.validator_for(schema).is_valid(violating_instance(schema))


def test_schema_from_instructions_ignores_non_schema_json() -> None:
    texts = ['Example output:\n```json\n{"city": "Paris"}\n```', "no schema here"]
    assert schema_from_instructions(texts) is None
    texts.append('JSON Schema: {"type": "object", "properties": {}} trailing words')
    assert schema_from_instructions(texts) == {"type": "object", "properties": {}}
