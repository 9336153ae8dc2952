"""grpcurl, through server reflection only (no proto files): list, describe, call, errors."""

from __future__ import annotations

import json

from tests.api.support import ROOT, Finished, run_process
from tests.harness import ALPHA_KEY, delta_runs, start_gateway

GRPCURL = str(ROOT / ".venv" / "bin" / "grpcurl")
SERVICE = "llmgateway.v1.CompletionService"


async def grpcurl(
    address: str,
    *verb: str,
    data: str | None = None,
    key: str | None = None,
    json_errors: bool = False,
) -> Finished:
    """``grpcurl [flags] address verb...``; the flags come first, as grpcurl requires."""
    flags = ["-plaintext"]
    if key is not None:
        flags += ["-H", f"authorization: Bearer {key}"]
    if data is not None:
        flags += ["-d", data]
    if json_errors:
        flags.append("-format-error")
    return await run_process(GRPCURL, *flags, address, *verb)


async def test_grpcurl_lists_and_describes_the_service_by_reflection() -> None:
    async with start_gateway() as gw:
        listing = await grpcurl(gw.server.address, "list")
        assert listing.returncode == 0, listing.stderr
        assert SERVICE in listing.stdout.split()
        assert "grpc.health.v1.Health" in listing.stdout.split()

        described = await grpcurl(gw.server.address, "describe", SERVICE)
        assert described.returncode == 0, described.stderr
        assert (
            "rpc StreamComplete ( .llmgateway.v1.StreamCompleteRequest ) returns "
            "( stream .llmgateway.v1.StreamCompleteResponse );"
        ) in described.stdout
        # The field behaviours travel with the descriptors (google/api/field_behavior.proto is
        # served by reflection too, or grpcurl could not print them).
        message = await grpcurl(gw.server.address, "describe", "llmgateway.v1.SamplingParams")
        assert (
            "optional double temperature = 1 [(.google.api.field_behavior) = OPTIONAL];"
        ) in message.stdout
        request = await grpcurl(gw.server.address, "describe", "llmgateway.v1.CompleteRequest")
        assert (
            "repeated .llmgateway.v1.Message messages = 3 "
            "[(.google.api.field_behavior) = REQUIRED];"
        ) in request.stdout


async def test_grpcurl_calls_complete_and_stream_complete() -> None:
    request = json.dumps({"messages": [{"role": "ROLE_USER", "content": "Hello [[sim:tokens=3]]"}]})
    async with start_gateway() as gw:
        unary = await grpcurl(gw.server.address, f"{SERVICE}/Complete", data=request, key=ALPHA_KEY)
        assert unary.returncode == 0, unary.stderr
        reply = json.loads(unary.stdout)
        assert reply["content"]
        assert reply["finish_reason"] == "FINISH_REASON_STOP"
        assert reply["usage"]["completion_tokens"] == 3

        streamed = await grpcurl(
            gw.server.address, f"{SERVICE}/StreamComplete", data=request, key=ALPHA_KEY
        )
        assert streamed.returncode == 0, streamed.stderr
        messages = [json.loads(m) for m in streamed.stdout.replace("}\n{", "}\0{").split("\0")]
        assert delta_runs(next(iter(m)) for m in messages) == ["start", "delta", "end"]
        assert "".join(m["delta"]["content"] for m in messages[1:-1]) == reply["content"]


async def test_grpcurl_prints_the_code_and_rich_details_of_an_error() -> None:
    async with start_gateway() as gw:
        unknown_key = await grpcurl(
            gw.server.address,
            f"{SERVICE}/Complete",
            data='{"messages": [{"role": "ROLE_USER", "content": "Hi"}]}',
            key="key-nobody-knows",
        )
        assert unknown_key.returncode == 64 + 16  # grpcurl: 64 + the status code
        assert "Code: Unauthenticated" in unknown_key.stderr
        assert '"reason":"API_KEY_INVALID"' in unknown_key.stderr
        assert "key-nobody-knows" not in unknown_key.stderr

        invalid = await grpcurl(
            gw.server.address,
            f"{SERVICE}/Complete",
            data='{"messages": []}',
            key=ALPHA_KEY,
            json_errors=True,
        )
        assert invalid.returncode == 64 + 3
        status = json.loads(invalid.stderr)
        assert status["code"] == 3
        kinds = {d["@type"].rsplit("/", 1)[1]: d for d in status["details"]}
        assert kinds["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
        assert kinds["google.rpc.BadRequest"]["field_violations"][0]["field"] == "messages"
