"""Embed through a real gateway and the simulator: vectors, encodings, parts, errors, ledger."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.content.support import image, png, text
from tests.harness import BETA_KEY, Harness, auth, rich_error, start_gateway, user
from tests.surface.support import (
    EMBED_MODEL,
    VL_EMBED_MODEL,
    embed_requests,
    ledger_rows,
    norm,
)


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(
        sim_config=SimulatorConfig(keepalive_comments=0), gateway={"max_embed_inputs": 4}
    ) as harness:
        yield harness


# A value this contract version does not define, as a newer client could send.
BAD_ENCODING = pb.EmbeddingEncoding.ValueType(7)


def texts(*values: str) -> list[pb.EmbedInput]:
    return [pb.EmbedInput(text=v) for v in values]


async def test_a_batch_embeds_in_order_deterministically(gw: Harness) -> None:
    request = pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("alpha", "beta", "alpha"))
    reply = await gw.stub.Embed(request, metadata=auth())
    assert [e.index for e in reply.embeddings] == [0, 1, 2]
    assert reply.dimensions == 1536
    assert all(len(e.values) == 1536 for e in reply.embeddings)
    assert all(abs(norm(e.values) - 1) < 1e-5 for e in reply.embeddings)
    first, second, third = (list(e.values) for e in reply.embeddings)
    assert first == third
    assert first != second
    # Plain text goes upstream as a list of strings, floats asked (the default).
    body = embed_requests(gw.sim)[-1].body
    assert body["input"] == ["alpha", "beta", "alpha"]
    assert "encoding_format" not in body
    assert body["model"] == EMBED_MODEL
    assert body["user"].startswith("llmgw-")
    assert reply.model == EMBED_MODEL
    assert reply.provider == "OpenAI"
    assert reply.id.startswith("gen-")
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens
    assert reply.usage.cost_usd == pytest.approx(reply.usage.prompt_tokens * 2e-8)
    again = await gw.stub.Embed(
        pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("beta")), metadata=auth()
    )
    assert list(again.embeddings[0].values) == second


async def test_base64_is_the_same_vector_as_little_endian_bytes(gw: Harness) -> None:
    inputs = texts("the same text")
    floats = await gw.stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=inputs), metadata=auth())
    packed = await gw.stub.Embed(
        pb.EmbedRequest(model=EMBED_MODEL, inputs=inputs, encoding=pb.EMBEDDING_ENCODING_BASE64),
        metadata=auth(),
    )
    assert embed_requests(gw.sim)[-1].body["encoding_format"] == "base64"
    data = packed.embeddings[0].data
    assert not packed.embeddings[0].values
    assert not floats.embeddings[0].data
    values = floats.embeddings[0].values
    assert data == struct.pack(f"<{len(values)}f", *values)
    assert packed.dimensions == 1536


async def test_dimensions_shorten_where_the_model_can(gw: Harness) -> None:
    reply = await gw.stub.Embed(
        pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("short"), dimensions=256), metadata=auth()
    )
    assert reply.dimensions == 256
    assert embed_requests(gw.sim)[-1].body["dimensions"] == 256
    # A model that cannot: the provider's 400 comes back as the caller's mistake.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(
            pb.EmbedRequest(model=VL_EMBED_MODEL, inputs=texts("short"), dimensions=256),
            metadata=auth(),
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info.reason == "UPSTREAM_BAD_REQUEST"


async def test_image_parts_go_as_content_parts_to_a_model_that_reads_images(gw: Harness) -> None:
    picture = png(seed=5)
    request = pb.EmbedRequest(
        model=VL_EMBED_MODEL,
        inputs=[
            pb.EmbedInput(text="a caption"),
            pb.EmbedInput(parts=[text("a cat"), image(picture)]),
        ],
        input_type="search_document",
    )
    reply = await gw.stub.Embed(request, metadata=auth())
    assert len(reply.embeddings) == 2
    assert reply.dimensions == 2048
    body = embed_requests(gw.sim)[-1].body
    assert body["input_type"] == "search_document"
    # One multimodal input: every input goes in the content form.
    assert body["input"][0] == {"content": [{"type": "text", "text": "a caption"}]}
    second = body["input"][1]["content"]
    assert second[0] == {"type": "text", "text": "a cat"}
    assert second[1]["image_url"]["url"].startswith("data:image/png;base64,")
    # Priced per image on top of its tokens, as the simulator bills it.
    assert reply.usage.cost_usd == pytest.approx(reply.usage.prompt_tokens * 5e-8 + 0.0001)


async def test_a_part_the_model_cannot_read_is_refused_before_upstream(gw: Harness) -> None:
    before = len(embed_requests(gw.sim))
    request = pb.EmbedRequest(
        model=EMBED_MODEL, inputs=[pb.EmbedInput(parts=[text("a cat"), image(png())])]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(request, metadata=auth())
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info.reason == "UNSUPPORTED_FEATURE"
    assert error.info.metadata["field"] == "inputs[0].parts[1]"
    assert len(embed_requests(gw.sim)) == before


async def test_chat_models_and_embedding_models_keep_to_their_rpcs(gw: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(
            pb.EmbedRequest(model="openai/gpt-4o-mini", inputs=texts("x")), metadata=auth()
        )
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNSUPPORTED_FEATURE",
    )
    assert error.info.metadata["field"] == "model"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(model=EMBED_MODEL, messages=[user("hi")]), metadata=auth()
        )
    error = rich_error(caught.value)
    assert error.info.reason == "UNSUPPORTED_FEATURE"
    assert error.info.metadata["field"] == "model"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("hi")], fallback_models=[EMBED_MODEL]),
            metadata=auth(),
        )
    assert rich_error(caught.value).info.metadata["field"] == "fallback_models[0]"
    assert embed_requests(gw.sim) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.EmbedRequest(model=EMBED_MODEL), "inputs"),
        (pb.EmbedRequest(model=EMBED_MODEL, inputs=[pb.EmbedInput()]), "inputs[0].text"),
        (
            pb.EmbedRequest(model=EMBED_MODEL, inputs=[pb.EmbedInput(text="a", parts=[text("b")])]),
            "inputs[0].parts",
        ),
        (pb.EmbedRequest(model=EMBED_MODEL, inputs=texts(*"abcde")), "inputs"),
        (pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("a"), dimensions=0), "dimensions"),
        (pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("a"), input_type="Query!"), "input_type"),
        (pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("a"), encoding=BAD_ENCODING), "encoding"),
        (pb.EmbedRequest(model="no/such-model", inputs=texts("a")), "model"),
        (
            pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("a"), end_user_id="u" * 129),
            "end_user_id",
        ),
    ],
)
async def test_bad_requests_name_the_field(
    gw: Harness, request_: pb.EmbedRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(request_, metadata=auth())
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    violations = [v.field for v in error.detail(error_details_pb2.BadRequest).field_violations]
    assert field in violations
    assert embed_requests(gw.sim) == []


async def test_the_default_model_and_the_allow_list_apply(gw: Harness) -> None:
    reply = await gw.stub.Embed(pb.EmbedRequest(inputs=texts("no model named")), metadata=auth())
    assert reply.model == EMBED_MODEL
    listed = await gw.stub.ListModels(pb.ListModelsRequest(), metadata=auth())
    assert listed.default_embedding_model == EMBED_MODEL
    assert {EMBED_MODEL, VL_EMBED_MODEL} <= {m.id for m in listed.models}
    # beta may use openai/* only.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(
            pb.EmbedRequest(model=VL_EMBED_MODEL, inputs=texts("x")), metadata=auth(BETA_KEY)
        )
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(pb.EmbedRequest(inputs=texts("x")))
    assert rich_error(caught.value).info.reason == "API_KEY_MISSING"


async def test_retried_like_chat_and_booked_in_the_ledger(gw: Harness) -> None:
    request = pb.EmbedRequest(
        model=EMBED_MODEL, inputs=texts("flaky [[sim:error=503]][[sim:fail-times=1]]", "two")
    )
    reply = await gw.stub.Embed(request, metadata=auth(), timeout=10)
    assert len(embed_requests(gw.sim)) == 2
    await gw.rows_written(1)
    rows = [r for r in ledger_rows(gw.server.settings.ledger_path) if r["rpc"] == "Embed"]
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "OK"
    assert row["caller_id"] == "alpha"
    assert row["requested_model"] == row["served_model"] == EMBED_MODEL
    assert row["provider"] == "OpenAI"
    assert row["generation_id"] == reply.id
    assert row["retries"] == 1
    assert row["prompt_tokens"] == reply.usage.prompt_tokens
    assert row["completion_tokens"] == 0
    generation = gw.sim.state.generations[reply.id]
    assert Decimal(row["cost_usd"]) == Decimal(repr(generation.total_cost))
    usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
    assert usage.request_count == 1
    assert usage.prompt_tokens == reply.usage.prompt_tokens
    assert Decimal(repr(usage.cost_usd)) == Decimal(row["cost_usd"])


async def test_an_upstream_error_is_mapped_and_booked(gw: Harness) -> None:
    request = pb.EmbedRequest(model=EMBED_MODEL, inputs=texts("[[sim:error=402]]"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(request, metadata=auth())
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info.reason == "UPSTREAM_INSUFFICIENT_CREDITS"
    await gw.rows_written(1)
    (row,) = ledger_rows(gw.server.settings.ledger_path)
    assert (row["rpc"], row["status"]) == ("Embed", "FAILED_PRECONDITION")
