"""Request intake shared by every API route: read, record (without secrets), authenticate."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .config import SimulatorConfig
from .context import SimulatorContext
from .errors import ErrorReply, no_credentials, user_not_found
from .state import RecordedRequest

# Never recorded, never logged: only their presence is.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization"})


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request after intake; `body` is the parsed JSON or None."""

    request_id: str
    started: float
    raw: bytes
    body: Any


async def admit(
    request: web.Request, ctx: SimulatorContext, *, generation_id: str | None = None
) -> Admitted:
    started = time.monotonic()
    raw = await request.read()
    body = loads_or_none(raw)
    request_id = ctx.state.next_request_id()
    if ctx.config.fast:
        ctx.state.count_request()
    else:
        headers = {
            name.lower(): value
            for name, value in request.headers.items()
            if name.lower() not in _SECRET_HEADERS
        }
        ctx.state.record_request(
            RecordedRequest(
                id=request_id,
                time=started,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=headers,
                has_authorization="Authorization" in request.headers,
                body=body,
                generation_id=generation_id,
            )
        )
    return Admitted(request_id, started, raw, body)


def loads_or_none(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def check_auth(request: web.Request, config: SimulatorConfig) -> ErrorReply | None:
    """OpenRouter's two 401s: no usable bearer token, or a key it does not know."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return no_credentials()
    expected = config.expected_api_key
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        return user_not_found()
    return None


def error_response(reply: ErrorReply) -> web.Response:
    return web.Response(
        status=reply.status,
        body=reply.encoded(),
        content_type="application/json",
        headers=reply.headers,
    )
