"""Protobuf <-> domain conversion of the Embed RPC."""

from __future__ import annotations

from llmgateway.v1 import completion_service_pb2 as pb

from service.api.convert import parts, provider_preferences, usage
from service.domain.embeddings import (
    EmbeddingEncoding,
    EmbeddingInput,
    EmbeddingRequest,
    Embeddings,
)
from service.errors import FieldViolation

_ENCODINGS: dict[int, EmbeddingEncoding] = {
    pb.EMBEDDING_ENCODING_UNSPECIFIED: EmbeddingEncoding.FLOAT,
    pb.EMBEDDING_ENCODING_FLOAT: EmbeddingEncoding.FLOAT,
    pb.EMBEDDING_ENCODING_BASE64: EmbeddingEncoding.BASE64,
}


def embedding_request(message: pb.EmbedRequest) -> EmbeddingRequest:
    """The domain request as the caller sent it (values are checked in the domain)."""
    violations: list[FieldViolation] = []
    inputs = tuple(
        EmbeddingInput(item.text, parts(item.parts, f"inputs[{i}].parts", violations))
        for i, item in enumerate(message.inputs)
    )
    encoding = _ENCODINGS.get(message.encoding)
    if encoding is None:
        violations.append(FieldViolation("encoding", "is not a known EmbeddingEncoding"))
        encoding = EmbeddingEncoding.FLOAT
    return EmbeddingRequest(
        model=message.model,
        inputs=inputs,
        dimensions=message.dimensions if message.HasField("dimensions") else None,
        encoding=encoding,
        input_type=message.input_type,
        provider=provider_preferences(message, violations),
        decode_violations=tuple(violations),
    )


def embed_response(result: Embeddings, encoding: EmbeddingEncoding) -> pb.EmbedResponse:
    response = pb.EmbedResponse(
        id=result.id,
        model=result.model,
        provider=result.provider,
        dimensions=result.dimensions,
        usage=usage(result.usage),
    )
    embeddings = response.embeddings
    if encoding is EmbeddingEncoding.BASE64:
        for vector in result.vectors:
            embeddings.add(index=vector.index, data=vector.little_endian_bytes())
    else:
        for vector in result.vectors:
            # extend() from the array reads the float32 values without a list in between.
            embeddings.add(index=vector.index).values.extend(vector.values)
    return response
