"""The layers are checked, not just drawn: ``api -> domain <- upstream``.

Every module's AST is walked (imports inside functions and ``TYPE_CHECKING`` blocks count too):
the domain imports no transport or wire types (grpc, protobuf, aiohttp, generated code), nor the
layers around it; ``service.api`` never reaches into ``service.upstream``, nor the other way;
protobuf and grpc stop at ``service.api`` (the upstream adapter speaks HTTP and JSON only).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"

GRPC_AND_PROTOBUF = ("grpc", "grpc_status", "google.protobuf", "google.rpc", "llmgateway")
RULES: dict[str, tuple[str, ...]] = {
    "service.domain": (
        *GRPC_AND_PROTOBUF,
        "aiohttp",
        "service.api",
        "service.upstream",
        "service.server",
    ),
    "service.api": ("service.upstream", "aiohttp"),
    "service.upstream": ("service.api", *GRPC_AND_PROTOBUF),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every module name ``source`` (the text of ``module``) imports, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                if node.level > 1:
                    anchor = anchor[: -(node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # ``from service import upstream`` imports the module service.upstream.
            for alias in node.names:
                yield f"{base}.{alias.name}"


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    found = []
    for layer, forbidden in RULES.items():
        if not _matches(module, layer):
            continue
        for name in imported(source, module, is_package=is_package):
            found += [f"{module} imports {name}" for f in forbidden if _matches(name, f)]
    return sorted(set(found))


def test_the_rules_catch_what_they_are_for() -> None:
    # The checker itself can fail: each kind of import is recognised.
    assert violations("import grpc", "service.domain.gateway")
    assert violations("from google.protobuf import struct_pb2", "service.domain.x")
    assert violations("from aiohttp import web", "service.domain.x")
    assert violations("from service import upstream", "service.api.servicer")
    assert violations("from ..upstream import wire", "service.api.servicer")
    assert violations("from ..api.status import x", "service.upstream.openrouter")
    assert violations(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpc\n",
        "service.domain.ports",
    )
    assert violations("def f():\n    import aiohttp\n", "service.domain.ports")
    assert not violations("from service.errors import Reason", "service.domain.schemas")
    assert not violations("from service.domain import ports", "service.api.servicer")


MODULES = sorted(SERVICE.rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(RULES))
def test_every_module_keeps_to_its_layer(layer: str) -> None:
    checked = 0
    found: list[str] = []
    for path in MODULES:
        module = _module_name(path)
        if not _matches(module, layer):
            continue
        checked += 1
        source = path.read_text(encoding="utf-8")
        found += violations(source, module, is_package=path.name == "__init__.py")
    assert checked, f"no module found in {layer}"
    assert not found, "\n".join(found)
