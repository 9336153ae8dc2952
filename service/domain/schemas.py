"""Versioned JSON Schemas for structured output: loading, checking, compiling and validating.

The registry loads ``schemas/*.json`` once at start-up and refuses bad files; callers may also
send an inline schema, which is checked the same way and compiled once per distinct text.
Validation findings name JSON pointer paths and the rule broken, never the values the model
wrote, so they are safe for error metadata and logs (see ``Finding``).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from service.domain.json_extract import parse_strict
from service.errors import FieldViolation, InvalidRequestError, Reason

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
"""The dialect every registered schema file declares."""

# Dialects jsonschema_rs ships meta-schemas for. Anything else is refused *before*
# meta-validation, because jsonschema_rs would otherwise fetch an unknown `$schema` URL.
_KNOWN_DIALECTS = frozenset(
    {
        DRAFT_2020_12,
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-04/schema",
    }
)

REGISTERED_NAME = re.compile(r"^([a-z][a-z0-9_]*)_v([0-9]+)$")
"""``<base>_v<N>``: the file name (without ``.json``) of a registered schema."""
INLINE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenRouter's rule for ``response_format.inline_schema.name``."""

DEFAULT_INLINE_MAX_BYTES = 65_536
DEFAULT_INLINE_CACHE_SIZE = 256
DEFAULT_INLINE_CACHE_BYTES = 4 * 1024 * 1024
"""The cache's budget in schema text; a compiled schema's size grows with its text."""

MAX_FINDINGS = 8
"""Findings kept per validation; a reply with thousands of bad items must not cost thousands."""
MAX_FINDING_CHARS = 160
MAX_NAME_CHARS = 40
"""Property names and path segments are cut to this length (they may be the model's text)."""
FINDINGS_SUMMARY_CHARS = 500

# Root keywords that describe the document rather than constrain it. They are left out of what
# goes upstream and into prompts: some providers reject unknown keywords such as `$schema`.
_DOCUMENT_KEYWORDS = ("$schema", "$id")

# Keywords whose value is one subschema, a list of them, or a name -> subschema map; the
# strict-compatibility walk follows all of them so nested objects cannot hide.
_SCHEMA_KEYWORDS = (
    "additionalProperties",
    "items",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentSchema",
)
_SCHEMA_LIST_KEYWORDS = ("anyOf", "allOf", "oneOf", "prefixItems", "items")
_SCHEMA_MAP_KEYWORDS = (
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
)


