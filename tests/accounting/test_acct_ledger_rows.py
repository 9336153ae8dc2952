"""One ledger row per RPC, written by the real service, read back from SQLite and PostgreSQL.

Every RPC goes through a real gRPC server in front of the simulator; the rows are read with
a connection of the test's own, so they show what an operator querying the ledger would see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import GenerationRecord
from tests.accounting.support import (
    Row,
    acct_gateway,
    assert_files_free_of,
    assert_no_secrets,
    by_request_id,
    postgres_rows,
    sqlite_rows,
)
from tests.harness import ALPHA_KEY, BETA_KEY, UPSTREAM_KEY, Harness, auth, rich_error, user

CHAT_PATH = "/api/v1/chat/completions"
# Recognisable prompt text: it must never reach a ledger column.
PROMPT = "zebra-prompt-4b1e about the Matterhorn"
WRONG_KEY = "key-nobody-CALLERSECRET"
SECRETS = (ALPHA_KEY, BETA_KEY, UPSTREAM_KEY, WRONG_KEY, PROMPT, "Matterhorn")


def metadata(request_id: str, key: str = ALPHA_KEY) -> tuple[tuple[str, str], ...]:
    return (*auth(key), ("x-request-id", request_id))


def sim_cost(generation: GenerationRecord) -> Decimal:
    """The simulator's cost as the exact decimal it wrote on the wire."""
    return Decimal(repr(generation.total_cost))


@dataclass
class Window:
    """Wall-clock bounds of a test's RPCs, to check a row's start time and latency."""

    start: datetime
    started_at: float

    @classmethod
    def open(cls) -> Window:
        return cls(datetime.now(UTC), time.monotonic())

    def check(self, row: Row) -> None:
        elapsed_ms = (time.monotonic() - self.started_at) * 1000
        assert 0 <= row["latency_ms"] <= elapsed_ms + 1
        if row["ttft_ms"] is not None:
            assert 0 <= row["ttft_ms"] <= row["latency_ms"]
        started = row["time"]
        if isinstance(started, int):  # SQLite: microseconds since the epoch
            started = datetime.fromtimestamp(started / 1_000_000, UTC)
        assert self.start <= started <= datetime.now(UTC)


async def rows_of(gw: Harness, path: Path, rpcs: int = 1) -> dict[str, Row]:
    """The ledger's rows once ``rpcs`` RPCs have finished, checked for secrets."""
    await gw.rows_written(rpcs)
    rows = sqlite_rows(path)
    assert_no_secrets(rows, SECRETS)
    assert_files_free_of(path, SECRETS)
    return by_request_id(rows)


def assert_matches_generation(row: Row, generation: GenerationRecord) -> None:
    assert row["generation_id"] == generation.id
    assert row["served_model"] == generation.model
    assert row["provider"] == generation.provider_name
    assert row["prompt_tokens"] == generation.tokens_prompt > 0
    assert row["completion_tokens"] == generation.tokens_completion
    assert row["reasoning_tokens"] == generation.tokens_reasoning
    assert Decimal(row["cost_usd"]) == sim_cost(generation) > 0


# --- successes -----------------------------------------------------------------------------


