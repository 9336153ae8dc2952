"""The simulator's content surface on the wire: media parts checked and counted, reasoning per
family (and checked when sent back), images, annotations, refusals, logprobs, unknown kinds."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest

from service.simulator.reasoning import signature
from service.simulator.testing import chat_body, parse_sse

CHAT = "/api/v1/chat/completions"
PIXEL = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()


async def post(session: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(CHAT, json=body) as resp:
        if body.get("stream"):
            return resp.status, parse_sse(await resp.read())
        return resp.status, await resp.json()


def parts_body(*parts: dict[str, Any], model: str = "openai/gpt-4o-mini", **fields: Any) -> Any:
    body = chat_body("x", model=model, **fields)
    body["messages"][0]["content"] = [{"type": "text", "text": "Look"}, *parts]
    return body


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}, "http(s) or data URL"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}, "base64"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA"}}, "data and format"),
        ({"type": "file", "file": {"file_data": PIXEL}}, "filename"),
        ({"type": "hologram", "hologram": {}}, "Invalid content part type"),
    ],
)
async def test_a_malformed_part_is_400(
    session: aiohttp.ClientSession, part: dict[str, Any], message: str
) -> None:
    status, body = await post(session, parts_body(part))
    assert status == 400
    assert message in body["error"]["message"]


async def test_a_kind_the_model_does_not_take_is_404_and_files_go_anywhere(
    session: aiohttp.ClientSession,
) -> None:
    image = {"type": "image_url", "image_url": {"url": PIXEL}}
    status, body = await post(session, parts_body(image, model="mistralai/mistral-7b-instruct"))
    assert (status, body["error"]["message"]) == (
        404,
        "No endpoints found that support image input",
    )
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": PIXEL}}
    status, body = await post(session, parts_body(pdf, model="mistralai/mistral-7b-instruct"))
    assert status == 200
    assert body["choices"][0]["message"]["annotations"][0]["file"]["name"] == "a.pdf"
    native = {"plugins": [{"id": "file-parser", "pdf": {"engine": "native"}}]}
    status, _ = await post(
        session, parts_body(pdf, model="mistralai/mistral-7b-instruct", **native)
    )
    assert status == 404


async def test_media_are_counted_and_priced(session: aiohttp.ClientSession) -> None:
    audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(bytes(640)).decode(), "format": "wav"},
    }
    image = {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}}
    status, body = await post(
        session, parts_body(image, audio, model="google/gemini-2.0-flash-001")
    )
    assert status == 200
    details = body["usage"]["prompt_tokens_details"]
    assert (details["image_tokens"], details["audio_tokens"]) == (85, 11)
    plain_status, plain = await post(session, chat_body("x", model="google/gemini-2.0-flash-001"))
    assert plain_status == 200
    # An image costs its per-image price on top of its tokens.
    assert body["usage"]["cost"] > plain["usage"]["cost"] + 0.0000258


async def test_reasoning_families_and_their_check_when_sent_back(
    session: aiohttp.ClientSession,
) -> None:
    asked: dict[str, Any] = {"reasoning": {"effort": "high"}}
    _, claude = await post(session, chat_body("2+2?", model="anthropic/claude-sonnet-4.5", **asked))
    [block] = claude["choices"][0]["message"]["reasoning_details"]
    assert block["signature"] == signature(block["text"])
    history = chat_body("2+2?", model="anthropic/claude-sonnet-4.5")
    history["messages"] += [
        {"role": "assistant", "content": "4", "reasoning_details": [block]},
        {"role": "user", "content": "x3?"},
    ]
    status, _ = await post(session, history)
    assert status == 200
    history["messages"][1]["reasoning_details"] = [{**block, "text": block["text"] + "!"}]
    status, refused = await post(session, history)
    assert (status, refused["error"]["message"]) == (400, "Invalid signature in thinking block")

    _, gpt = await post(session, chat_body("2+2?", model="openai/gpt-5-mini", **asked))
    kinds = [d["type"] for d in gpt["choices"][0]["message"]["reasoning_details"]]
    assert kinds == ["reasoning.summary", "reasoning.encrypted"]
    encrypted = gpt["choices"][0]["message"]["reasoning_details"][1]
    assert encrypted["id"].startswith("rs_")
    history["model"] = "openai/gpt-5-mini"
    history["messages"][1]["reasoning_details"] = [{**encrypted, "data": encrypted["data"][:-4]}]
    status, refused = await post(session, history)
    assert status == 400

    # Streamed: the Anthropic shape of pieces, the signature alone at the end.
    _, frames = await post(
        session, chat_body("2+2?", model="anthropic/claude-sonnet-4.5", stream=True, **asked)
    )
    pieces = [
        d
        for f in frames
        if f.data not in (None, "[DONE]")
        for c in f.json().get("choices") or []
        for d in c["delta"].get("reasoning_details", [])
    ]
    assert pieces[0] == {
        "type": "reasoning.text",
        "text": "",
        "signature": "",
        "format": "anthropic-claude-v1",
        "index": 0,
    }
    assert set(pieces[-1]) == {"type", "signature", "format", "index"}
    assert "".join(p.get("text", "") for p in pieces) == block["text"]


async def test_images_refusals_logprobs_and_unknown_kinds(session: aiohttp.ClientSession) -> None:
    _, painted = await post(
        session,
        chat_body(
            "A dog [[sim:images=2]]", model="google/gemini-2.5-flash-image", modalities=["image"]
        ),
    )
    message = painted["choices"][0]["message"]
    assert message["content"] == ""
    assert [i["image_url"]["url"][:22] for i in message["images"]] == ["data:image/png;base64,"] * 2
    assert painted["usage"]["completion_tokens_details"]["image_tokens"] == 2 * 1290
    _, refused = await post(session, chat_body("No [[sim:refusal]]"))
    assert refused["choices"][0]["message"]["refusal"].startswith("I'm sorry")
    assert refused["choices"][0]["message"]["content"] is None
    _, probed = await post(session, chat_body("Hi [[sim:tokens=3]]", logprobs=True, top_logprobs=2))
    entries = probed["choices"][0]["logprobs"]["content"]
    assert [len(e["top_logprobs"]) for e in entries] == [2, 2, 2]
    _, odd = await post(session, chat_body("Hi [[sim:unknown-output=audio,content-part]]"))
    message = odd["choices"][0]["message"]
    assert message["audio"]["id"] == "audio_sim"
    assert message["content"][1]["type"] == "sim_widget"
    status, bad = await post(session, chat_body("Hi [[sim:unknown-output=smell]]"))
    assert status == 400
    assert "Simulator directive error" in bad["error"]["message"]
