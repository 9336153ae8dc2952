"""Wire shapes beyond text: catalog modalities and media prices, parts, reasoning details,
images, annotations, refusals, logprobs and outputs the contract does not carry."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.domain.completion import Modality
from service.domain.models import ModelPricing
from service.upstream import wire

CATALOG: dict[str, Any] = {
    "data": [
        {
            "id": "vendor/painter",
            "context_length": 65536,
            "architecture": {
                "modality": "text+image->text+image",
                "input_modalities": ["image", "text"],
                "output_modalities": ["image", "text"],
            },
            "pricing": {
                "prompt": "0.000002",
                "completion": "0.000012",
                "image": "0.000002",
                "image_output": "0.00012",
                "image_token": "0.00003",
                "audio": "0.000004",
                "audio_output": "0.000008",
                "web_search": "0.014",
            },
        },
        {
            "id": "vendor/embedder",
            "architecture": {"input_modalities": ["text"], "output_modalities": ["embeddings"]},
            "pricing": {"prompt": "0.0000001", "completion": "0"},
        },
        {"id": "vendor/old", "architecture": {"modality": "text->text"}, "pricing": {}},
    ]
}


def test_catalog_modalities_and_media_prices() -> None:
    painter, embedder, old = wire.parse_models(CATALOG)
    assert painter.input_modalities == frozenset({Modality.TEXT, Modality.IMAGE})
    assert painter.output_modalities == frozenset({Modality.TEXT, Modality.IMAGE})
    assert painter.takes(Modality.IMAGE)
    assert not painter.takes(Modality.AUDIO)
    assert painter.makes(Modality.IMAGE)
    assert painter.pricing == ModelPricing(
        prompt=Decimal("0.000002"),
        completion=Decimal("0.000012"),
        image=Decimal("0.000002"),
        image_output=Decimal("0.00012"),
        image_token=Decimal("0.00003"),
        audio=Decimal("0.000004"),
        audio_output=Decimal("0.000008"),
        web_search=Decimal("0.014"),
    )
    # Embedding models are told apart; kinds no RPC serves are left out, not guessed at.
    assert embedder.output_modalities == frozenset({Modality.EMBEDDINGS})
    assert embedder.makes_embeddings
    assert not embedder.makes(Modality.TEXT)
    # A listing without modality lists says nothing: the gateway then refuses nothing.
    assert old.input_modalities is None
    assert old.output_modalities is None
    assert old.takes(Modality.VIDEO)
    assert old.makes(Modality.IMAGE)


def answer(message: dict[str, Any], **choice: Any) -> dict[str, Any]:
    return {"id": "gen-1", "choices": [{"message": message, "finish_reason": "stop", **choice}]}


def test_reasoning_text_comes_from_the_blocks_when_only_they_arrive() -> None:
    # o3 / grok style: `reasoning` null, the reasoning only in reasoning_details.
    summary = {"type": "reasoning.summary", "summary": "Thinking.", "index": 0}
    sealed = {"type": "reasoning.encrypted", "data": "gAAAA", "id": "rs_1", "index": 0}
    completion = wire.parse_completion(
        answer({"content": "4", "reasoning": None, "reasoning_details": [summary, sealed]})
    )
    assert completion.reasoning == "Thinking."
    assert [d.type.value for d in completion.reasoning_details] == [
        "reasoning.summary",
        "reasoning.encrypted",
    ]
    # An explicit `reasoning` string wins, as sent.
    both = wire.parse_completion(
        answer({"content": "4", "reasoning": "Own words.", "reasoning_details": [summary]})
    )
    assert both.reasoning == "Own words."


def test_unknown_kinds_in_an_answer_are_named_and_counted() -> None:
    completion = wire.parse_completion(
        answer(
            {
                "content": [
                    {"type": "text", "text": "Hello "},
                    {"type": "text", "text": "there."},
                    {"type": "input_video", "video_url": {"url": "https://v"}},
                ],
                "audio": {"data": "UklGRg=="},
                "function_call": None,  # null: nothing there
                "annotations": [{"type": "file_annotation"}, {"type": "file_annotation"}],
                "images": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}],
            }
        )
    )
    assert completion.content == "Hello there."
    assert [(u.kind, u.count) for u in completion.unsupported] == [
        ("annotations.file_annotation", 2),
        ("content.input_video", 1),
        ("images.unreadable", 1),
        ("message.audio", 1),
    ]
    assert completion.produced