class SchemaLoadError(Exception):
    """A schema file is unusable; raised at start-up so the gateway does not serve without it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"schema file {path}: {problem}")
        self.path = path
        self.problem = problem


class _SchemaProblemError(Exception):
    """Internal: one problem with a schema, phrased for whoever supplied it."""


# --- Findings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One way a reply misses its schema: a JSON pointer into the reply and the rule broken.

    Redaction: jsonschema_rs messages quote the offending value ('"my secret" is longer than 3
    characters'), so messages are rebuilt from the error *kind* instead: the expected type,
    limit, enum options or pattern (all from the schema) and the JSON type of the value found,
    never the value itself. Property names do appear (in paths and for unexpected or missing
    properties), cut to ``MAX_NAME_CHARS``: they are the structure the caller has to fix.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(root)'}: {self.message}"


@dataclass(frozen=True, slots=True)
class ValidationOutcome:
    """The result of validating one reply.

    ``parsed`` says the text was JSON; ``value`` is then the parsed value (also when it broke the
    schema). ``ok`` means it matched. ``more_findings`` means findings were cut at the cap.
    """

    parsed: bool
    value: Any = None
    findings: tuple[Finding, ...] = ()
    more_findings: bool = False

    @property
    def ok(self) -> bool:
        return self.parsed and not self.findings

    def summary(self, limit: int = FINDINGS_SUMMARY_CHARS) -> str:
        """The findings joined with "; ", at most ``limit`` characters."""
        return summarize_findings(self.findings, more=self.more_findings, limit=limit)


def summarize_findings(
    findings: Sequence[Finding], *, more: bool = False, limit: int = FINDINGS_SUMMARY_CHARS
) -> str:
    text = "; ".join(str(finding) for finding in findings)
    if more:
        text += "; and more"
    return _abbreviate(text, limit)


# --- Registered and inline schemas -------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class RegisteredSchema:
    """A checked, compiled schema: registered (``chat_reply_v1``) or inline (``version`` 0).

    ``schema`` is the document as written and must not be mutated; ``wire_schema`` is what goes
    to OpenRouter and into prompts (document keywords like ``$schema`` removed) and
    ``schema_json`` its compact JSON text. ``strict`` is what OpenRouter is told: registered
    schemas are always strict; an inline schema is strict when the caller asked.
    """

    name: str
    base_name: str
    version: int
    schema: Mapping[str, Any]
    validator: jsonschema_rs.Validator
    strict: bool = True
    inline: bool = False
    wire_schema: Mapping[str, Any] = field(init=False)
    schema_json: str = field(init=False)
    digest: str = field(init=False)
    """sha256 of ``schema_json``: identifies exactly which schema a ledger row used."""

    def __post_init__(self) -> None:
        wire = {key: value for key, value in self.schema.items() if key not in _DOCUMENT_KEYWORDS}
        text = orjson.dumps(wire).decode()
        # frozen: derived fields are set once here, through object.__setattr__.
        object.__setattr__(self, "wire_schema", wire)
        object.__setattr__(self, "schema_json", text)
        object.__setattr__(self, "digest", hashlib.sha256(text.encode()).hexdigest())

    def validate(self, text: str) -> ValidationOutcome:
        """Parse ``text`` as strict JSON and validate it."""
        ok, value, problem = parse_strict(text)
        if not ok:
            return ValidationOutcome(parsed=False, findings=(Finding("", problem),))
        return self.validate_value(value)

    def validate_value(self, value: Any) -> ValidationOutcome:
        """Validate an already parsed JSON value."""
        if self.validator.is_valid(value):
            return ValidationOutcome(parsed=True, value=value)
        findings: list[Finding] = []
        more = False
        for error in self.validator.iter_errors(value):
            if len(findings) == MAX_FINDINGS:
                more = True
                break
            findings.append(Finding(_pointer(error.instance_path), _describe(error)))
        return ValidationOutcome(
            parsed=True, value=value, findings=tuple(findings), more_findings=more
        )


class SchemaRegistry:
    """The schemas callers can name, plus a bounded cache of compiled inline schemas.

    Built once in ``main()`` (``SchemaRegistry.load(path)``) and passed down; it holds no
    global state. Safe to share across tasks of one event loop.
    """

    def __init__(
        self,
        schemas: Mapping[str, RegisteredSchema] | None = None,
        *,
        inline_cache_size: int = DEFAULT_INLINE_CACHE_SIZE,
        inline_cache_bytes: int = DEFAULT_INLINE_CACHE_BYTES,
    ) -> None:
        self._schemas = dict(schemas or {})
        self._inline = InlineSchemaCache(inline_cache_size, max_bytes=inline_cache_bytes)

    @classmethod
    def load(
        cls, directory: Path | str, *, inline_cache_size: int = DEFAULT_INLINE_CACHE_SIZE
    ) -> SchemaRegistry:
        """Load every ``*.json`` in ``directory``; any bad file raises ``SchemaLoadError``."""
        root = Path(directory)
        if not root.is_dir():
            raise SchemaLoadError(root, "not a directory")
        schemas: dict[str, RegisteredSchema] = {}
        for path in sorted(root.glob("*.json")):
            schemas[path.stem] = _load_file(path)
        return cls(schemas, inline_cache_size=inline_cache_size)

    def replace(self, loaded: SchemaRegistry) -> None:
        """Take ``loaded``'s registered schemas in one step (a reload); calls already running
        keep the schema they resolved, and the inline cache stays."""
        self._schemas = loaded._schemas

    def get(self, name: str) -> RegisteredSchema:
        """The registered schema of that exact name (version included)."""
        schema = self._schemas.get(name)
        if schema is None:
            known = ", ".join(self.names()) or "none"
            description = f"unknown schema {_abbreviate(name, 80)!r}; known: {known}"
            raise InvalidRequestError(
                f"schema_name: {description}",
                [FieldViolation("schema_name", description)],
                reason=Reason.UNKNOWN_SCHEMA,
            )
        return schema

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._schemas))

    def __contains__(self, name: object) -> bool:
        return name in self._schemas

    def __len__(self) -> int:
        return len(self._schemas)

    @property
    def inline_cache(self) -> InlineSchemaCache:
        return self._inline

    def compile_inline(
        self,
        name: str,
        schema_text: str,
        strict: bool,
        *,
        max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
    ) -> RegisteredSchema:
        """Check and compile a caller's own schema, reusing an earlier compile of the same text.

        Each problem is an ``InvalidRequestError`` naming ``inline_schema.name`` or
        ``inline_schema.schema_json``. With ``strict`` false the strict-compatibility check is
        skipped (OpenRouter is then sent ``strict: false``).
        """
        if not INLINE_NAME.match(name):
            raise InvalidRequestError.for_field(
                "inline_schema.name", "must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'"
            )
        # Characters never outnumber UTF-8 bytes, so a long text is refused before encoding it.
        size = len(schema_text) if len(schema_text) > max_bytes else len(schema_text.encode())
        if size > max_bytes:
            raise InvalidRequestError.for_field(
                "inline_schema.schema_json", f"is {size} bytes, more than the limit of {max_bytes}"
            )
        if not schema_text.strip():
            raise InvalidRequestError.for_field("inline_schema.schema_json", "is empty")
        key = (hashlib.sha256(schema_text.encode()).digest(), name, strict)
        cached = self._inline.get(key)
        if cached is not None:
            return cached
        ok, document, problem = parse_strict(schema_text)
        try:
            if not ok:
                raise _SchemaProblemError(problem)
            validator = _check_and_compile(
                document, strict=strict, dialects=_KNOWN_DIALECTS, require_dialect=False
            )
        except _SchemaProblemError as exc:
            raise InvalidRequestError.for_field("inline_schema.schema_json", str(exc)) from None
        compiled = RegisteredSchema(
            name=name,
            base_name=name,
            version=0,
            schema=document,
            validator=validator,
            strict=strict,
            inline=True,
        )
        self._inline.put(key, compiled, size=size)
        return compiled


class InlineSchemaCache:
    """A small LRU of compiled inline schemas; recompiling a schema costs far more than a lookup.

    Bounded twice: ``capacity`` entries and ``max_bytes`` of schema text in all (keys are a
    digest, a checked name and a flag). Only schemas that compiled are ever put in, so a
    caller sending broken or ever-different schemas cannot fill it with anything but valid
    entries, and evicts the oldest.
    """

    def __init__(self, capacity: int, *, max_bytes: int = DEFAULT_INLINE_CACHE_BYTES) -> None:
        if capacity < 1 or max_bytes < 1:
            raise ValueError("inline schema cache capacity and bytes must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[bytes, str, bool], tuple[RegisteredSchema, int]] = (
            OrderedDict()
        )

    def get(self, key: tuple[bytes, str, bool]) -> RegisteredSchema | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple[bytes, str, bool], entry: RegisteredSchema, *, size: int) -> None:
        """``size``: the schema's text in bytes, what the entry costs against ``max_bytes``."""
        if size > self.max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.bytes -= previous[1]
        self._entries[key] = (entry, size)
        self.bytes += size
        while len(self._entries) > self.capacity or self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._entries)


