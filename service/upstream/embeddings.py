"""OpenRouter's ``/embeddings`` JSON, both ways: an ``EmbeddingRequest`` -> body, body -> vectors.

Inputs that are all plain text go as a list of strings (the form every provider takes);
a batch with any multimodal input goes as ``[{"content": [parts]}]`` for every input. Vectors
come back as float lists or, when asked, base64 of little-endian float32; either is read, so
a provider that ignores ``encoding_format`` still works.
"""

from __future__ import annotations

import base64
import binascii
from array import array
from collections.abc import Mapping
from typing import Any

import orjson

from service.domain.completion import TextPart, Usage
from service.domain.embeddings import (
    EmbeddingEncoding,
    EmbeddingInput,
    EmbeddingRequest,
    Embeddings,
    Vector,
    little_endian,
)
from service.upstream.errors import protocol_error
from service.upstream.readers import as_int, as_str
from service.upstream.wire import content_part, parse_usage, provider_json


def build_body(request: EmbeddingRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": request.model, "input": _input(request.inputs)}
    if request.encoding is EmbeddingEncoding.BASE64:
        body["encoding_format"] = "base64"
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.input_type:
        body["input_type"] = request.input_type
    if request.user:
        body["user"] = request.user
    provider = provider_json(request.provider)
    if provider:
        body["provider"] = provider
    return body


def encode_body(request: EmbeddingRequest) -> bytes:
    return orjson.dumps(build_body(request))


def _input(inputs: tuple[EmbeddingInput, ...]) -> list[Any]:
    if all(not item.parts for item in inputs):
        return [item.text for item in inputs]
    return [
        {"content": [content_part(p) for p in item.parts] if item.parts else [_text(item.text)]}
        for item in inputs
    ]


def _text(text: str) -> dict[str, Any]:
    return content_part(TextPart(text))


def _vector(index: int, value: object) -> Vector:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise protocol_error("an embedding is not valid base64") from None
        if len(raw) % 4:
            raise protocol_error("an embedding is not a whole number of float32 values")
        values = array("f")
        values.frombytes(raw)
        return Vector(index, little_endian(values))
    if isinstance(value, list):
        try:
            return Vector(index, array("f", value))
        except TypeError:
            raise protocol_error("an embedding holds something other than numbers") from None
    raise protocol_error("an embedding is neither a list of numbers nor base64")


def parse_embeddings(data: Mapping[str, Any], expected: int) -> Embeddings:
    """The answer to a request of ``expected`` inputs: one vector per input, in input order,
    all of one length; anything else is a protocol error (the caller would misfile vectors)."""
    items = data.get("data")
    if not isinstance(items, list) or len(items) != expected:
        raise protocol_error("the embeddings answer does not hold one vector per input")
    vectors: list[Vector | None] = [None] * expected
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise protocol_error("an embedding is not a JSON object")
        raw_index = item.get("index")
        index = as_int(raw_index) if raw_index is not None else position
        if not 0 <= index < expected or vectors[index] is not None:
            raise protocol_error("the embeddings answer has a missing or repeated index")
        vectors[index] = _vector(index, item.get("embedding"))
    ordered = tuple(v for v in vectors if v is not None)
    lengths = {len(v.values) for v in ordered}
    if len(lengths) > 1 or 0 in lengths:
        raise protocol_error("the embeddings answer has empty or mixed-length vectors")
    return Embeddings(
        id=as_str(data.get("id")),
        model=as_str(data.get("model")),
        provider=as_str(data.get("provider")),
        vectors=ordered,
        usage=parse_usage(data.get("usage")) or Usage(),
    )
