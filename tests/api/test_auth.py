"""Who may call, and which models: caller keys, per-caller and global allow-lists, open probes."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.config import ConfigError
from tests.api.raw_http2 import frame, raw_call
from tests.api.support import (
    assert_nothing_leaks,
    chat_requests,
    complete_error,
    health_check,
    reflected_services,
    stream_error,
)
from tests.harness import (
    ALPHA_KEY,
    BETA_KEY,
    Harness,
    RichError,
    auth,
    rich_error,
    start_gateway,
    user,
)

BAD_CREDENTIALS = [
    pytest.param((), "API_KEY_MISSING", id="no-metadata"),
    pytest.param((("authorization", f"Basic {ALPHA_KEY}"),), "API_KEY_MISSING", id="basic"),
    pytest.param((("authorization", "Bearer "),), "API_KEY_MISSING", id="empty-bearer"),
    pytest.param((("authorization", "Bearer"),), "API_KEY_MISSING", id="bare-scheme"),
    pytest.param(auth("key-nobody-knows"), "API_KEY_INVALID", id="unknown-key"),
    pytest.param(auth(ALPHA_KEY + "x"), "API_KEY_INVALID", id="near-miss"),
    pytest.param((("authorization", f"Bearer  {ALPHA_KEY}"),), "API_KEY_INVALID", id="two-spaces"),
    pytest.param((("authorization", f"Bearer {ALPHA_KEY} "),), "API_KEY_INVALID", id="trailing-sp"),
    pytest.param((*auth(), *auth()), "API_KEY_INVALID", id="two-values"),
    pytest.param((*auth(), ("authorization", "Bearer x")), "API_KEY_INVALID", id="valid-first"),
]


async def _list_models_error(gw: Harness, metadata: tuple[tuple[str, str], ...]) -> RichError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
    return rich_error(caught.value)


@pytest.mark.parametrize(("metadata", "reason"), BAD_CREDENTIALS)
async def test_bad_credentials_are_unauthenticated_on_every_rpc(
    metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    async with start_gateway() as gw:
        errors = [
            await complete_error(gw, pb.CompleteRequest(messages=[user("Hi")]), metadata),
            await stream_error(gw, pb.StreamCompleteRequest(messages=[user("Hi")]), metadata),
            await _list_models_error(gw, metadata),
        ]
        for error in errors:
            assert (error.code, error.info.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
            assert error.info.domain == "llmgateway.v1"
            assert error.info.metadata["request_id"]
            assert_nothing_leaks(error, (ALPHA_KEY, "key-nobody-knows"))
        assert chat_requests(gw.sim) == []
        finished = await gw.wait_finished(3)
        assert [code for _, code in finished] == [grpc.StatusCode.UNAUTHENTICATED] * 3
        assert all(record.caller_id == "" for record, _ in finished)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    async with start_gateway() as gw:
        reply = await gw.stub.ListModels(
            pb.ListModelsRequest(), metadata=(("authorization", f"{scheme} {ALPHA_KEY}"),)
        )
        assert reply.models


async def test_two_authorization_values_are_refused_saying_so() -> None:
    async with start_gateway() as gw:
        error = await _list_models_error(gw, (*auth(), *auth(BETA_KEY)))
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        )
        assert "more than one 'authorization'" in error.message


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {ALPHA_KEY}\r\n",
        f"Bearer {ALPHA_KEY}\n",
        f"Bearer {ALPHA_KEY}\x00",
        f"Bearer\t{ALPHA_KEY}",
    ],
    ids=["crlf", "lf", "nul", "tab"],
)
async def test_a_key_with_control_characters_is_refused(value: str) -> None:
    # grpc's clients refuse to send such values; a raw HTTP/2 client can, and the server's
    # transport lets them through.
    async with start_gateway() as gw:
        reply = await raw_call(
            gw.server.address,
            "/llmgateway.v1.CompletionService/ListModels",
            frame(pb.ListModelsRequest().SerializeToString()),
            (("authorization", value),),
        )
        assert reply.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]
        # gRPC sends a failed unary call's (empty) message slot before the status; no answer.
        assert all(message == b"" for message in reply.messages)
        details = reply.status_details
        assert details is not None
        status = status_pb2.Status.FromString(details)
        [packed] = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        info = error_details_pb2.ErrorInfo()
        packed.Unpack(info)
        assert info.reason == "API_KEY_INVALID"
        assert "malformed" in status.message
        assert ALPHA_KEY not in status.message


@pytest.mark.parametrize(
    ("model", "fallbacks", "denied", "field"),
    [
        ("anthropic/claude-3.5-haiku", [], "anthropic/claude-3.5-haiku", "model"),
        (
            "openai/gpt-4o-mini",
            ["google/gemini-2.0-flash-001"],
            "google/gemini-2.0-flash-001",
            "fallback_models[0]",
        ),
        (
            "openai/gpt-4o-mini",
            ["openai/gpt-4o-mini:nitro", "mistralai/mistral-7b-instruct"],
            "mistralai/mistral-7b-instruct",
            "fallback_models[1]",
        ),
    ],
    ids=["model", "first-fallback", "second-fallback"],
)
async def test_a_model_outside_betas_allow_list_is_denied_by_name(
    model: str, fallbacks: list[str], denied: str, field: str
) -> None:
    async with start_gateway() as gw:
        unary = await complete_error(
            gw,
            pb.CompleteRequest(model=model, fallback_models=fallbacks, messages=[user("Hi")]),
            auth(BETA_KEY),
        )
        streamed = await stream_error(
            gw,
            pb.StreamCompleteRequest(model=model, fallback_models=fallbacks, messages=[user("Hi")]),
            auth(BETA_KEY),
        )
        for error in (unary, streamed):
            assert (error.code, error.info.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "MODEL_NOT_ALLOWED",
            )
            assert error.info.metadata["model"] == denied
            assert error.info.metadata["field"] == field
            assert denied in error.message
        assert chat_requests(gw.sim) == []


async def test_beta_may_use_its_allowed_models() -> None:
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(model="openai/gpt-4o-mini", messages=[user("Hi")]),
            metadata=auth(BETA_KEY),
        )
        assert reply.model == "openai/gpt-4o-mini"
        assert [record.caller_id for record, _ in await gw.wait_finished()] == ["beta"]


async def test_the_global_allow_list_binds_even_a_caller_allowed_everything() -> None:
    async with start_gateway(gateway={"allowed_models": ("openai/*",)}) as gw:
        error = await complete_error(
            gw, pb.CompleteRequest(model="anthropic/claude-3.5-haiku", messages=[user("Hi")])
        )
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "MODEL_NOT_ALLOWED",
        )
        assert error.info.metadata["model"] == "anthropic/claude-3.5-haiku"
        listing = await gw.stub.ListModels(pb.ListModelsRequest(), metadata=auth())
        assert [m.id for m in listing.models] == [
            "openai/gpt-4o-mini",
            "openai/gpt-5-mini",
            "openai/text-embedding-3-small",
        ]
        reply = await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        assert reply.model == "openai/gpt-4o-mini"


async def test_health_and_reflection_need_no_key() -> None:
    async with start_gateway() as gw:
        for service in ("", "llmgateway.v1.CompletionService"):
            reply = await health_check(gw.channel)(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        services = await reflected_services(gw.channel)
        assert "llmgateway.v1.CompletionService" in services
        assert "grpc.health.v1.Health" in services


async def test_a_global_allow_list_excluding_the_default_model_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="OPENROUTER_DEFAULT_MODEL"):
        async with start_gateway(gateway={"allowed_models": ("anthropic/*",)}):
            pass
