"""The README's grpcurl examples for content, through reflection only: an image in (bytes as
base64 in JSON), an image out, and a reasoning round trip (grpcurl's output fed back)."""

from __future__ import annotations

import base64
import json
from typing import Any

from service.simulator import SimulatorConfig
from tests.api.support import chat_requests
from tests.api.test_grpcurl import SERVICE, grpcurl
from tests.content.support import png
from tests.harness import ALPHA_KEY, start_gateway


async def complete(address: str, request: dict[str, Any]) -> Any:
    """``grpcurl -d <request> … Complete``, and the answer's JSON (grpcurl's field names)."""
    ran = await grpcurl(address, f"{SERVICE}/Complete", key=ALPHA_KEY, data=json.dumps(request))
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


async def test_grpcurl_image_in_image_out_and_reasoning_round_trip() -> None:
    picture = png(seed=4)
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as gw:
        address = gw.server.address
        seen = await complete(
            address,
            {
                "model": "openai/gpt-4o-mini",
                "messages": [
                    {
                        "role": "ROLE_USER",
                        "parts": [
                            {"text": "What is in this picture?"},
                            {
                                "image": {
                                    "inline_data": {
                                        "mime_type": "image/png",
                                        "data": base64.b64encode(picture).decode(),
                                    }
                                }
                            },
                        ],
                    }
                ],
            },
        )
        assert seen["content"]
        sent = chat_requests(gw.sim)[-1].body["messages"][0]["content"][1]["image_url"]["url"]
        assert base64.b64decode(sent.removeprefix("data:image/png;base64,")) == picture

        painted = await complete(
            address,
            {
                "model": "google/gemini-2.5-flash-image",
                "messages": [{"role": "ROLE_USER", "content": "A red square"}],
                "output_modalities": ["MODALITY_IMAGE", "MODALITY_TEXT"],
            },
        )
        image = painted["images"][0]["inline_data"]
        assert image["mime_type"] == "image/png"
        assert base64.b64decode(image["data"]).startswith(b"\x89PNG\r\n\x1a\n")

        question = {"role": "ROLE_USER", "content": "What is 2 + 2?"}
        answer = await complete(
            address,
            {
                "model": "anthropic/claude-sonnet-4.5",
                "messages": [question],
                "reasoning": {"effort": "REASONING_EFFORT_HIGH"},
            },
        )
        assert answer["reasoning_details"][0]["signature"]
        # grpcurl's output, pasted back as it came (its field names), goes upstream unchanged.
        second = await complete(
            address,
            {
                "model": "anthropic/claude-sonnet-4.5",
                "messages": [
                    question,
                    {
                        "role": "ROLE_ASSISTANT",
                        "content": answer["content"],
                        "reasoning_details": answer["reasoning_details"],
                    },
                    {"role": "ROLE_USER", "content": "And times 3?"},
                ],
            },
        )
        assert second["content"]
        back = chat_requests(gw.sim)[-1].body["messages"][1]["reasoning_details"][0]
        assert back["signature"] == answer["reasoning_details"][0]["signature"]
        assert back["text"] == answer["reasoning"]
