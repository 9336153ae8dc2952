"""What an embedding call is: inputs to turn into vectors, and the vectors that come back.

Plain frozen dataclasses, free of protobuf, JSON and HTTP, like ``completion``. An input is
text, or content parts (text and images) embedded together as one vector. Vectors are
float32, as embedding models produce them, and travel as ``array('f')``: a batch of
thousands of dimensions is never a list of Python floats.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from service.domain.completion import Part, TextPart, Usage
from service.domain.providers import ProviderPreferences
from service.errors import FieldViolation


class EmbeddingEncoding(StrEnum):
    """How the caller wants its vectors, which is also what OpenRouter is asked for
    (``encoding_format``): a provider that ignores it still answers, in floats."""

    FLOAT = "float"
    BASE64 = "base64"


@dataclass(frozen=True, slots=True)
class EmbeddingInput:
    """One thing to embed: ``text``, or ``parts`` (never both)."""

    text: str = field(default="", repr=False)
    parts: tuple[Part, ...] = ()

    @property
    def text_chars(self) -> int:
        return len(self.text) + sum(len(p.text) for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """One call to OpenRouter's ``/embeddings``, after validation.

    ``user`` is already the opaque per-end-user value, as in ``CompletionRequest``.
    """

    model: str
    inputs: tuple[EmbeddingInput, ...]
    dimensions: int | None = None
    encoding: EmbeddingEncoding = EmbeddingEncoding.FLOAT
    input_type: str = ""
    """A retrieval hint some models take (``search_query``, ``search_document`` …)."""
    user: str | None = None
    provider: ProviderPreferences | None = None
    """As ``CompletionRequest.provider``: the caller's, then the policy-merged ones."""
    trace_headers: Mapping[str, str] = field(default_factory=dict)
    decode_violations: tuple[FieldViolation, ...] = ()


def little_endian(values: array[float]) -> array[float]:
    """``values`` in little-endian byte order (a copy only on a big-endian machine)."""
    if sys.byteorder == "big":
        values = array("f", values)
        values.byteswap()
    return values


@dataclass(frozen=True, slots=True)
class Vector:
    """One embedding, float32 in the machine's byte order; ``index`` is its input's."""

    index: int
    values: array[float] = field(repr=False)

    def little_endian_bytes(self) -> bytes:
        return little_endian(self.values).tobytes()


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The vectors of one call, in input order, and what it consumed."""

    id: str
    model: str
    provider: str
    vectors: tuple[Vector, ...]
    usage: Usage = field(default_factory=Usage)

    @property
    def dimensions(self) -> int:
        return len(self.vectors[0].values) if self.vectors else 0