# --- Checking and compiling ----------------------------------------------------------------


def _load_file(path: Path) -> RegisteredSchema:
    match = REGISTERED_NAME.match(path.stem)
    if match is None:
        raise SchemaLoadError(
            path,
            f"file name {path.stem!r} must match {REGISTERED_NAME.pattern} "
            "(lower-case base name, then _v and a version number)",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaLoadError(path, f"cannot be read: {exc}") from exc
    ok, document, problem = parse_strict(text)
    try:
        if not ok:
            raise _SchemaProblemError(problem)
        validator = _check_and_compile(
            document, strict=True, dialects=frozenset({DRAFT_2020_12}), require_dialect=True
        )
    except _SchemaProblemError as exc:
        raise SchemaLoadError(path, str(exc)) from None
    return RegisteredSchema(
        name=path.stem,
        base_name=match.group(1),
        version=int(match.group(2)),
        schema=document,
        validator=validator,
    )


def _check_and_compile(
    document: Any, *, strict: bool, dialects: frozenset[str], require_dialect: bool
) -> jsonschema_rs.Validator:
    """The compiled validator for ``document``, or ``_SchemaProblemError`` saying what is wrong."""
    if not isinstance(document, dict):
        raise _SchemaProblemError("a schema must be a JSON object")
    dialect = document.get("$schema")
    if dialect is None and require_dialect:
        raise _SchemaProblemError(f'must declare "$schema": "{DRAFT_2020_12}"')
    if dialect is not None and (
        not isinstance(dialect, str) or dialect.rstrip("#") not in dialects
    ):
        raise _SchemaProblemError(
            f"unsupported $schema {_abbreviate(str(dialect), 80)!r}; use {DRAFT_2020_12!r}"
        )
    try:
        jsonschema_rs.meta.validate(document)
    except jsonschema_rs.ValidationError as exc:
        where = _pointer(exc.instance_path) or "the root"
        raise _SchemaProblemError(
            f"not a valid JSON Schema: at {where}: {_abbreviate(exc.message, 200)}"
        ) from None
    except jsonschema_rs.ReferencingError as exc:
        raise _SchemaProblemError(f"not a valid JSON Schema: {_first_line(str(exc))}") from None
    if strict:
        problem = strict_problem(document)
        if problem is not None:
            raise _SchemaProblemError(problem)
    try:
        # offline: a `$ref` to a URL must never make the gateway fetch it (SSRF), and a
        # registered schema must not depend on the network to start.
        return jsonschema_rs.validator_for(document, offline=True)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise _SchemaProblemError(f"cannot be compiled: {_first_line(str(exc))}") from None


def strict_problem(document: Mapping[str, Any]) -> str | None:
    """The first reason ``document`` is not strict-compatible, or None.

    Strict structured outputs (OpenAI's rules, which OpenRouter passes on) need every object
    schema, at any depth, to set ``additionalProperties: false`` and to list every property
    in ``required``; optional values are written as nullable types instead.
    """
    for pointer, node in _subschemas(document):
        if not _is_object_schema(node):
            continue
        where = pointer or "the root"
        if node.get("additionalProperties") is not False:
            return f"object at {where} lacks additionalProperties: false"
        properties = node.get("properties", {})
        required = node.get("required", [])
        if isinstance(properties, dict) and isinstance(required, list):
            missing = [name for name in properties if name not in required]
            if missing:
                listed = ", ".join(repr(name) for name in missing[:5])
                return (
                    f"object at {where} does not list {listed} in required "
                    "(strict schemas require every property; make optional values nullable)"
                )
    return None


def _is_object_schema(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind):
        return True
    return kind is None and "properties" in node


def _subschemas(document: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every (pointer, subschema) in document order; iterative, so deep nesting cannot
    exhaust the Python stack."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        pointer, node = stack.pop()
        if not isinstance(node, dict):
            continue  # boolean schemas and malformed values (meta-validation caught those)
        yield pointer, node
        children: list[tuple[str, Any]] = []
        for keyword in _SCHEMA_KEYWORDS:
            if isinstance(node.get(keyword), dict):
                children.append((f"{pointer}/{_escape(keyword)}", node[keyword]))
        for keyword in _SCHEMA_LIST_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, list):
                children.extend(
                    (f"{pointer}/{_escape(keyword)}/{index}", item)
                    for index, item in enumerate(value)
                )
        for keyword in _SCHEMA_MAP_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, dict):
                children.extend(
                    (f"{pointer}/{_escape(keyword)}/{_escape(key)}", item)
                    for key, item in value.items()
                )
        stack.extend(reversed(children))


