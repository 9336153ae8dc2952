"""The floor: the least a grpc.aio servicer of the same contract can do to forward a call.

One shared aiohttp session, one upstream request per RPC, orjson both ways; no auth, no
validation, no ledger, no telemetry, no retries. The gateway's added cost is measured against
this. ``python -m bench.floor --upstream URL [--listen 127.0.0.1:0]`` prints ``PORT <n>``
once serving. ``GATEWAY_EVENT_LOOP=uvloop`` runs it on uvloop, as the gateway would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]

_ROLES = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_DEVELOPER: "developer",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_TOOL: "tool",
}
_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "error": pb.FINISH_REASON_ERROR,
}
# The gateway's server options (service/server.py), so that transport settings do not differ.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]
_DEFAULT_MAX_TOKENS = 1024


def _usage(raw: object) -> pb.Usage:
    if not isinstance(raw, dict):
        return pb.Usage()
    return pb.Usage(
        prompt_tokens=raw.get("prompt_tokens") or 0,
        completion_tokens=raw.get("completion_tokens") or 0,
        total_tokens=raw.get("total_tokens") or 0,
        cost_usd=float(raw.get("cost") or 0.0),
    )


class FloorServicer(pb_grpc.CompletionServiceServicer):
    """``Complete`` and ``StreamComplete`` only; the other RPCs are left UNIMPLEMENTED."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, default_model: str) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = default_model

    def _body(self, request: pb.CompleteRequest | pb.StreamCompleteRequest, stream: bool) -> bytes:
        max_tokens = _DEFAULT_MAX_TOKENS
        if request.HasField("sampling") and request.sampling.HasField("max_tokens"):
            max_tokens = request.sampling.max_tokens
        return orjson.dumps(
            {
                "model": request.model or self._model,
                "messages": [
                    {"role": _ROLES.get(m.role, "user"), "content": m.content}
                    for m in request.messages
                ],
                "stream": stream,
                "max_tokens": max_tokens,
            }
        )

    async def Complete(  # noqa: N802 - the contract's method names
        self, request: pb.CompleteRequest, context: Context
    ) -> pb.CompleteResponse:
        async with self._session.post(self._url, data=self._body(request, False)) as response:
            raw = await response.read()
            status = response.status
        if status != 200:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream status {status}")
        data = orjson.loads(raw)
        choice = data["choices"][0]
        return pb.CompleteResponse(
            id=data.get("id") or "",
            model=data.get("model") or "",
            provider=data.get("provider") or "",
            content=choice["message"].get("content") or "",
            finish_reason=_FINISH.get(choice.get("finish_reason"), pb.FINISH_REASON_UNSPECIFIED),
            native_finish_reason=choice.get("native_finish_reason") or "",
            usage=_usage(data.get("usage")),
        )

    async def StreamComplete(  # noqa: N802
        self, request: pb.StreamCompleteRequest, context: Context
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        async with self._session.post(self._url, data=self._body(request, True)) as response:
            if response.status != 200:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream {response.status}")
            started = False
            finish = pb.FINISH_REASON_UNSPECIFIED
            native = ""
            usage = pb.Usage()
            pending = b""
            async for chunk in response.content.iter_any():
                frames = (pending + chunk).split(b"\n\n")
                pending = frames.pop()
                for frame in frames:
                    if not frame.startswith(b"data: "):
                        continue
                    payload = frame[6:]
                    if payload == b"[DONE]":
                        yield pb.StreamCompleteResponse(
                            end=pb.StreamEnd(
                                finish_reason=finish, native_finish_reason=native, usage=usage
                            )
                        )
                        return
                    data = orjson.loads(payload)
                    if not started:
                        started = True
                        yield pb.StreamCompleteResponse(
                            start=pb.StreamStart(
                                id=data.get("id") or "",
                                model=data.get("model") or "",
                                provider=data.get("provider") or "",
                            )
                        )
                    if "usage" in data:
                        usage = _usage(data["usage"])
                    for choice in data.get("choices") or ():
                        text = choice.get("delta", {}).get("content")
                        if text:
                            yield pb.StreamCompleteResponse(delta=pb.StreamDelta(content=text))
                        if choice.get("finish_reason"):
                            finish = _FINISH.get(choice["finish_reason"], finish)
                            native = choice.get("native_finish_reason") or ""
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the upstream stream ended early")

    async def CompleteStructured(  # noqa: N802
        self, request: pb.CompleteStructuredRequest, context: Context
    ) -> pb.CompleteStructuredResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the floor")
        raise AssertionError("unreachable")

    async def ListModels(  # noqa: N802
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the floor")
        raise AssertionError("unreachable")

    async def GetUsage(  # noqa: N802
        self, request: pb.GetUsageRequest, context: Context
    ) -> pb.GetUsageResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the floor")
        raise AssertionError("unreachable")

    async def StreamCompleteStructured(  # noqa: N802
        self, request: pb.StreamCompleteStructuredRequest, context: Context
    ) -> AsyncIterator[pb.StreamCompleteStructuredResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the floor")
        yield pb.StreamCompleteStructuredResponse()  # unreachable: makes this a generator

    async def Embed(  # noqa: N802
        self, request: pb.EmbedRequest, context: Context
    ) -> pb.EmbedResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the floor")
        raise AssertionError("unreachable")


async def serve(listen: str, upstream: str, api_key: str, default_model: str) -> None:
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=1024, keepalive_timeout=30.0)
    timeout = aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0, sock_read=60.0)
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "X-Title": "LLM Gateway floor",
    }
    options = list(SERVER_OPTIONS)
    extra = os.environ.get("BENCH_GRPC_SERVER_OPTIONS")
    if extra:
        options += [(str(name), value) for name, value in orjson.loads(extra)]
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        server = grpc.aio.server(options=options)
        pb_grpc.add_CompletionServiceServicer_to_server(
            FloorServicer(session, upstream, default_model), server
        )
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port(listen)
        await server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        print(f"PORT {port}", flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://h:p/api/v1")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--default-model", default="openrouter/sim-fast")
    args = parser.parse_args(argv)
    api_key = os.environ.get("OPENROUTER_API_KEY", "sk-or-bench")
    if os.environ.get("GATEWAY_EVENT_LOOP", "asyncio") == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.listen, args.upstream, api_key, args.default_model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
