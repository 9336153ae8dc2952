"""Caller registry: key lookup by digest and model allow-lists."""

from __future__ import annotations

from service.domain.callers import Caller, CallerRegistry, hash_key


def _registry() -> CallerRegistry:
    return CallerRegistry(
        [
            Caller("billing", hash_key("key-billing"), ("openai/*",)),
            Caller("search", hash_key("key-search"), ("*/llama-*", "google/gemini-2.0-flash-001")),
        ]
    )


def test_authenticate_finds_the_caller_of_a_key() -> None:
    registry = _registry()
    found = registry.authenticate("key-search")
    assert found is not None
    assert found.id == "search"


def test_unknown_or_empty_key_is_nobody() -> None:
    registry = _registry()
    assert registry.authenticate("key-nobody") is None
    assert registry.authenticate("") is None


def test_model_globs() -> None:
    registry = _registry()
    billing = registry.get("billing")
    search = registry.get("search")
    assert billing is not None
    assert search is not None
    assert billing.may_use("openai/gpt-4o-mini")
    assert not billing.may_use("anthropic/claude-3.5-haiku")
    assert search.may_use("meta-llama/llama-3.1-8b-instruct")
    assert search.may_use("google/gemini-2.0-flash-001")
    assert not search.may_use("google/gemini-2.5-pro")


def test_repr_never_shows_the_key_digest() -> None:
    caller = Caller("billing", hash_key("key-billing"))
    assert "key_sha256" not in repr(caller)
