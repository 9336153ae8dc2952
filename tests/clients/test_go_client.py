"""A Go client against a real gateway, built offline in GOPATH mode from Debian's packages
(golang-go, grpc-go, protobuf-go, protoc-gen-go, protoc-gen-go-grpc): generated from the proto
bundle, once with protoc and the contract's own go_package and once with the consumer's
buf.gen.yaml of the README (managed mode, local plugins); it calls Complete and reads ErrorInfo.

Minutes, and Debian's Go toolchain: run by ``make polyglot-check`` (which installs it), not by
``make test``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.api.support import ROOT, run_process
from tests.harness import ALPHA_KEY, start_gateway

# Generating, compiling grpc-go (cached in build/go-cache after the first run) and calling.
pytestmark = [pytest.mark.polyglot, pytest.mark.timeout(900)]
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
CLIENT = ROOT / "tests" / "go" / "polyglot" / "main.go"
CONTRACT_IMPORT = "llmgateway.internal/gen/go/llmgateway/v1"


def _go_env(gopath: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:/usr/share/gocode",
        "GOCACHE": str(ROOT / "build" / "go-cache"),
        "GOFLAGS": "",
    }


async def _build_and_call(gopath: Path, import_path: str) -> dict[str, object]:
    main = gopath / "src" / "polyglot" / "main.go"
    main.parent.mkdir(parents=True)
    main.write_text(CLIENT.read_text().replace(CONTRACT_IMPORT, import_path))
    binary = gopath / "polyglot"
    built = await run_process(
        shutil.which("go") or "go",
        "build",
        "-o",
        str(binary),
        "polyglot",
        env=_go_env(gopath),
        time_limit=600,
    )
    assert built.returncode == 0, built.stderr
    async with start_gateway() as gw:
        ran = await run_process(str(binary), gw.server.address, ALPHA_KEY)
    assert ran.returncode == 0, ran.stderr
    return dict(json.loads(ran.stdout))


def _check(out: dict[str, object]) -> None:
    complete = out["complete"]
    assert isinstance(complete, dict)
    assert str(complete["id"]).startswith("gen-")
    assert complete["finish_reason"] == "FINISH_REASON_STOP"
    assert complete["completion_tokens"] == 3
    assert out["failed"] == {
        "code": "InvalidArgument",
        "reason": "INVALID_ARGUMENT",
        "domain": "llmgateway.v1",
        "fields": ["messages"],
    }


async def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "proto-bundle"
    made = await run_process(str(ROOT / "scripts" / "proto-bundle.sh"), str(bundle))
    assert made.returncode == 0, made.stderr
    return bundle


async def test_protoc_go_code_from_the_contracts_go_package(tmp_path: Path) -> None:
    bundle = await _bundle(tmp_path)
    gopath = tmp_path / "go"
    (gopath / "src").mkdir(parents=True)
    generated = await run_process(
        "protoc",
        f"-I{bundle}",
        f"--go_out={gopath / 'src'}",
        f"--go-grpc_out={gopath / 'src'}",
        "llmgateway/v1/completion_service.proto",
    )
    assert generated.returncode == 0, generated.stderr
    assert (gopath / "src" / CONTRACT_IMPORT / "completion_service_grpc.pb.go").is_file()
    _check(await _build_and_call(gopath, CONTRACT_IMPORT))


async def test_the_readmes_buf_gen_yaml_with_managed_mode(tmp_path: Path) -> None:
    await _bundle(tmp_path)
    # The consumer's layout: buf.gen.yaml beside proto-bundle/; Go code under its module path.
    shutil.copy(ROOT / "clients" / "go" / "buf.gen.yaml", tmp_path / "buf.gen.yaml")
    generated = await run_process(str(BUF), "generate", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    produced = sorted(p.name for p in (tmp_path / "gen" / "go").rglob("*.go"))
    assert produced == ["completion_service.pb.go", "completion_service_grpc.pb.go"]
    gopath = tmp_path / "go"
    target = gopath / "src" / "example.internal" / "yourteam" / "gen" / "go" / "llmgateway" / "v1"
    shutil.copytree(tmp_path / "gen" / "go" / "llmgateway" / "v1", target)
    _check(await _build_and_call(gopath, "example.internal/yourteam/gen/go/llmgateway/v1"))
