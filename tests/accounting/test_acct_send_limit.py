"""An answer larger than the gRPC send limit: RESOURCE_EXHAUSTED / ``RESPONSE_TOO_LARGE`` with
ErrorInfo (its size and the limit), and a row that says so, with what OpenRouter billed.

Before, the servicer returned the answer, the ledger booked the call OK and gRPC then failed to
send it: the caller got RESOURCE_EXHAUSTED without ErrorInfo ("Sent message larger than max"),
and the row said OK. Tested with a small configured limit (``GATEWAY_MAX_MESSAGE_BYTES``).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.accounting.support import acct_gateway, by_request_id, sqlite_rows
from tests.harness import Harness, auth, rich_error, user

LIMIT = 2048
SMALL_LIMITS = {"max_message_bytes": LIMIT, "max_media_bytes": 1024}
LONG = "Tell it all [[sim:tokens=1500]]"  # ~10 kB of text: five times the limit
SHORT = "Hi [[sim:tokens=5]]"


def metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    return (*auth(), ("x-request-id", request_id))


def check_refusal(exc: grpc.aio.AioRpcError) -> None:
    error = rich_error(exc)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.info.reason == "RESPONSE_TOO_LARGE"
    assert error.info.domain == "llmgateway.v1"
    assert error.info.metadata["limit_bytes"] == str(LIMIT)
    assert int(error.info.metadata["size_bytes"]) > LIMIT
    assert str(LIMIT) in error.message


async def rows(gw: Harness, path: Path, rpcs: int) -> dict[str, dict[str, object]]:
    await gw.rows_written(rpcs)
    return by_request_id(sqlite_rows(path))


async def test_a_unary_answer_over_the_limit_is_refused_with_error_info_and_its_row_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    async with acct_gateway(path, gateway=SMALL_LIMITS) as gw:
        ok = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user(SHORT)]), metadata=metadata("small")
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.Complete(
                pb.CompleteRequest(
                    messages=[user(LONG)], sampling=pb.SamplingParams(max_tokens=4000)
                ),
                metadata=metadata("large"),
            )
        generations = dict(gw.sim.state.generations)
        found = await rows(gw, path, 2)
    check_refusal(refused.value)
    assert ok.content  # an answer within the limit goes out as before
    assert found["small"]["status"] == "OK"
    large = found["large"]
    assert large["status"] == "RESOURCE_EXHAUSTED"
    # What OpenRouter billed for the answer that could not be sent.
    generation = generations[str(large["generation_id"])]
    assert large["completion_tokens"] == generation.tokens_completion == 1500
    assert large["prompt_tokens"] == generation.tokens_prompt
    assert Decimal(str(large["cost_usd"])) == Decimal(repr(generation.total_cost)) > 0


async def test_a_stream_message_over_the_limit_ends_the_stream_with_error_info(
    tmp_path: Path,
) -> None:
    """Fast mode writes the whole upstream stream at once; the gateway joins what arrived
    together into one delta, which is then larger than the limit."""
    path = tmp_path / "usage.db"
    async with acct_gateway(
        path, sim_config=SimulatorConfig(fast=True), gateway=SMALL_LIMITS
    ) as gw:
        stream = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user(LONG)], sampling=pb.SamplingParams(max_tokens=4000)
            ),
            metadata=metadata("stream"),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stream:
                pass
        [generation] = gw.sim.state.generations.values()
        found = await rows(gw, path, 1)
    check_refusal(refused.value)
    row = found["stream"]
    assert row["status"] == "RESOURCE_EXHAUSTED"
    assert row["generation_id"] == generation.id
    # The usage may not have arrived when the stream was ended: then the row is marked for
    # reconciliation from /generation, which knows what was billed.
    assert row["completion_tokens"] == generation.tokens_completion or (
        row["cancelled"] == 1 and row["reconciled"] == 0
    )
