"""Quotas see the policy: the worst-case reservation prices each kind at the policy's (or the
request's) max price where that is below the catalog's, so a tight policy reserves less."""

from __future__ import annotations

from decimal import Decimal

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.accounting import estimate_prompt_tokens
from service.domain.completion import CompletionRequest, Message, Role
from tests.harness import rich_error, start_gateway
from tests.policy.support import as_caller, ask, callers

LLAMA = "meta-llama/llama-3.1-8b-instruct"
# The catalog prices llama at 0.02 / 0.03 USD per million tokens; Chutes serves it at 0.01
# for both, the only provider within a 0.01 completion ceiling.
LIMITS = '[callers.limits]\nusd_per_day = "0.00002"'
POLICIES = {
    "capped": f'max_price = {{ completion = "0.01" }}\n{LIMITS}',
    "uncapped": LIMITS,
    "loose": 'max_price = { completion = "0.03" }\n[callers.limits]\nusd_per_day = "1"',
}
MAX_TOKENS = 1000
TEXT = "Hi"


def reservation(completion_per_million: str, text: str = TEXT) -> Decimal:
    prompt = estimate_prompt_tokens(
        CompletionRequest(model=LLAMA, messages=(Message(Role.USER, text),))
    )
    per_token = Decimal(completion_per_million) / 1_000_000
    return Decimal("0.00000002") * prompt + per_token * MAX_TOKENS


SAMPLING = pb.SamplingParams(max_tokens=MAX_TOKENS)


def request(**fields: object) -> pb.CompleteRequest:
    return ask(TEXT, model=LLAMA, sampling=SAMPLING, **fields)


async def test_a_tight_policy_reserves_less_and_fits_a_budget_the_catalog_price_does_not() -> None:
    # 0.00002 USD a day: the catalog's worst case (~0.00003) does not fit, the capped one
    # (~0.00001) does.
    assert reservation("0.03") > Decimal("0.00002") > reservation("0.01")
    async with start_gateway(callers=callers(POLICIES)) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(request(), metadata=as_caller("uncapped"))
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"this request alone needs {reservation('0.03')}" in error.message

        reply = await gw.stub.Complete(request(), metadata=as_caller("capped"))
        assert reply.provider == "Chutes"


async def held_reservation(caller: str, request_: pb.CompleteRequest) -> float:
    """The USD a hanging call of ``caller`` holds against its budget."""
    async with start_gateway(callers=callers(POLICIES)) as gw:
        held = gw.stub.Complete(request_, metadata=as_caller(caller))
        await gw.sim.state.wait_for_request(lambda r: r.path.endswith("/chat/completions"))
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=as_caller(caller))
        held.cancel()
    [budget] = [q for q in usage.quotas if q.kind == pb.QUOTA_KIND_USD_PER_DAY]
    return budget.used


HANG = f"{TEXT} [[sim:hang]]"


async def test_the_in_flight_reservation_is_the_capped_worst_case() -> None:
    used = await held_reservation("capped", ask(HANG, model=LLAMA, sampling=SAMPLING))
    assert used == pytest.approx(float(reservation("0.01", HANG)), rel=1e-12)


async def test_a_request_max_price_below_the_policys_reserves_less_still() -> None:
    # The policy's ceiling is the catalog's price; the request's own is lower.
    narrower = pb.ProviderPreferences(max_price=pb.MaxPrice(completion="0.01"))
    used = await held_reservation(
        "loose", ask(HANG, model=LLAMA, sampling=SAMPLING, provider=narrower)
    )
    assert used == pytest.approx(float(reservation("0.01", HANG)), rel=1e-12)
    loose = await held_reservation("loose", ask(HANG, model=LLAMA, sampling=SAMPLING))
    assert loose == pytest.approx(float(reservation("0.03", HANG)), rel=1e-12)
