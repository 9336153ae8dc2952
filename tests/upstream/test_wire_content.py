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
    )
    # Kinds without a part or output in the contract are left out, not guessed at.
    assert embedder.output_modalities == frozenset()
    assert not embedder.makes(Modality.TEXT)
    # A listing without modality lists says nothing: the gateway then refuses nothing.
    assert old.input_modalities is None
    assert old.output_modalities is None
    assert old.takes(Modality.VIDEO)
    assert old.makes(Modality.IMAGE)
