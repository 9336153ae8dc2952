"""Check before you store, log or echo: caller strings are bounded before anything keeps them.

A 7 MB model name used to become a 7 MB ledger row and log line and came back three times in
the trailers (a default client then failed with RESOURCE_EXHAUSTED, without ErrorInfo); the
per-caller model cache kept every distinct name. Now every caller string has a length limit
checked first, errors repeat at most 128 characters of a caller value, and the caches keyed
by caller input hold only valid entries.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.limits import MAX_MODEL_CHARS
from service.errors import MAX_QUOTED_CHARS
from service.logs import JsonFormatter
from tests.accounting.support import acct_gateway, sqlite_rows
from tests.api.raw_http2 import frame, raw_call
from tests.api.support import chat_requests, complete_error
from tests.harness import ALPHA_KEY, BETA_KEY, RichError, auth, rich_error, start_gateway, user

HUGE = 7 * 1024 * 1024
TRAILERS_BUDGET = 2048
"""Bytes of trailers (status message and details) a refused call may cost at most."""


def trailer_bytes(error: RichError) -> int:
    return len(error.message.encode()) + sum(len(d.SerializeToString()) for d in error.details)


def assert_bounded(error: RichError) -> None:
    assert trailer_bytes(error) < TRAILERS_BUDGET
    for value in error.info.metadata.values():
        assert len(value) <= MAX_QUOTED_CHARS


@pytest.mark.parametrize(
    ("field", "huge"),
    [
        ("model", pb.CompleteRequest(model="m" * HUGE, messages=[user("Hi")])),
        (
            "fallback_models[0]",
            pb.CompleteRequest(fallback_models=["f" * HUGE], messages=[user("Hi")]),
        ),
        ("end_user_id", pb.CompleteRequest(end_user_id="u" * HUGE, messages=[user("Hi")])),
    ],
    ids=["model", "fallback", "end-user"],
)
async def test_a_huge_caller_string_is_refused_before_it_is_stored_logged_or_echoed(
    field: str,
    huge: pb.CompleteRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "usage.db"
    with caplog.at_level(logging.INFO, logger="service.rpc"):
        async with acct_gateway(path) as gw:
            error = await complete_error(gw, huge)
            await gw.rows_written(1)
            rows = sqlite_rows(path)
            assert chat_requests(gw.sim) == []

    # A default client reads the status with its ErrorInfo (it is small).
    assert (error.code, error.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field in error.message
    assert_bounded(error)
    [row] = rows
    assert (row["status"], row["requested_model"], row["end_user_id"]) == (
        "INVALID_ARGUMENT",
        "",
        "",
    )
    assert max(len(str(value)) for value in row.values()) < 200
    [line] = [r for r in caplog.records if r.getMessage() == "rpc finished"]
    assert len(JsonFormatter().format(line)) < 1000


async def test_an_error_repeats_at_most_128_characters_of_a_model_name() -> None:
    name = "openai/" + "x" * (MAX_MODEL_CHARS - 7)  # as long as a model may be
    async with start_gateway() as gw:
        unknown = await complete_error(gw, pb.CompleteRequest(model=name, messages=[user("Hi")]))
        denied = await complete_error(
            gw,
            pb.CompleteRequest(model="anthropic/" + "y" * 240, messages=[user("Hi")]),
            auth(BETA_KEY),
        )
    assert (unknown.code, unknown.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert (denied.code, denied.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
    )
    for error, sent in ((unknown, name), (denied, "anthropic/" + "y" * 240)):
        assert_bounded(error)
        assert sent[: MAX_QUOTED_CHARS - 1] in error.message
        assert sent not in error.message
    assert denied.info.metadata["model"] == ("anthropic/" + "y" * 240)[: MAX_QUOTED_CHARS - 1] + "…"


async def test_distinct_unknown_model_names_do_not_grow_the_model_cache() -> None:
    async with start_gateway() as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        cache = gw.server.gateway._allowed_cache
        before = len(cache)
        for n in range(400):
            error = await complete_error(
                gw, pb.CompleteRequest(model=f"made-up/{n:04d}-" + "z" * 200, messages=[user("Hi")])
            )
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert len(cache) == before


async def test_a_huge_schema_name_is_refused_without_being_repeated() -> None:
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.CompleteStructured(
                pb.CompleteStructuredRequest(schema_name="s" * HUGE, messages=[user("Hi")]),
                metadata=auth(),
            )
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_SCHEMA")
    assert_bounded(error)


@pytest.mark.parametrize(
    "request_id",
    ["r" * 129, "id\x01with-control", "id\r\nx-injected: 1", "non-ascii-\xe9"],
    ids=["too-long", "control", "crlf", "non-ascii"],
)
async def test_an_unusable_request_id_is_replaced_never_echoed(request_id: str) -> None:
    async with start_gateway() as gw:
        reply = await raw_call(
            gw.server.address,
            "/llmgateway.v1.CompletionService/ListModels",
            frame(pb.ListModelsRequest().SerializeToString()),
            (("authorization", f"Bearer {ALPHA_KEY}"), ("x-request-id", request_id)),
        )
        [(record, code)] = await gw.wait_finished()
    assert code is grpc.StatusCode.OK
    echoed = reply.trailer("x-request-id") or reply.headers.get("x-request-id")
    assert echoed == record.request_id == record.call_id
    assert request_id not in str(reply)
