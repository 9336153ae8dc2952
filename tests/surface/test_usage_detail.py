"""Usage's cost detail as OpenRouter reports it, read at the wire and given back in the contract,
and a BYOK call through a real gateway and the simulator: OpenRouter's own fees
(``tool_cost_usd``) are the cost beyond the provider's inference on OpenRouter's key, unknown
with the organisation's own key (BYOK) or without the detail."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.api import convert
from service.domain.accounting import tool_cost
from service.simulator import SimulatorConfig
from service.upstream.wire import parse_usage
from tests.harness import auth, start_gateway, user
from tests.surface.support import exact, ledger_rows


def usage(**fields: Any) -> dict[str, Any]:
    return {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940, **fields}


def test_the_fee_beyond_inference_is_openrouters_to_the_decimal() -> None:
    read = parse_usage(
        usage(
            cost=0.0071234,
            is_byok=False,
            cost_details={
                "upstream_inference_cost": 0.0001234,
                "upstream_inference_prompt_cost": 0.0001,
                "upstream_inference_completions_cost": 0.0000234,
            },
            server_tool_use={"web_search_requests": 1},  # the guides' naming
        )
    )
    assert read is not None
    assert tool_cost(read) == Decimal("0.007")
    sent = convert.usage(read)
    assert exact(sent.tool_cost_usd) == Decimal("0.007")
    assert sent.web_search_requests == 1
    assert not sent.byok
    assert exact(sent.upstream_inference_prompt_cost_usd) == Decimal("0.0001")


@pytest.mark.parametrize(
    "fields",
    [
        # BYOK: the cost is OpenRouter's fee, the provider bills the organisation directly.
        {"cost": 0.0001, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.002}},
        {"cost": 0.0001},  # no detail (older answers)
        {"cost_details": {"upstream_inference_cost": 0.0001}},  # no cost
        {"cost": 0.0001, "cost_details": {"upstream_inference_cost": None}},
    ],
)
def test_the_fee_is_unknown_without_both_amounts_on_openrouters_key(fields: dict[str, Any]) -> None:
    read = parse_usage(usage(**fields))
    assert read is not None
    assert tool_cost(read) is None
    sent = convert.usage(read)
    assert not sent.HasField("tool_cost_usd")
    assert sent.byok is (fields.get("is_byok") is True)


async def test_a_byok_call_says_so_and_leaves_the_fee_unknown() -> None:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(
                messages=[user("News, on our own key [[sim:byok]]")],
                web_search=pb.WebSearchOptions(),
            ),
            metadata=auth(),
        )
        sent = reply.usage
        assert sent.byok
        assert sent.web_search_requests == 1
        assert not sent.HasField("tool_cost_usd")
        # The provider billed the inference to the organisation; OpenRouter's cost is its
        # (simulated) 5% fee on it plus the Exa search it ran.
        upstream = exact(sent.upstream_inference_cost_usd)
        assert exact(sent.cost_usd) == upstream * Decimal("0.05") + Decimal("0.007")
        await gw.rows_written(1)
        (row,) = ledger_rows(gw.server.settings.ledger_path)
        assert (row["byok"], row["tool_cost_usd"]) == (1, None)
        assert Decimal(row["upstream_cost_usd"]) == upstream
        assert Decimal(row["cost_usd"]) == exact(sent.cost_usd)
        totals = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
        assert totals.tool_cost_usd == 0
        assert exact(totals.cost_usd) == exact(sent.cost_usd)