async def test_complete_and_stream_each_write_one_row_with_the_simulators_figures(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    window = Window.open()
    async with acct_gateway(path) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(
                messages=[user(f"{PROMPT} [[sim:tokens=9]] [[sim:reasoning=4]]")],
                end_user_id="end-user-17",
            ),
            metadata=metadata("acct-complete"),
        )
        streamed = [
            message
            async for message in gw.stub.StreamComplete(
                pb.StreamCompleteRequest(
                    model="anthropic/claude-3.5-haiku",
                    messages=[user(f"{PROMPT} [[sim:tokens=6]]")],
                ),
                metadata=metadata("acct-stream"),
            )
        ]
        rows = await rows_of(gw, path, rpcs=2)
        complete_gen = gw.sim.state.generations[reply.id]
        stream_gen = gw.sim.state.generations[streamed[0].start.id]

    assert set(rows) == {"acct-complete", "acct-stream"}
    complete, stream = rows["acct-complete"], rows["acct-stream"]
    assert_matches_generation(complete, complete_gen)
    assert_matches_generation(stream, stream_gen)
    assert complete["reasoning_tokens"] == 4
    assert complete["completion_tokens"] == 13
    assert stream["served_model"] == "anthropic/claude-3.5-haiku"
    assert stream["provider"] == "Anthropic"
    assert (complete["rpc"], stream["rpc"]) == ("Complete", "StreamComplete")
    assert (complete["requested_model"], stream["requested_model"]) == (
        "openai/gpt-4o-mini",
        "anthropic/claude-3.5-haiku",
    )
    assert complete["end_user_id"] == "end-user-17"
    for row in (complete, stream):
        assert row["caller_id"] == "alpha"
        assert row["status"] == "OK"
        assert row["ttft_ms"] is not None
        assert (row["retries"], row["fallback_used"], row["repair_used"]) == (0, 0, 0)
        assert (row["cancelled"], row["reconciled"]) == (0, 0)
        window.check(row)


REPAIR_PROMPT = f"{PROMPT} [[sim:json=wrong-once]]"


async def structured_with_repair(
    path: Path,
) -> tuple[Row, pb.CompleteStructuredResponse, list[GenerationRecord]]:
    async with acct_gateway(path) as gw:
        reply = await gw.stub.CompleteStructured(
            pb.CompleteStructuredRequest(
                schema_name="chat_reply_v1", messages=[user(REPAIR_PROMPT)]
            ),
            metadata=metadata("acct-structured"),
        )
        rows = await rows_of(gw, path)
        generations = list(gw.sim.state.generations.values())
    assert list(rows) == ["acct-structured"]
    return rows["acct-structured"], reply, generations


async def test_structured_with_a_repair_writes_one_row_summing_both_attempts(
    tmp_path: Path,
) -> None:
    window = Window.open()
    row, reply, generations = await structured_with_repair(tmp_path / "usage.db")

    assert reply.repaired
    assert reply.attempts == 2
    first, accepted = generations
    assert accepted.id == reply.id
    assert row["rpc"] == "CompleteStructured"
    assert row["status"] == "OK"
    assert row["repair_used"] == 1
    assert row["generation_id"] == accepted.id
    assert (row["served_model"], row["provider"]) == ("openai/gpt-4o-mini", "OpenAI")
    assert row["prompt_tokens"] == first.tokens_prompt + accepted.tokens_prompt
    assert row["completion_tokens"] == first.tokens_completion + accepted.tokens_completion
    assert Decimal(row["cost_usd"]) == pytest.approx(sim_cost(first) + sim_cost(accepted))
    assert (row["cancelled"], row["retries"]) == (0, 0)
    window.check(row)


async def test_structured_with_a_repair_records_the_exact_sum_of_both_costs(
    tmp_path: Path,
) -> None:
    row, _, (first, accepted) = await structured_with_repair(tmp_path / "usage.db")
    assert Decimal(row["cost_usd"]) == sim_cost(first) + sim_cost(accepted)


async def test_a_fallback_model_is_recorded_as_the_served_model(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    async with acct_gateway(path) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(
                messages=[user(f"{PROMPT} [[sim:fail-primary]]")],
                fallback_models=["anthropic/claude-3.5-haiku"],
            ),
            metadata=metadata("acct-fallback"),
        )
        rows = await rows_of(gw, path)
        generation = gw.sim.state.generations[reply.id]

    row = rows["acct-fallback"]
    assert_matches_generation(row, generation)
    assert row["requested_model"] == "openai/gpt-4o-mini"
    assert (row["served_model"], row["fallback_used"]) == ("anthropic/claude-3.5-haiku", 1)


