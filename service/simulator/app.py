"""The simulator's aiohttp application: OpenRouter routes under /api/v1, test routes under /_sim."""

from __future__ import annotations

import orjson
from aiohttp import web

from .catalog import DEFAULT_CATALOG, Catalog
from .chat import handle_chat
from .config import SimulatorConfig
from .context import CONTEXT_KEY, STATE_KEY, SimulatorContext
from .embeddings import handle_embeddings
from .errors import bad_request, generation_not_found
from .intake import admit, check_auth, error_response
from .state import SimulatorState

API_PREFIX = "/api/v1"


def create_app(
    config: SimulatorConfig | None = None, *, catalog: Catalog | None = None
) -> web.Application:
    """A fresh simulator app with its own state.

    Serve it with aiohttp's ``handler_cancellation=True`` (as ``run_simulator`` does) so a
    client disconnect cancels the handler at once and is recorded with an accurate time.
    """
    config = config or SimulatorConfig()
    state = SimulatorState()
    app = web.Application()
    app[CONTEXT_KEY] = SimulatorContext(config, catalog or DEFAULT_CATALOG, state)
    app[STATE_KEY] = state
    app.router.add_post(f"{API_PREFIX}/chat/completions", handle_chat)
    app.router.add_post(f"{API_PREFIX}/embeddings", handle_embeddings)
    app.router.add_get(f"{API_PREFIX}/models", handle_models)
    app.router.add_get(f"{API_PREFIX}/generation", handle_generation)
    app.router.add_get("/_sim/requests", handle_sim_requests)
    app.router.add_get("/_sim/disconnects", handle_sim_disconnects)
    app.router.add_get("/_sim/generations", handle_sim_generations)
    app.router.add_post("/_sim/reset", handle_sim_reset)
    return app


def simulator_state(app: web.Application) -> SimulatorState:
    """The state of an app made by `create_app`, for in-process assertions."""
    return app[STATE_KEY]


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def handle_models(request: web.Request) -> web.Response:
    """`GET /models`, like OpenRouter public (no key needed), with its two filters."""
    ctx = request.app[CONTEXT_KEY]
    await admit(request, ctx)
    wanted = request.query.get("supported_parameters", "")
    outputs = request.query.get("output_modalities", "")
    return _json({"data": ctx.catalog.listing(wanted.split(","), outputs)})


async def handle_generation(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    await admit(request, ctx)
    auth_error = check_auth(request, ctx.config)
    if auth_error is not None:
        return error_response(auth_error)
    generation_id = request.query.get("id")
    if not generation_id:
        return error_response(bad_request("Missing required query parameter: id"))
    record = ctx.state.generations.get(generation_id)
    if record is None:
        return error_response(generation_not_found())
    return _json({"data": record.to_json()})


async def handle_sim_requests(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return _json(
        {"count": state.request_count, "data": [record.to_json() for record in state.requests]}
    )


async def handle_sim_disconnects(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return _json({"data": [record.to_json() for record in state.disconnects]})


async def handle_sim_generations(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return _json({"data": [record.to_json() for record in state.generations.values()]})


async def handle_sim_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return _json({"ok": True})
