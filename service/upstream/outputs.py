"""OpenRouter's outputs beyond text, read from an answer's message or a stream delta:
reasoning blocks, generated images, citations, refusals and log probabilities; and reasoning
blocks written back into the next request.

Anything else an answer carries (a key the contract has no field for, an unknown part,
annotation or reasoning type) is named and counted, never dropped without a word: the
gateway reports it as ``UnsupportedOutput`` in the response and the ledger.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.domain.completion import (
    Annotation,
    Blob,
    FileAnnotation,
    GeneratedImage,
    ImagePart,
    Logprobs,
    MediaSource,
    MediaUrl,
    Part,
    ReasoningDetail,
    ReasoningDetailType,
    TextPart,
    TokenLogprob,
    TopLogprob,
    UrlCitation,
)
from service.upstream.readers import as_dict, as_int, as_str

# Keys of a message or delta that the plain path reads itself (or that carry no output).
_PLAIN_KEYS = frozenset({"role", "content", "reasoning", "tool_calls"})
_DETAIL_TYPES = {kind.value: kind for kind in ReasoningDetailType}


@dataclass(frozen=True, slots=True)
class Extras:
    """What a message or delta carries beyond plain text, reasoning text and tool calls.

    ``content`` is set when the content came as an array of parts (its text parts joined);
    ``unsupported`` names each output the contract cannot carry, once per occurrence.
    """

    reasoning_details: tuple[ReasoningDetail, ...] = ()
    images: tuple[GeneratedImage, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    refusal: str = ""
    logprobs: Logprobs | None = None
    content: str | None = None
    unsupported: tuple[str, ...] = ()

    @property
    def reasoning_text(self) -> str:
        return "".join(detail.readable for detail in self.reasoning_details)


def read_extras(holder: Mapping[str, Any], logprobs: object, where: str) -> Extras | None:
    """The extras of ``holder`` (a ``message`` or ``delta``), None when it has none.

    Runs once per streamed token: the common chunk (role and content) costs a loop over two
    keys and no allocation.
    """
    # Providers fill unused keys with null, "", [] or {}: only a truthy value carries output.
    if not logprobs:
        for key, value in holder.items():
            if value and key not in _PLAIN_KEYS:
                break
        else:
            if type(holder.get("content")) is not list:
                return None
    unsupported: list[str] = []
    details: list[ReasoningDetail] = []
    images: list[GeneratedImage] = []
    annotations: list[Annotation] = []
    refusal = ""
    content: str | None = None
    for key, value in holder.items():
        if key in _PLAIN_KEYS and key != "content":
            continue
        if key == "content":
            if type(value) is list:
                content = _content_parts(value, images, unsupported)
        elif not value:
            continue
        elif key == "reasoning_details":
            details.extend(_details(value, unsupported))
        elif key == "images":
            images.extend(_images(value, unsupported))
        elif key == "annotations":
            annotations.extend(_annotations(value, unsupported))
        elif key == "refusal" and type(value) is str:
            refusal = value
        else:
            unsupported.append(f"{where}.{key}")
    parsed_logprobs = _logprobs(logprobs) if logprobs else None
    if (
        not (details or images or annotations or refusal or parsed_logprobs or unsupported)
        and content is None
    ):
        return None  # e.g. Anthropic's ``reasoning_details: []`` on every delta
    return Extras(
        reasoning_details=tuple(details),
        images=tuple(images),
        annotations=tuple(annotations),
        refusal=refusal,
        logprobs=parsed_logprobs,
        content=content,
        unsupported=tuple(unsupported),
    )


# --- reasoning ---------------------------------------------------------------------------


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _details(raw: object, unsupported: list[str]) -> list[ReasoningDetail]:
    if not isinstance(raw, list):
        unsupported.append("reasoning_details")
        return []
    details = []
    for item in raw:
        entry = as_dict(item)
        kind = _DETAIL_TYPES.get(as_str(entry.get("type")))
        if kind is None:
            unsupported.append(f"reasoning_details.{as_str(entry.get('type')) or 'untyped'}")
            continue
        index = entry.get("index")
        details.append(
            ReasoningDetail(
                type=kind,
                id=_opt_str(entry.get("id")),
                format=_opt_str(entry.get("format")),
                index=index if type(index) is int else None,
                text=_opt_str(entry.get("text")),
                signature=_opt_str(entry.get("signature")),
                summary=_opt_str(entry.get("summary")),
                data=_opt_str(entry.get("data")),
            )
        )
    return details


def detail_json(detail: ReasoningDetail) -> dict[str, Any]:
    """A reasoning block as OpenRouter takes it back: exactly the fields it came with."""
    out: dict[str, Any] = {"type": detail.type.value}
    for key, value in (
        ("text", detail.text),
        ("summary", detail.summary),
        ("data", detail.data),
        ("signature", detail.signature),
        ("id", detail.id),
        ("format", detail.format),
        ("index", detail.index),
    ):
        if value is not None:
            out[key] = value
    return out


# --- images and content parts ------------------------------------------------------------


def _source(url: object) -> MediaSource | None:
    """A data URL decoded to bytes, or an http(s) URL; None when neither."""
    if not isinstance(url, str):
        return None
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        mime = header[5:].removesuffix(";base64")
        if not sep or not header.endswith(";base64") or "/" not in mime:
            return None
        try:
            return Blob(mime, base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            return None
    if url.startswith(("https://", "http://")):
        return MediaUrl(url)
    return None


def _images(raw: object, unsupported: list[str]) -> list[GeneratedImage]:
    images = []
    for item in raw if isinstance(raw, list) else [raw]:
        entry = as_dict(item)
        kind = as_str(entry.get("type")) or "image_url"
        source = _source(as_dict(entry.get("image_url")).get("url"))
        if kind != "image_url" or source is None:
            unsupported.append(f"images.{kind if kind != 'image_url' else 'unreadable'}")
            continue
        index = entry.get("index")
        images.append(GeneratedImage(source, index if type(index) is int else None))
    return images


def _content_parts(raw: list[Any], images: list[GeneratedImage], unsupported: list[str]) -> str:
    """An answer whose content is an array of parts: text joined, images kept."""
    texts = []
    for item in raw:
        entry = as_dict(item)
        kind = as_str(entry.get("type"))
        if kind == "text":
            texts.append(as_str(entry.get("text")))
        elif kind == "image_url" and (source := _source(as_dict(entry.get(kind)).get("url"))):
            images.append(GeneratedImage(source))
        else:
            unsupported.append(f"content.{kind or 'untyped'}")
    return "".join(texts)


# --- annotations -------------------------------------------------------------------------


def _annotations(raw: object, unsupported: list[str]) -> list[Annotation]:
    annotations: list[Annotation] = []
    for item in raw if isinstance(raw, list) else [raw]:
        entry = as_dict(item)
        kind = as_str(entry.get("type"))
        if kind == "url_citation":
            # Chat nests the citation; the Responses API's flat shape is read too.
            cite = as_dict(entry.get("url_citation")) or entry
            url = as_str(cite.get("url"))
            if url:
                annotations.append(
                    UrlCitation(
                        url=url,
                        title=as_str(cite.get("title")),
                        content=as_str(cite.get("content")),
                        start_index=as_int(cite.get("start_index")),
                        end_index=as_int(cite.get("end_index")),
                    )
                )
                continue
        elif kind == "file":
            file = as_dict(entry.get("file"))
            if file.get("hash") is not None or file.get("name") is not None:
                annotations.append(
                    FileAnnotation(
                        hash=as_str(file.get("hash")),
                        name=as_str(file.get("name")),
                        content=_file_content(file.get("content"), unsupported),
                    )
                )
                continue
        unsupported.append(f"annotations.{kind or 'untyped'}")
    return annotations


def _file_content(raw: object, unsupported: list[str]) -> tuple[Part, ...]:
    parts: list[Part] = []
    for item in raw if isinstance(raw, list) else ():
        entry = as_dict(item)
        kind = as_str(entry.get("type"))
        if kind == "text":
            parts.append(TextPart(as_str(entry.get("text"))))
        elif kind == "image_url" and (source := _source(as_dict(entry.get(kind)).get("url"))):
            parts.append(ImagePart(source))
        else:
            unsupported.append(f"annotations.file.content.{kind or 'untyped'}")
    return tuple(parts)


def annotation_json(annotation: Annotation) -> dict[str, Any]:
    """An annotation as OpenRouter sends it (and takes it back on an assistant message)."""
    if isinstance(annotation, UrlCitation):
        return {
            "type": "url_citation",
            "url_citation": {
                "url": annotation.url,
                "title": annotation.title,
                "content": annotation.content,
                "start_index": annotation.start_index,
                "end_index": annotation.end_index,
            },
        }
    content: list[dict[str, Any]] = []
    for part in annotation.content:
        if isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            content.append({"type": "image_url", "image_url": {"url": url_of(part.source)}})
    file = {"hash": annotation.hash, "name": annotation.name, "content": content}
    return {"type": "file", "file": file}


def url_of(source: MediaSource) -> str:
    """A part's media as OpenRouter takes it: the URL, or the bytes as a base64 data URL."""
    if isinstance(source, MediaUrl):
        return source.url
    return f"data:{source.mime_type};base64,{base64.b64encode(source.data).decode('ascii')}"


# --- log probabilities -------------------------------------------------------------------


def _logprob(value: object) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def _token_bytes(value: object) -> bytes | None:
    if not isinstance(value, list):
        return None
    try:
        return bytes(b for b in value if isinstance(b, int))
    except ValueError:
        return None


def _entries(raw: object) -> list[Mapping[str, Any]]:
    return [as_dict(item) for item in raw] if isinstance(raw, list) else []


def _tokens(raw: object) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(
            token=as_str(entry.get("token")),
            logprob=_logprob(entry.get("logprob")),
            bytes=_token_bytes(entry.get("bytes")),
            top_logprobs=tuple(
                TopLogprob(
                    token=as_str(top.get("token")),
                    logprob=_logprob(top.get("logprob")),
                    bytes=_token_bytes(top.get("bytes")),
                )
                for top in _entries(entry.get("top_logprobs"))
            ),
        )
        for entry in _entries(raw)
    )


def _logprobs(raw: object) -> Logprobs | None:
    entry = as_dict(raw)
    result = Logprobs(content=_tokens(entry.get("content")), refusal=_tokens(entry.get("refusal")))
    return result if result.content or result.refusal else None