# --- Redacted messages ---------------------------------------------------------------------

_K = jsonschema_rs.ValidationErrorKind


def _describe(error: jsonschema_rs.ValidationError) -> str:
    """A message for ``error`` that names the rule, never the value (see ``Finding``)."""
    got = _json_type(error.instance)
    match error.kind:
        case _K.Type(types=types):
            message = f"expected {' or '.join(types)}, got {got}"
        case _K.Required(property=name):
            message = f"missing required property {_name(name)}"
        case _K.AdditionalProperties(unexpected=names) | _K.UnevaluatedProperties(unexpected=names):
            listed = ", ".join(_name(name) for name in names[:5])
            message = f"unexpected propert{'y' if len(names) == 1 else 'ies'} {listed}"
        case _K.Enum(options=options):
            message = f"must be one of {_abbreviate(_compact(options), 100)}"
        case _K.Constant(expected_value=expected):
            message = f"must equal {_abbreviate(_compact(expected), 100)}"
        case _K.MinLength(limit=limit):
            message = f"string shorter than {limit} characters"
        case _K.MaxLength(limit=limit):
            message = f"string longer than {limit} characters"
        case _K.MinItems(limit=limit):
            message = f"array has fewer than {limit} items"
        case _K.MaxItems(limit=limit):
            message = f"array has more than {limit} items"
        case _K.MinProperties(limit=limit):
            message = f"object has fewer than {limit} properties"
        case _K.MaxProperties(limit=limit):
            message = f"object has more than {limit} properties"
        case _K.Minimum(limit=limit):
            message = f"number below the minimum {limit}"
        case _K.Maximum(limit=limit):
            message = f"number above the maximum {limit}"
        case _K.ExclusiveMinimum(limit=limit):
            message = f"number not above {limit}"
        case _K.ExclusiveMaximum(limit=limit):
            message = f"number not below {limit}"
        case _K.MultipleOf(multiple_of=step):
            message = f"number not a multiple of {step}"
        case _K.Pattern(pattern=pattern):
            message = f"string does not match the pattern {_abbreviate(pattern, 80)}"
        case _K.Format(format=fmt):
            message = f"string is not a valid {fmt}"
        case _K.UniqueItems():
            message = "array items are not unique"
        case _K.Contains():
            message = "no array item matches 'contains'"
        case _K.AnyOf() | _K.OneOfNotValid():
            message = f"{got} matches none of the allowed alternatives"
        case _K.OneOfMultipleValid():
            message = f"{got} matches more than one alternative of 'oneOf'"
        case _K.Not():
            message = f"{got} matches a schema it must not match"
        case _K.FalseSchema():
            message = _false_schema_message(error.schema_path, got)
        case _K.PropertyNames():
            message = "a property name breaks 'propertyNames'"
        case _:
            message = f"{got} fails the {error.kind.name!r} rule"
    return _abbreviate(message, MAX_FINDING_CHARS)


def _false_schema_message(schema_path: Sequence[str | int], got: str) -> str:
    # `additionalProperties: false` without `properties` reports each extra key as a
    # false-schema failure at the key's own path.
    keyword = schema_path[-1] if schema_path else ""
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        return "unexpected property"
    if keyword in ("items", "additionalItems", "unevaluatedItems"):
        return "unexpected array item"
    return f"no {got} is allowed here"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _pointer(path: Sequence[str | int]) -> str:
    """RFC 6901 pointer; segments (possibly the model's own keys) are cut to MAX_NAME_CHARS."""
    return "".join(f"/{_escape(_abbreviate(str(part), MAX_NAME_CHARS))}" for part in path)


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def _name(name: str) -> str:
    return repr(_abbreviate(name, MAX_NAME_CHARS))


def _compact(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def _abbreviate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(text: str) -> str:
    return _abbreviate(text.strip().splitlines()[0] if text.strip() else text, 200)
