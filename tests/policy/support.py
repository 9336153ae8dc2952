"""Helpers for the policy tests: callers with policies written as callers-file TOML, and what
reached the simulator."""

from __future__ import annotations

from typing import Any

from llmgateway.v1 import completion_service_pb2 as pb

from service.callers_file import parse_callers
from service.domain.callers import Caller, hash_key
from service.simulator import RunningSimulator
from tests.api.support import chat_requests


def key_of(caller_id: str) -> str:
    return f"key-{caller_id}-POLICYSECRET"


def callers_file(policies: dict[str, str], default: str = "") -> str:
    """A callers file with one caller per entry of ``policies`` (id -> its policy section's
    TOML lines; empty: no section) and a ``[default_policy]`` when ``default`` is given."""
    lines = []
    if default:
        lines += ["[default_policy]", default]
    for caller_id, policy in policies.items():
        lines += [
            "[[callers]]",
            f'id = "{caller_id}"',
            f'key_sha256 = "{hash_key(key_of(caller_id)).hex()}"',
        ]
        if policy:
            lines += ["[callers.policy]", policy]
    return "\n".join(lines) + "\n"


def callers(policies: dict[str, str], default: str = "") -> list[Caller]:
    """The callers of ``callers_file(...)``, parsed as the gateway parses the file."""
    return parse_callers(callers_file(policies, default), source="callers.toml")


def as_caller(caller_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key_of(caller_id)}"),)


def sent_provider(sim: RunningSimulator) -> Any:
    """The ``provider`` object of the last chat request upstream (None: not sent)."""
    return chat_requests(sim)[-1].body.get("provider")


def ask(text: str = "Hello", **fields: Any) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role=pb.ROLE_USER, content=text)], **fields)
