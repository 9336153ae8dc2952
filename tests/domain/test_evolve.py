"""``evolve`` is ``dataclasses.replace``: same copies, same validation."""

from __future__ import annotations

import dataclasses

import pytest

from service.domain.completion import CompletionRequest, Message, Role, SamplingParams
from service.domain.evolve import evolve


def test_a_copy_with_changes_equals_what_replace_makes() -> None:
    request = CompletionRequest(model="m", messages=(Message(Role.USER, "hi"),))
    changed = evolve(request, model="other", sampling=SamplingParams(max_tokens=5))
    assert changed == dataclasses.replace(
        request, model="other", sampling=SamplingParams(max_tokens=5)
    )
    assert request.model == "m"  # the original is untouched
    assert evolve(request) == request


def test_an_unknown_field_is_refused_as_by_the_constructor() -> None:
    with pytest.raises(TypeError):
        evolve(SamplingParams(), no_such_field=1)