async def test_a_failed_repair_is_recorded_as_a_repair(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    async with acct_gateway(path) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await gw.stub.CompleteStructured(
                pb.CompleteStructuredRequest(
                    schema_name="chat_reply_v1", messages=[user(f"{PROMPT} [[sim:json=invalid]]")]
                ),
                metadata=metadata("acct-failed-repair"),
            )
        rows = await rows_of(gw, path)
        first, second = gw.sim.state.generations.values()

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    row = rows["acct-failed-repair"]
    assert row["status"] == "FAILED_PRECONDITION"
    # Both attempts were billed and booked...
    assert row["completion_tokens"] == first.tokens_completion + second.tokens_completion
    # ...so the row must say why there were two.
    assert row["repair_used"] == 1


# --- failures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    name: str
    code: grpc.StatusCode
    reason: str
    request: pb.CompleteRequest
    key: str = ALPHA_KEY
    caller_id: str = "alpha"
    requested_model: str = "openai/gpt-4o-mini"
    upstream_calls: int = 0
    """Chat requests the simulator must have seen; the row's retries are one less."""


# A call refused before its caller is known is counted in rejected_calls, not a row of its
# own: tests/accounting/test_acct_rejected_calls.py.
FAILURES = [
    Failure(
        "invalid-argument",
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        pb.CompleteRequest(messages=[user(PROMPT)], sampling=pb.SamplingParams(max_tokens=-1)),
    ),
    Failure(
        "permission-denied",
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
        pb.CompleteRequest(model="anthropic/claude-3.5-haiku", messages=[user(PROMPT)]),
        key=BETA_KEY,
        caller_id="beta",
        requested_model="anthropic/claude-3.5-haiku",
    ),
    Failure(
        "upstream-429",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_RATE_LIMITED",
        pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:error=429]] [[sim:retry-after=0.01]]")]),
        upstream_calls=3,
    ),
    Failure(
        "upstream-503-after-retries",
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:error=503]] [[sim:retry-after=0.01]]")]),
        upstream_calls=3,
    ),
    Failure(
        "moderation",
        grpc.StatusCode.PERMISSION_DENIED,
        "CONTENT_FLAGGED",
        pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:error=403]]")]),
        upstream_calls=1,
    ),
]


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
async def test_each_failure_class_writes_one_row_with_its_status(
    tmp_path: Path, failure: Failure
) -> None:
    path = tmp_path / "usage.db"
    window = Window.open()
    async with acct_gateway(path) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await gw.stub.Complete(
                failure.request, metadata=metadata(f"acct-{failure.name}", failure.key)
            )
        error = rich_error(raised.value)
        assert (error.code, error.info.reason) == (failure.code, failure.reason)
        assert error.info.metadata["request_id"] == f"acct-{failure.name}"
        rows = await rows_of(gw, path)
        chat_calls = [r for r in gw.sim.state.requests if r.path == CHAT_PATH]

    assert list(rows) == [f"acct-{failure.name}"]
    row = rows[f"acct-{failure.name}"]
    assert row["status"] == failure.code.name
    assert row["rpc"] == "Complete"
    assert row["caller_id"] == failure.caller_id
    assert row["requested_model"] == failure.requested_model
    assert len(chat_calls) == failure.upstream_calls
    assert row["retries"] == max(failure.upstream_calls - 1, 0)
    # Nothing was generated: nothing billed, nothing to reconcile.
    assert (row["generation_id"], row["served_model"], row["provider"]) == ("", "", "")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost_usd"]) == (0, 0, None)
    assert row["ttft_ms"] is None
    assert (row["cancelled"], row["reconciled"]) == (0, 0)
    window.check(row)


