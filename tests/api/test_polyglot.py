"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, straight from the .proto) against a
real gateway: every RPC, and the rich error status read by a second language."""

from __future__ import annotations

import json
import os
import shutil

from tests.api.support import ROOT, run_process
from tests.harness import ALPHA_KEY, delta_runs, start_gateway

NODE_MODULES = ROOT / "tools" / "node_modules"
CLIENT = ROOT / "tests" / "node" / "client.js"


def _node() -> str:
    node = shutil.which("node")
    # Fail, never skip: CI must run the polyglot check (`make test` installs the modules).
    assert node is not None, "node is not on PATH"
    assert (NODE_MODULES / "@grpc" / "grpc-js").is_dir(), "run: cd tools && npm ci"
    assert (NODE_MODULES / "@grpc" / "proto-loader").is_dir(), "run: cd tools && npm ci"
    return node


async def test_a_node_client_calls_every_rpc_and_reads_rich_errors() -> None:
    node = _node()
    async with start_gateway() as gw:
        ran = await run_process(
            node,
            str(CLIENT),
            gw.server.address,
            ALPHA_KEY,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
        assert ran.returncode == 0, ran.stderr
        out = json.loads(ran.stdout)
        upstream = [r.body for r in gw.sim.state.requests if r.path.endswith("/completions")]

    unary = out["complete"]
    assert unary["id"].startswith("gen-")
    assert unary["model"] == "openai/gpt-4o-mini"
    assert unary["finish_reason"] == "FINISH_REASON_STOP"
    assert unary["completion_tokens"] == 5
    assert unary["content"]
    assert unary["request_id"] == "node-req-1"
    assert upstream[0]["temperature"] == 0.5

    stream = out["stream"]
    assert stream["code"] == 0
    assert delta_runs(stream["events"]) == ["start", "delta", "end"]
    assert stream["start_id"].startswith("gen-")
    assert stream["content"] == unary["content"]
    assert stream["finish_reason"] == "FINISH_REASON_STOP"
    assert stream["completion_tokens"] == 5
    assert "temperature" not in upstream[1]

    listing = out["list_models"]
    assert listing["ids"] == sorted(listing["ids"])
    assert "anthropic/claude-3.5-haiku" in listing["ids"]
    assert listing["default_model"] == "openai/gpt-4o-mini"
    assert listing["prices"]["openai/gpt-4o-mini"] == "0.00000015"

    unauthenticated = out["unauthenticated"]
    assert unauthenticated["code"] == 16
    assert unauthenticated["has_status_details"] is True
    assert unauthenticated["status_code"] == 16
    assert unauthenticated["request_id"] == "node-req-err"
    assert unauthenticated["error_info"] == {
        "reason": "API_KEY_INVALID",
        "domain": "llmgateway.v1",
        "metadata": {"request_id": "node-req-err"},
    }

    invalid = out["invalid"]
    assert invalid["code"] == 3
    assert invalid["has_status_details"] is True
    assert invalid["error_info"]["reason"] == "INVALID_ARGUMENT"
    assert invalid["detail_types"] == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "type.googleapis.com/google.rpc.BadRequest",
    ]
