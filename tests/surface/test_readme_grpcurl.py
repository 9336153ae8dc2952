"""The README's grpcurl examples for web search, prompt caching, embeddings, JSON mode and
streamed structured output, run as written (through reflection only) against a gateway."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from service.simulator import SimulatorConfig
from tests.api.support import ROOT
from tests.api.test_grpcurl import SERVICE, grpcurl
from tests.harness import ALPHA_KEY, start_gateway

# Each example: `-d '<request JSON>' $S $C/<Method>`; the JSON may span lines.
_EXAMPLE = re.compile(r"-d '(\{.*?\})' \$S \$C/(\w+)", re.DOTALL)
_HANDBOOK = "<a long handbook: 1,024 tokens or more>"


def examples() -> list[tuple[str, dict[str, Any]]]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("Web search, prompt caching, embeddings, JSON mode")
    block = readme[start : readme.index("```\n", readme.index("```sh", start) + 5)]
    return [(method, json.loads(body)) for body, method in _EXAMPLE.findall(block)]


def messages(output: str) -> list[Any]:
    """grpcurl's output: one JSON document per response message."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    text = output.strip()
    while at < len(text):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return found


async def test_every_readme_example_runs_as_written() -> None:
    ran = examples()
    methods = [m for m, _ in ran]
    assert methods == [
        "Complete",
        "Complete",
        "Complete",
        "Embed",
        "Embed",
        "ListModels",
        "Complete",
        "StreamCompleteStructured",
    ]
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as gw:
        address = gw.server.address

        async def call(method: str, request: dict[str, Any]) -> list[Any]:
            done = await grpcurl(
                address, f"{SERVICE}/{method}", key=ALPHA_KEY, data=json.dumps(request)
            )
            assert done.returncode == 0, done.stderr
            return messages(done.stdout)

        (plugin_req, tool_req, cache_req, embed_req, packed_req, list_req, json_req, stream_req) = (
            request for _, request in ran
        )
        (plugin,) = await call("Complete", plugin_req)
        assert len(plugin["annotations"]) == 3
        assert plugin["usage"]["web_search_requests"] == 1
        (tool,) = await call("Complete", tool_req)
        assert tool["usage"]["web_search_requests"] == 1
        cache_req["messages"][0]["parts"][0]["text"] = "The handbook, chapter by chapter. " * 200
        (written,) = await call("Complete", cache_req)
        (read,) = await call("Complete", cache_req)
        assert written["usage"]["cache_write_tokens"] > 1024
        assert read["usage"]["cached_tokens"] == written["usage"]["cache_write_tokens"]
        assert cache_req["messages"][0]["parts"][0]["text"] != _HANDBOOK
        (vectors,) = await call("Embed", embed_req)
        assert [len(e["values"]) for e in vectors["embeddings"]] == [256, 256]
        (packed,) = await call("Embed", packed_req)
        assert len(base64.b64decode(packed["embeddings"][0]["data"])) == 4 * 1536
        (listed,) = await call("ListModels", list_req)
        assert {m["id"] for m in listed["models"]} == {
            "openai/text-embedding-3-small",
            "nvidia/llama-nemotron-embed-vl-1b-v2",
        }
        (answer,) = await call("Complete", json_req)
        assert isinstance(json.loads(answer["content"]), dict)
        streamed = await call("StreamCompleteStructured", stream_req)
        assert "start" in streamed[0]
        assert "end" in streamed[-1]
        assert json.loads(streamed[-1]["end"]["json"])
