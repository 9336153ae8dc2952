"""What a request needs of a model, checked against the catalog before anything goes upstream.

A part the model cannot read, or an output it cannot write, would otherwise be refused by
OpenRouter after a network round trip (or, worse, ignored): the gateway refuses it first with
FAILED_PRECONDITION / UNSUPPORTED_FEATURE naming the field and the model. Every candidate
(the model and its fallbacks) must qualify, since any of them may serve.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.domain.completion import (
    PART_MODALITY,
    CompletionRequest,
    FilePart,
    Modality,
    PdfEngine,
    ResponseFormatKind,
)
from service.domain.models import ModelInfo
from service.domain.server_tools import WebSearchEngine, WebSearchMode
from service.errors import UnsupportedFeatureError


def _refuse(field: str, model: ModelInfo, what: str, **metadata: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"{field}: model '{model.id}' {what}",
        metadata={"field": field, "model": model.id, **metadata},
    )


def json_mode(request: CompletionRequest) -> bool:
    """The caller asked for JSON mode (``response_format: json_object``) on a chat RPC."""
    fmt = request.response_format
    return fmt is not None and fmt.kind is ResponseFormatKind.JSON_OBJECT


def check_capabilities(request: CompletionRequest, candidates: Sequence[ModelInfo]) -> None:
    """Raise ``UnsupportedFeatureError`` for the first need a candidate does not meet."""
    for k, model in enumerate(candidates):
        if model.makes_embeddings:
            field = "model" if k == 0 else f"fallback_models[{k - 1}]"
            raise _refuse(field, model, "is an embedding model: call Embed")
    if request.reasoning is not None and request.reasoning.wanted:
        for model in candidates:
            if not model.supports_reasoning:
                raise _refuse("reasoning", model, "does not reason")
    for modality in request.output_modalities:
        for model in candidates:
            if not model.makes(modality):
                raise _refuse(
                    "output_modalities",
                    model,
                    f"does not answer with {modality.value}",
                    modality=modality.value,
                )
    needs = [("logprobs", request.logprobs), ("top_logprobs", request.top_logprobs is not None)]
    for parameter, asked in needs:
        for model in candidates if asked else ():
            if parameter not in model.supported_parameters:
                raise _refuse(parameter, model, f"does not support {parameter}")
    search = request.web_search
    if search is not None:
        for model in candidates:
            if search.mode is WebSearchMode.TOOL and not model.supports_tools:
                raise _refuse("web_search.mode", model, "cannot call tools (server-tool search)")
            if search.engine is WebSearchEngine.NATIVE and model.ceiling.web_search is None:
                raise _refuse("web_search.engine", model, "has no native web search")
    if json_mode(request):
        for model in candidates:
            if not model.supports_response_format:
                raise _refuse("response_format", model, "has no JSON mode (response_format)")
    native_pdf = (
        request.file_parser is not None and request.file_parser.pdf_engine is PdfEngine.NATIVE
    )
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            modality = PART_MODALITY[type(part)]
            if modality is Modality.TEXT:
                continue
            # Files go to any model: OpenRouter parses documents for models that cannot read
            # them, unless the caller asked for the model itself to read them.
            if isinstance(part, FilePart) and not native_pdf:
                continue
            for model in candidates:
                if not model.takes(modality):
                    raise _refuse(
                        f"messages[{i}].parts[{j}]",
                        model,
                        f"does not take {modality.value} input",
                        modality=modality.value,
                    )
