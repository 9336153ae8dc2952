"""The /embeddings wire both ways, and the simulator's side of it (over real HTTP)."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from service.domain.completion import Blob, ImagePart, TextPart
from service.domain.embeddings import EmbeddingEncoding, EmbeddingInput, EmbeddingRequest
from service.errors import UpstreamProtocolError
from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from service.upstream.embeddings import build_body, parse_embeddings
from tests.surface.support import EMBED_MODEL, VL_EMBED_MODEL


def answer(*embeddings: Any, **extra: Any) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)]
    return {"id": "gen-1", "model": "m", "provider": "P", "data": data, **extra}


def test_text_inputs_go_as_strings_and_a_multimodal_batch_as_content() -> None:
    plain = EmbeddingRequest(model="m", inputs=(EmbeddingInput("a"), EmbeddingInput("b")))
    assert build_body(plain) == {"model": "m", "input": ["a", "b"]}
    mixed = EmbeddingRequest(
        model="m",
        inputs=(
            EmbeddingInput("a"),
            EmbeddingInput(parts=(TextPart("b"), ImagePart(Blob("image/png", b"\x89PNG")))),
        ),
        dimensions=8,
        encoding=EmbeddingEncoding.BASE64,
        input_type="search_query",
        user="llmgw-x",
    )
    body = build_body(mixed)
    assert body["input"][0] == {"content": [{"type": "text", "text": "a"}]}
    assert body["input"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()},
    }
    assert (body["dimensions"], body["encoding_format"]) == (8, "base64")
    assert (body["input_type"], body["user"]) == ("search_query", "llmgw-x")


def test_floats_and_base64_read_alike_and_out_of_order_answers_are_put_in_order() -> None:
    packed = base64.b64encode(struct.pack("<3f", 0.5, -0.25, 1.0)).decode()
    data = answer([0.5, -0.25, 1.0], packed)
    data["data"].reverse()
    result = parse_embeddings(data, expected=2)
    assert [v.index for v in result.vectors] == [0, 1]
    assert list(result.vectors[0].values) == list(result.vectors[1].values) == [0.5, -0.25, 1.0]
    assert result.dimensions == 3
    assert result.vectors[0].little_endian_bytes() == struct.pack("<3f", 0.5, -0.25, 1.0)


@pytest.mark.parametrize(
    "data",
    [
        answer([0.1]),  # one vector for two inputs
        answer([0.1], [0.2], [0.3]),
        answer([0.1, 0.2], [0.3]),  # mixed lengths
        answer([], []),
        answer("not base64!", [0.1]),
        answer(base64.b64encode(b"\x00\x01\x02").decode(), [0.1]),  # not whole float32s
        answer(["x"], [0.1]),
        answer({"x": 1}, [0.1]),
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]},
        {"data": [{"index": 5, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]},
        {"object": "list"},
    ],
)
def test_an_answer_that_would_misfile_vectors_is_a_protocol_error(data: dict[str, Any]) -> None:
    with pytest.raises(UpstreamProtocolError):
        parse_embeddings(data, expected=2)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimulatorConfig(keepalive_comments=0)) as running:
        yield running


async def post(sim: RunningSimulator, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": "Bearer k"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.base_url}/embeddings", json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_models_lists_embedding_models_only_when_asked(sim: RunningSimulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.base_url}/models") as response:
            default = {m["id"] for m in (await response.json())["data"]}
        async with session.get(f"{sim.base_url}/models?output_modalities=embeddings") as response:
            embedding = {m["id"] for m in (await response.json())["data"]}
        async with session.get(f"{sim.base_url}/models?output_modalities=all") as response:
            every = {m["id"] for m in (await response.json())["data"]}
    assert EMBED_MODEL not in default
    assert embedding == {EMBED_MODEL, VL_EMBED_MODEL}
    assert every == default | embedding


async def test_the_simulator_embeds_like_openrouter(sim: RunningSimulator) -> None:
    status, floats = await post(sim, {"model": EMBED_MODEL, "input": "hello"})
    assert status == 200
    vector = floats["data"][0]["embedding"]
    assert len(vector) == 1536
    assert abs(sum(v * v for v in vector) - 1) < 1e-5
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] > 0
    status, packed = await post(
        sim, {"model": EMBED_MODEL, "input": ["hello"], "encoding_format": "base64"}
    )
    assert status == 200
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack("<1536f", raw)) == vector
    status, tokens = await post(sim, {"model": EMBED_MODEL, "input": [[1, 2, 3]]})
    assert (status, tokens["usage"]["prompt_tokens"]) == (200, 3)
    assert sim.state.generations[floats["id"]].tokens_prompt == floats["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": EMBED_MODEL, "input": "x", "encoding_format": "int8"}, 400),
        ({"model": EMBED_MODEL, "input": "x", "dimensions": 4096}, 400),
        ({"model": VL_EMBED_MODEL, "input": "x", "dimensions": 256}, 400),
        ({"model": EMBED_MODEL, "input": []}, 400),
        ({"model": "no/such", "input": "x"}, 400),
        ({"model": "openai/gpt-4o-mini", "input": "x"}, 404),
        (
            {
                "model": EMBED_MODEL,
                "input": [
                    {"content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
                ],
            },
            404,
        ),
        ({"model": EMBED_MODEL, "input": "x [[sim:error=429]]"}, 429),
    ],
)
async def test_the_simulator_refuses_what_openrouter_would(
    sim: RunningSimulator, body: dict[str, Any], status: int
) -> None:
    got, reply = await post(sim, body)
    assert got == status
    assert isinstance(reply["error"]["message"], str)
