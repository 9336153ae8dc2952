"""`POST /api/v1/embeddings`: deterministic vectors in OpenRouter's shape.

Each input gets a unit vector seeded by a hash of the model and the input, so the same input
always embeds to the same vector and different inputs (almost surely) to different ones. As
on OpenRouter: ``input`` is a string, a list of strings, token ids, or a list of
``{"content": [parts]}``; ``encoding_format`` is ``float`` (default) or ``base64``
(little-endian float32); ``dimensions`` shortens the vectors of models that can (others
answer 400). Directives (``[[sim:error=429]]``, ``delay=MS``, ``fail-times=N``) work in the
input text as in chat.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import struct
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from .catalog import ModelInfo
from .context import CONTEXT_KEY, SimulatorContext
from .errors import bad_request, invalid_model, no_endpoints_for_modality, scenario_error
from .generate import estimate_tokens, random_id
from .intake import admit, check_auth, error_response
from .media import MediaError, read_parts
from .providers import RoutingError, route
from .scenarios import DirectiveError, parse_directives, strip_directives
from .state import GenerationRecord


class _RejectedError(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _reject(message: str) -> _RejectedError:
    return _RejectedError(error_response(bad_request(message)))


def _inputs(value: Any) -> list[Any]:
    """The inputs as a list: each a string, a token-id list, or a ``content`` list of parts."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise _reject('Input required: specify "input"')
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]  # one input of token ids
    inputs: list[Any] = []
    for item in value:
        if isinstance(item, str) or (
            isinstance(item, list) and all(isinstance(v, int) for v in item)
        ):
            inputs.append(item)
        elif isinstance(item, dict) and isinstance(item.get("content"), list):
            inputs.append(item["content"])
        else:
            raise _reject("Each input must be a string, token ids or {content: [parts]}")
    return inputs


def _texts(item: Any) -> list[str]:
    if isinstance(item, str):
        return [item]
    if isinstance(item, list):
        return [p["text"] for p in item if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def unit_vector(model_id: str, item: Any, size: int) -> list[float]:
    """The deterministic embedding of one input: float32 values of norm 1."""
    seed = hashlib.sha256(
        model_id.encode() + b"\x00" + orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    ).digest()
    rng = random.Random(seed)  # content, not secrets
    values = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Through float32, as real models answer: the JSON numbers are exact float32 values.
    return list(struct.unpack(f"<{size}f", struct.pack(f"<{size}f", *(v / norm for v in values))))


def _dimensions(body: dict[str, Any], model: ModelInfo) -> int:
    wanted = body.get("dimensions")
    if wanted is None:
        return model.embedding_dimensions
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise _reject("dimensions must be a positive integer")
    if not model.flexible_dimensions and wanted != model.embedding_dimensions:
        raise _reject(f"This model does not support specifying dimensions ({model.id})")
    if wanted > model.embedding_dimensions:
        raise _reject(
            f"dimensions must be at most {model.embedding_dimensions} for this model ({model.id})"
        )
    return wanted


def _token_count(item: Any, media_tokens: int) -> int:
    if isinstance(item, list) and all(isinstance(v, int) for v in item):
        return len(item)
    return 1 + sum(estimate_tokens(strip_directives(t)) for t in _texts(item)) + media_tokens


async def handle_embeddings(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    created = int(time.time())
    generation_id = f"gen-emb-{created}-{random_id(ctx.rng, 20)}"
    admitted = await admit(request, ctx, generation_id=generation_id)
    auth_error = check_auth(request, ctx.config)
    if auth_error is not None:
        return error_response(auth_error)
    try:
        return await _serve(ctx, admitted.body, admitted.started, generation_id, created)
    except _RejectedError as exc:
        return exc.response
    except DirectiveError as exc:
        return error_response(bad_request(f"Simulator directive error: {exc}"))


async def _serve(
    ctx: SimulatorContext, body: Any, started: float, generation_id: str, created: int
) -> web.Response:
    if not isinstance(body, dict):
        raise _reject("Invalid JSON in request body")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise _reject("model must be a string")
    model = ctx.catalog.get(model_id)
    if model is None:
        raise _RejectedError(error_response(invalid_model(model_id)))
    if not model.makes("embeddings"):
        raise _RejectedError(error_response(no_endpoints_for_modality("embeddings")))
    inputs = _inputs(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _reject("encoding_format must be 'float' or 'base64'")
    size = _dimensions(body, model)
    scenario = parse_directives(text for item in inputs for text in _texts(item))
    try:
        # As for chat: the model as the provider its preferences choose serves it.
        model = route(model, model_id, body, scenario.serve_provider, set)
    except RoutingError as exc:
        raise _RejectedError(error_response(exc.reply)) from None
    if scenario.delay_ms:
        await asyncio.sleep(scenario.delay_ms / 1000)
    prompt = 0
    images = 0
    for item in inputs:
        media_tokens = 0
        if isinstance(item, list) and item and isinstance(item[0], dict):
            try:
                media = read_parts([{"content": item}])
            except MediaError as exc:
                raise _reject(str(exc)) from None
            missing = next((m for m in sorted(media.modalities) if not model.takes(m)), None)
            if missing is not None:
                raise _RejectedError(error_response(no_endpoints_for_modality(missing)))
            media_tokens = media.tokens
            images += media.images
        prompt += _token_count(item, media_tokens)
    if scenario.error is not None and ctx.state.should_fail(body, scenario.fail_times):
        return error_response(
            scenario_error(
                scenario.error,
                model_id=model_id,
                provider_name=model.provider_name,
                retry_after=scenario.retry_after,
                flagged_input="",
                context_length=model.context_length,
                prompt_tokens=prompt,
            )
        )
    data = []
    for index, item in enumerate(inputs):
        vector = unit_vector(model.id, item, size)
        embedding: Any = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    cost = float(model.prompt_price * prompt + model.image_price * images)
    latency_ms = round((time.monotonic() - started) * 1000)
    ctx.state.record_generation(
        GenerationRecord(
            id=generation_id,
            model=model.id,
            provider_name=model.provider_name,
            created_at=datetime.fromtimestamp(created, UTC).isoformat(),
            streamed=False,
            cancelled=False,
            latency_ms=latency_ms,
            generation_time_ms=latency_ms,
            finish_reason=None,
            native_finish_reason=None,
            tokens_prompt=prompt,
            tokens_completion=0,
            tokens_reasoning=0,
            total_cost=cost,
            external_user=body.get("user") if isinstance(body.get("user"), str) else None,
        )
    )
    payload = {
        "id": generation_id,
        "object": "list",
        "model": model.id,
        "provider": model.provider_name,
        "data": data,
        "usage": {
            "prompt_tokens": prompt,
            "total_tokens": prompt,
            "cost": cost,
            "is_byok": False,
            "cost_details": {"upstream_inference_cost": None},
        },
    }
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
