"""Schema registry: start-up checks, inline schemas, redacted findings and the inline cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.domain.schemas import (
    MAX_FINDINGS,
    RegisteredSchema,
    SchemaLoadError,
    SchemaRegistry,
    strict_problem,
)
from service.errors import InvalidRequestError

SHIPPED = Path(__file__).resolve().parents[2] / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _strict_object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


def _write(directory: Path, name: str, document: Any) -> Path:
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def _load_one(tmp_path: Path, name: str, document: Any) -> SchemaRegistry:
    _write(tmp_path, name, document)
    return SchemaRegistry.load(tmp_path)


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(SHIPPED)


@pytest.fixture(scope="module")
def chat_reply(registry: SchemaRegistry) -> RegisteredSchema:
    return registry.get("chat_reply_v1")


# --- shipped schemas ---------------------------------------------------------------------


def test_shipped_schemas_load(registry: SchemaRegistry) -> None:
    assert registry.names() == ("chat_reply_v1", "chat_ui_payload_v1")
    reply = registry.get("chat_reply_v1")
    assert (reply.name, reply.base_name, reply.version) == ("chat_reply_v1", "chat_reply", 1)
    assert reply.strict
    assert not reply.inline
    assert reply.schema["$schema"] == DRAFT
    assert "$schema" not in reply.wire_schema
    assert json.loads(reply.schema_json) == dict(reply.wire_schema)
    assert len(reply.digest) == 64


def test_chat_reply_accepts_a_conforming_reply(chat_reply: RegisteredSchema) -> None:
    text = '{"answer":"hi","followUps":["and?"],"safety":{"flagged":false,"reason":null}}'
    outcome = chat_reply.validate(text)
    assert outcome.ok
    assert outcome.value["answer"] == "hi"


def test_chat_ui_payload_needs_a_bullet(registry: SchemaRegistry) -> None:
    payload = registry.get("chat_ui_payload_v1")
    assert payload.validate('{"title":"t","bullets":["one"]}').ok
    outcome = payload.validate('{"title":"t","bullets":[]}')
    assert not outcome.ok
    assert [str(f) for f in outcome.findings] == ["/bullets: array has fewer than 1 items"]


def test_unknown_name_is_an_invalid_argument_naming_the_field(registry: SchemaRegistry) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        registry.get("chat_reply_v9")
    error = caught.value
    assert error.reason == "UNKNOWN_SCHEMA"
    assert error.violations[0].field == "schema_name"
    assert "unknown schema 'chat_reply_v9'" in error.message
    assert "chat_reply_v1, chat_ui_payload_v1" in error.message


# --- start-up rejections -------------------------------------------------------------------


def test_rejects_a_file_that_is_not_json(tmp_path: Path) -> None:
    with pytest.raises(SchemaLoadError) as caught:
        _load_one(tmp_path, "broken_v1.json", '{"type": "object",')
    assert caught.value.path.name == "broken_v1.json"
    assert "broken_v1.json" in str(caught.value)
    assert "not valid JSON" in str(caught.value)
    assert "line 1 column" in str(caught.value)


def test_rejects_an_invalid_json_schema(tmp_path: Path) -> None:
    with pytest.raises(SchemaLoadError) as caught:
        _load_one(tmp_path, "nope_v1.json", {"$schema": DRAFT, "type": "nope"})
    assert "nope_v1.json" in str(caught.value)
    assert "not a valid JSON Schema: at /type" in caught.value.problem


def test_rejects_a_missing_additional_properties(tmp_path: Path) -> None:
    document = {"$schema": DRAFT, **_strict_object({"a": {"type": "string"}})}
    del document["additionalProperties"]
    with pytest.raises(SchemaLoadError) as caught:
        _load_one(tmp_path, "open_v1.json", document)
    assert caught.value.problem == "object at the root lacks additionalProperties: false"


def test_rejects_a_property_that_is_not_required(tmp_path: Path) -> None:
    document = {
        "$schema": DRAFT,
        **_strict_object({"a": {"type": "string"}, "b": {"type": "string"}}),
    }
    document["required"] = ["a"]
    with pytest.raises(SchemaLoadError) as caught:
        _load_one(tmp_path, "optional_v1.json", document)
    assert "object at the root does not list 'b' in required" in caught.value.problem


@pytest.mark.parametrize(
    ("document", "where"),
    [
        pytest.param(
            _strict_object({"inner": {"type": "object", "properties": {}}}),
            "/properties/inner lacks additionalProperties",
            id="nested-property",
        ),
        pytest.param(
            _strict_object(
                {"list": {"type": "array", "items": {"type": "object", "properties": {}}}}
            ),
            "/properties/list/items lacks additionalProperties",
            id="array-items",
        ),
        pytest.param(
            _strict_object(
                {"ref": {"$ref": "#/$defs/thing"}},
                **{"$defs": {"thing": {"type": "object", "properties": {"x": {}}}}},
            ),
            "/$defs/thing lacks additionalProperties",
            id="defs",
        ),
        pytest.param(
            _strict_object(
                {
                    "either": {
                        "anyOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "properties": {"x": {}, "y": {}},
                                "required": ["x"],
                                "additionalProperties": False,
                            },
                        ]
                    }
                }
            ),
            "/properties/either/anyOf/1 does not list 'y' in required",
            id="any-of",
        ),
        pytest.param(
            _strict_object({"typed": {"type": ["object", "null"], "properties": {"x": {}}}}),
            "/properties/typed lacks additionalProperties",
            id="nullable-object",
        ),
    ],
)
def test_rejects_nested_strict_violations(
    tmp_path: Path, document: dict[str, Any], where: str
) -> None:
    with pytest.raises(SchemaLoadError) as caught:
        _load_one(tmp_path, "nested_v1.json", {"$schema": DRAFT, **document})
    assert where in caught.value.problem


@pytest.mark.parametrize(
    "file_name", ["ChatReply_v1.json", "chat_reply.json", "chat-reply_v1.json", "chat_reply_v.json"]
)
def test_rejects_a_bad_file_name(tmp_path: Path, file_name: str) -> None:
    document = {"$schema": DRAFT, **_strict_object({"a": {"type": "string"}})}
    with pytest.raises(SchemaLoadError) as caught:
        _load_one(tmp_path, file_name, document)
    assert file_name in str(caught.value)
    assert "must match" in caught.value.problem


def test_rejects_a_file_without_the_2020_12_dialect(tmp_path: Path) -> None:
    document = _strict_object({"a": {"type": "string"}})
    with pytest.raises(SchemaLoadError) as caught:
        _load_one(tmp_path, "plain_v1.json", document)
    assert "$schema" in caught.value.problem


def test_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SchemaLoadError, match="not a directory"):
        SchemaRegistry.load(tmp_path / "absent")


def test_ignores_files_that_are_not_json(tmp_path: Path) -> None:
    _write(tmp_path, "README.md", "# notes")
    _write(tmp_path, "thing_v2.json", {"$schema": DRAFT, **_strict_object({"a": {}})})
    registry = SchemaRegistry.load(tmp_path)
    assert registry.names() == ("thing_v2",)
    assert registry.get("thing_v2").version == 2


def test_strict_walk_survives_deep_nesting() -> None:
    document: dict[str, Any] = {"type": "string"}
    for _ in range(3000):
        document = {"type": "array", "items": document}
    assert strict_problem(document) is None


# --- inline schemas ------------------------------------------------------------------------


def _inline_error(text: str, *, name: str = "answer", strict: bool = True) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        SchemaRegistry().compile_inline(name, text, strict)
    return caught.value


def test_inline_schema_compiles_and_validates() -> None:
    text = json.dumps(_strict_object({"n": {"type": "integer"}}))
    schema = SchemaRegistry().compile_inline("count-1", text, True)
    assert (schema.name, schema.version, schema.inline, schema.strict) == ("count-1", 0, True, True)
    assert schema.validate('{"n": 3}').ok
    assert not schema.validate('{"n": "3"}').ok


def test_inline_not_json_names_field_and_position() -> None:
    error = _inline_error('{"type": tru}')
    assert error.violations[0].field == "inline_schema.schema_json"
    assert "not valid JSON" in error.message
    assert "line 1 column" in error.message


def test_inline_invalid_schema() -> None:
    error = _inline_error('{"type": "nope"}')
    assert error.violations[0].field == "inline_schema.schema_json"
    assert "not a valid JSON Schema: at /type" in error.message


def test_inline_strict_violation_and_strict_false_skips_it() -> None:
    text = json.dumps({"type": "object", "properties": {"x": {"type": "string"}}})
    error = _inline_error(text)
    assert "object at the root lacks additionalProperties: false" in error.message
    schema = SchemaRegistry().compile_inline("loose", text, False)
    assert not schema.strict
    assert schema.validate('{"extra": 1}').ok


def test_inline_size_limit() -> None:
    text = json.dumps(_strict_object({"x": {"type": "string", "description": "é" * 600}}))
    with pytest.raises(InvalidRequestError) as caught:
        SchemaRegistry().compile_inline("big", text, True, max_bytes=1000)
    assert caught.value.violations[0].field == "inline_schema.schema_json"
    assert "more than the limit of 1000" in caught.value.message


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "ünïcode", "dot.ted"])
def test_inline_bad_name(name: str) -> None:
    error = _inline_error('{"type": "string"}', name=name)
    assert error.violations[0].field == "inline_schema.name"
    assert "1 to 64 characters" in error.message


def test_inline_accepts_a_64_character_name() -> None:
    assert SchemaRegistry().compile_inline("a-_" * 21 + "z", '{"type": "string"}', True)


@pytest.mark.parametrize(
    "dialect",
    [DRAFT, f"{DRAFT}#", "http://json-schema.org/draft-07/schema#", None],
)
def test_inline_accepts_known_dialects(dialect: str | None) -> None:
    document: dict[str, Any] = {"type": "string"}
    if dialect is not None:
        document["$schema"] = dialect
    schema = SchemaRegistry().compile_inline("d", json.dumps(document), True)
    assert schema.validate('"x"').ok
    assert "$schema" not in schema.wire_schema


def test_inline_empty_text() -> None:
    assert "is empty" in _inline_error("  ").message


def test_inline_unknown_dialect_is_refused_without_fetching() -> None:
    error = _inline_error('{"$schema": "http://127.0.0.1:9/meta", "type": "string"}')
    assert "unsupported $schema" in error.message


def test_inline_remote_ref_is_not_fetched() -> None:
    error = _inline_error('{"$ref": "http://127.0.0.1:9/thing.json"}')
    assert "cannot be compiled" in error.message
    assert "Retrieval is disabled" in error.message


def test_inline_cache_reuses_compiled_schemas_and_evicts_the_oldest() -> None:
    registry = SchemaRegistry(inline_cache_size=2)
    texts = [json.dumps({"type": "string", "maxLength": n}) for n in range(3)]
    first = registry.compile_inline("s", texts[0], True)
    assert registry.compile_inline("s", texts[0], True) is first
    cache = registry.inline_cache
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    # Name and strictness are part of the key: they change what OpenRouter is sent.
    assert registry.compile_inline("t", texts[0], True) is not first
    assert registry.compile_inline("s", texts[0], False) is not first
    assert len(cache) == 2
    registry.compile_inline("s", texts[0], True)  # evicted by the two above: compiled again
    assert cache.misses == 4
    registry.compile_inline("s", texts[1], True)
    registry.compile_inline("s", texts[2], True)
    assert len(cache) == 2


def test_inline_cache_is_bounded_in_bytes() -> None:
    # 40 distinct ~10 kB schemas against a 32 kB budget: at most three are kept, ever.
    registry = SchemaRegistry(inline_cache_bytes=32_000)
    cache = registry.inline_cache
    for n in range(40):
        text = json.dumps({"type": "object", "description": f"{n:05d}" + "x" * 10_000})
        registry.compile_inline("s", text, False)
        assert cache.bytes <= 32_000
    assert len(cache) == 3
    assert cache.bytes == 3 * len(text)


def test_inline_failures_are_not_cached() -> None:
    registry = SchemaRegistry()
    for _ in range(2):
        with pytest.raises(InvalidRequestError):
            registry.compile_inline("x", '{"type": "nope"}', True)
    assert len(registry.inline_cache) == 0


# --- findings ------------------------------------------------------------------------------

SECRET = "hunter2-very-secret"


def test_findings_never_quote_the_reply(chat_reply: RegisteredSchema) -> None:
    reply = {
        "answer": 42,
        "followUps": [SECRET, 7],
        "safety": {"flagged": SECRET, "reason": None, "leak": SECRET},
        "extra": SECRET,
    }
    outcome = chat_reply.validate(json.dumps(reply))
    assert outcome.parsed
    assert not outcome.ok
    rendered = [str(finding) for finding in outcome.findings]
    assert rendered == [
        "/answer: expected string, got integer",
        "/followUps/1: expected string, got integer",
        "/safety/flagged: expected boolean, got string",
        "/safety: unexpected property 'leak'",
        "(root): unexpected property 'extra'",
    ]
    assert SECRET not in outcome.summary()


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        ({"maxLength": 3}, SECRET, "string longer than 3 characters"),
        ({"minLength": 99}, SECRET, "string shorter than 99 characters"),
        ({"enum": ["a", "b"]}, SECRET, 'must be one of ["a","b"]'),
        ({"const": "a"}, SECRET, 'must equal "a"'),
        ({"pattern": "^[0-9]+$"}, SECRET, "string does not match the pattern ^[0-9]+$"),
        ({"not": {"type": "string"}}, SECRET, "string matches a schema it must not match"),
        ({"anyOf": [{"type": "integer"}, {"maxLength": 1}]}, SECRET, "string matches none"),
        ({"maximum": 1}, 123456789, "number above the maximum 1"),
        ({"uniqueItems": True}, [SECRET, SECRET], "array items are not unique"),
        ({"type": "object", "additionalProperties": False}, {SECRET: 1}, "unexpected property"),
        ({"required": ["needed"]}, {"a": SECRET}, "missing required property 'needed'"),
    ],
)
def test_each_kind_of_finding_is_redacted(schema: dict[str, Any], value: Any, message: str) -> None:
    compiled = SchemaRegistry().compile_inline("k", json.dumps(schema), False)
    outcome = compiled.validate_value(value)
    assert not outcome.ok
    assert message in outcome.findings[0].message
    assert SECRET not in outcome.findings[0].message
    assert "123456789" not in outcome.findings[0].message


def test_long_keys_are_cut_in_paths_and_messages() -> None:
    key = "k" * 500
    compiled = SchemaRegistry().compile_inline(
        "k", json.dumps({"additionalProperties": {"type": "string"}}), False
    )
    finding = compiled.validate_value({key: 1}).findings[0]
    assert len(finding.path) < 50
    assert finding.path.endswith("…")


def test_findings_are_capped(chat_reply: RegisteredSchema) -> None:
    reply = {"answer": "a", "followUps": list(range(100)), "safety": {"flagged": True}}
    outcome = chat_reply.validate_value(reply)
    assert len(outcome.findings) == MAX_FINDINGS
    assert outcome.more_findings
    summary = outcome.summary(limit=120)
    assert len(summary) <= 120
    assert outcome.summary().endswith("; and more")


def test_not_json_is_a_finding_at_the_root(chat_reply: RegisteredSchema) -> None:
    outcome = chat_reply.validate(f"Sure! {SECRET}")
    assert not outcome.parsed
    assert not outcome.ok
    assert outcome.findings[0].path == ""
    assert outcome.findings[0].message.startswith("not valid JSON")
    assert SECRET not in outcome.summary()


def test_pointer_escapes_slash_and_tilde() -> None:
    compiled = SchemaRegistry().compile_inline(
        "k", json.dumps({"additionalProperties": {"type": "string"}}), False
    )
    assert compiled.validate_value({"a/b~c": 1}).findings[0].path == "/a~1b~0c"
