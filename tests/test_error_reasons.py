"""Reasons are data: each belongs to one error class, and the README's table agrees with the code.

The code's table is the error tree (each class's ``reason`` and ``refinements``) joined with
``STATUS_BY_ERROR`` (class -> gRPC code, looked up along the MRO as the servicer does). The
README's "Errors" table is the one copy written for people; the proto only points to it.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from service import errors
from service.api.status import STATUS_BY_ERROR
from service.errors import GatewayError, Reason

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROTOS = sorted((ROOT / "proto").rglob("*.proto"))

_REASON_RE = re.compile(r"`([A-Z][A-Z0-9_]+)`")
_CODE_NAMES = frozenset(code.name for code in grpc.StatusCode)


def _error_classes() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _class_by_reason() -> dict[Reason, list[type[GatewayError]]]:
    owners: dict[Reason, list[type[GatewayError]]] = {}
    for cls in _error_classes():
        if cls is GatewayError:
            # The root's default (INTERNAL) is InternalError's: a bare GatewayError is a bug.
            continue
        own = [cls.__dict__["reason"]] if "reason" in cls.__dict__ else []
        own += list(cls.__dict__.get("refinements", ()))
        for reason in own:
            owners.setdefault(reason, []).append(cls)
    return owners


def _code_of(cls: type[GatewayError]) -> grpc.StatusCode:
    for klass in cls.__mro__:
        code = STATUS_BY_ERROR.get(klass)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def code_table() -> dict[Reason, grpc.StatusCode]:
    return {reason: _code_of(classes[0]) for reason, classes in _class_by_reason().items()}


def readme_table() -> list[tuple[str, str, list[str]]]:
    """``(failure, code, reasons)`` per row of the README's "Errors" table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| failure | gRPC code | ErrorInfo reason |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        failure, code, reasons = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((failure, code, _REASON_RE.findall(reasons)))
    return rows


def test_every_reason_belongs_to_exactly_one_class() -> None:
    owners = _class_by_reason()
    assert set(owners) == set(Reason)
    shared = {reason: classes for reason, classes in owners.items() if len(classes) != 1}
    assert not shared


def test_an_error_cannot_carry_another_class_s_reason() -> None:
    assert errors.UpstreamUnavailableError("x", reason=Reason.UPSTREAM_TIMEOUT).reason == (
        Reason.UPSTREAM_TIMEOUT
    )
    with pytest.raises(TypeError):
        errors.UpstreamUnavailableError("x", reason=Reason.QUOTA_STORE_UNAVAILABLE)


def test_the_readme_table_agrees_with_the_code() -> None:
    codes = code_table()
    seen: dict[str, str] = {}
    for failure, code_cell, reasons in readme_table():
        code = code_cell.split()[0]
        assert code in _CODE_NAMES, f"{failure}: {code_cell!r} does not start with a gRPC code"
        assert reasons, f"{failure}: no reason"
        for reason in reasons:
            assert reason in set(Reason), f"README names {reason}, which the code does not have"
            assert codes[Reason(reason)].name == code, f"{reason}: README {code}, code differs"
            seen.setdefault(reason, failure)
    missing = sorted(set(Reason) - set(seen))
    assert not missing, f"reasons missing from the README's table: {missing}"


def test_the_proto_points_to_the_readme_and_names_no_other_code() -> None:
    codes = code_table()
    pair = re.compile(r"\b([A-Z][A-Z_]+) / ([A-Z][A-Z0-9_]+)\b")
    for proto in PROTOS:
        text = proto.read_text(encoding="utf-8")
        # No second copy of the table: a pointer to the README's.
        assert not re.search(r"^\s*//\s*\|", text, re.MULTILINE), f"{proto.name} holds a table"
        for code, reason in pair.findall(text):
            if code in _CODE_NAMES and reason in set(Reason):
                assert codes[Reason(reason)].name == code, f"{proto.name}: {code} / {reason}"
    service = ROOT / "proto" / "llmgateway" / "v1" / "completion_service.proto"
    assert "README" in service.read_text(encoding="utf-8")
