"""The Node.js content example (tests/node/content.js, straight from the .proto) against a
real gateway: an image in, an image out, a reasoning round trip unary and streamed."""

from __future__ import annotations

import base64
import json
import os

from service.simulator import SimulatorConfig
from tests.api.support import ROOT, chat_requests, run_process
from tests.api.test_polyglot import NODE_MODULES, _node
from tests.harness import ALPHA_KEY, start_gateway

CLIENT = ROOT / "tests" / "node" / "content.js"


async def test_node_sends_an_image_gets_one_and_round_trips_reasoning() -> None:
    node = _node()
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as gw:
        ran = await run_process(
            node,
            str(CLIENT),
            gw.server.address,
            ALPHA_KEY,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
        assert ran.returncode == 0, ran.stderr
        out = json.loads(ran.stdout)
        bodies = [r.body for r in chat_requests(gw.sim)]

    # The image reached OpenRouter as the very bytes Node sent.
    sent = bodies[0]["messages"][0]["content"][1]["image_url"]
    assert sent["detail"] == "low"
    png = base64.b64decode(sent["url"].removeprefix("data:image/png;base64,"))
    assert len(png) == out["image_in"]["sent_bytes"]
    assert png.startswith(b"\x89PNG")
    assert out["image_in"]["content"]
    assert out["image_out"] == {
        "mime_type": "image/png",
        "png_signature": "89504e470d0a1a0a",
        "bytes": out["image_out"]["bytes"],
        "image_tokens": 1290,
    }
    assert out["image_out"]["bytes"] > 50
    details = out["reasoning"]["details"]
    assert details == [
        {
            "type": "REASONING_DETAIL_TYPE_TEXT",
            "format": "anthropic-claude-v1",
            "has_signature": True,
            "text": out["reasoning"]["reasoning"],
        }
    ]
    # The signed block went back unchanged (the simulator refuses a changed one).
    assert bodies[3]["messages"][1]["reasoning_details"][0]["text"] == details[0]["text"]
    assert out["reasoning"]["second_content"]
    assert out["stream"]["pieces"] > 1
    assert out["stream"]["merged_equals_unary"] is True
    assert out["stream"]["reasoning"] == out["reasoning"]["reasoning"]
    assert out["stream"]["again_content"]
