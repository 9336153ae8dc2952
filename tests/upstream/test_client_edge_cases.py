"""Wire cases the simulator does not play, served by a tiny aiohttp app on loopback."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from service.domain.completion import CallStats, FinishReason, StreamFinished
from service.domain.ports import CompletionBackend
from service.errors import UpstreamRateLimitError, UpstreamUnavailableError
from service.simulator import RunningSimulator
from service.upstream import OpenRouterClient

from .conftest import ClientFactory, deadline_in, drain, request, settings_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[OpenRouterClient]]]:
    """Serve one handler at /api/v1/chat/completions; returns a started client for it."""
    runners: list[web.AppRunner] = []
    clients: list[OpenRouterClient] = []

    async def start(handler: Handler) -> OpenRouterClient:
        app = web.Application()
        app.router.add_post("/api/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        client = OpenRouterClient(
            settings_for(f"http://127.0.0.1:{port}/api/v1", max_retries=0),
            rng=random.Random(1),
        )
        clients.append(client)
        await client.start()
        return client

    yield start
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


async def test_eof_after_finish_without_done_finishes_cleanly(
    serve: Callable[[Handler], Awaitable[OpenRouterClient]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"id":"gen-1","choices":[{"delta":{"content":"hi"}}]}\n\n')
        await response.write(
            b'data: {"id":"gen-1","choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
        )
        return response  # EOF: no usage, no [DONE]

    client = await serve(handler)
    events = await drain(client.stream(request(), deadline=deadline_in(5)))
    assert events[-1] == StreamFinished(FinishReason.STOP, "", None)


async def test_json_error_with_200_on_a_stream(
    serve: Callable[[Handler], Awaitable[OpenRouterClient]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"code": 429, "message": "Rate limit exceeded", "metadata": {}}},
            headers={"Retry-After": "2"},
        )

    client = await serve(handler)
    with pytest.raises(UpstreamRateLimitError) as info:
        await drain(client.stream(request(), deadline=deadline_in(5)))
    assert info.value.metadata["upstream_status"] == "429"


async def test_unknown_5xx_with_html_body(
    serve: Callable[[Handler], Awaitable[OpenRouterClient]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=504, text="<html>gateway timeout</html>", content_type="text/html"
        )

    client = await serve(handler)
    with pytest.raises(UpstreamUnavailableError) as info:
        await client.complete(request(), deadline=deadline_in(5))
    assert info.value.reason == "UPSTREAM_TIMEOUT"
    assert "<html>" not in info.value.message


async def test_choice_error_is_mapped_and_keeps_usage(
    make_client: ClientFactory, sim: RunningSimulator
) -> None:
    client = make_client(max_retries=0)
    await client.start()
    stats = CallStats()
    with pytest.raises(UpstreamUnavailableError) as info:
        await client.complete(request("[[sim:choice-error]]"), deadline=deadline_in(5), stats=stats)
    assert info.value.status == 502
    assert info.value.metadata["error_type"] == "provider_unavailable"
    assert stats.usage is not None
    assert stats.generation_id.startswith("gen-")


async def test_client_satisfies_the_backend_protocol(sim: RunningSimulator) -> None:
    # The annotation is the real check: mypy fails here if a signature drifts from the port.
    async with OpenRouterClient(settings_for(sim.base_url)) as client:
        backend: CompletionBackend = client
        events = await drain(backend.stream(request(), deadline=deadline_in(5)))
    assert isinstance(events[-1], StreamFinished)