async def test_a_stream_the_client_cancels_writes_a_cancelled_row_with_its_generation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    window = Window.open()
    async with acct_gateway(path) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user(f"{PROMPT} [[sim:tokens=200]] [[sim:pace=20]]")]
            ),
            metadata=metadata("acct-cancelled"),
        )
        start = await call.read()
        assert isinstance(start, pb.StreamCompleteResponse)
        delta = await call.read()
        assert isinstance(delta, pb.StreamCompleteResponse)
        assert delta.HasField("delta")
        call.cancel()
        [(_, code)] = await gw.wait_finished(1)
        disconnect = await gw.sim.state.wait_for_disconnect()
        rows = await rows_of(gw, path)
        generation = await gw.sim.state.wait_for_generation(start.start.id)

    assert code == grpc.StatusCode.CANCELLED
    assert disconnect.generation_id == start.start.id
    assert generation.cancelled
    assert 0 < generation.tokens_completion < 200
    row = rows["acct-cancelled"]
    assert row["status"] == "CANCELLED"
    assert row["cancelled"] == 1
    assert row["generation_id"] == start.start.id
    assert (row["served_model"], row["provider"]) == ("openai/gpt-4o-mini", "OpenAI")
    # The usage chunk comes last: the cost is unknown until reconciliation.
    assert row["cost_usd"] is None
    assert row["reconciled"] == 0
    assert row["ttft_ms"] is not None
    window.check(row)


@pytest.mark.parametrize("rpc", ["Complete", "StreamComplete"])
async def test_a_client_deadline_on_a_hang_writes_a_deadline_exceeded_row(
    tmp_path: Path, rpc: str
) -> None:
    path = tmp_path / "usage.db"
    window = Window.open()
    messages = [user(f"{PROMPT} [[sim:hang]]")]

    async def call_with_deadline(gw: Harness) -> None:
        if rpc == "Complete":
            await gw.stub.Complete(
                pb.CompleteRequest(messages=messages),
                metadata=metadata("acct-deadline"),
                timeout=0.3,
            )
        else:
            async for _ in gw.stub.StreamComplete(
                pb.StreamCompleteRequest(messages=messages),
                metadata=metadata("acct-deadline"),
                timeout=0.3,
            ):
                pass

    async with acct_gateway(path) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call_with_deadline(gw)
        [(_, code)] = await gw.wait_finished(1)
        rows = await rows_of(gw, path)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    row = rows["acct-deadline"]
    assert row["rpc"] == rpc
    assert row["status"] == "DEADLINE_EXCEEDED"
    assert row["cancelled"] == 1
    # The server measures from when it picked the call up, a little after the client's clock.
    assert row["latency_ms"] >= 100
    assert row["ttft_ms"] is None
    assert (row["completion_tokens"], row["cost_usd"]) == (0, None)
    window.check(row)


# --- PostgreSQL ------------------------------------------------------------------------------


async def test_the_service_writes_its_rows_to_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    window = Window.open()
    async with acct_gateway(tmp_path / "unused.db", gateway={"ledger_dsn": postgres_dsn}) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:tokens=5]]")]),
            metadata=metadata("acct-pg-ok"),
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await gw.stub.Complete(
                pb.CompleteRequest(
                    messages=[user(f"{PROMPT} [[sim:error=503]] [[sim:retry-after=0.01]]")]
                ),
                metadata=metadata("acct-pg-unavailable"),
            )
        await gw.rows_written(2)
        rows = by_request_id(await postgres_rows(postgres_dsn))
        generation = gw.sim.state.generations[reply.id]

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not (tmp_path / "unused.db").exists()
    assert_no_secrets(rows.values(), SECRETS)
    assert set(rows) == {"acct-pg-ok", "acct-pg-unavailable"}
    ok, failed = rows["acct-pg-ok"], rows["acct-pg-unavailable"]
    assert_matches_generation(ok, generation)
    assert isinstance(ok["cost_usd"], Decimal)  # numeric, exact
    assert (ok["status"], ok["caller_id"], ok["rpc"]) == ("OK", "alpha", "Complete")
    assert (failed["status"], failed["retries"]) == ("UNAVAILABLE", 2)
    assert (failed["generation_id"], failed["cost_usd"]) == ("", None)
    for row in (ok, failed):
        assert row["cancelled"] is False
        window.check(row)
