"""proto/google holds exactly the Google protos of the installed
googleapis-common-protos wheel (the one requirements.lock pins), so the contract is compiled
against the same field_behavior the generated code imports at run time, and clients decode
errors with the same google.rpc messages the gateway sends."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDORED = ROOT / "proto"


def _wheel() -> Path:
    """Where googleapis-common-protos is installed: its .proto sources sit next to their
    _pb2 modules."""
    spec = importlib.util.find_spec("google.api.field_behavior_pb2")
    assert spec is not None, "googleapis-common-protos is not installed"
    assert spec.origin is not None
    return Path(spec.origin).parents[2]


def test_the_committed_google_protos_are_the_wheels() -> None:
    committed = sorted(
        path.relative_to(VENDORED) for path in (VENDORED / "google").rglob("*.proto")
    )
    assert [str(path) for path in committed] == [
        "google/api/field_behavior.proto",
        "google/rpc/code.proto",
        "google/rpc/error_details.proto",
        "google/rpc/status.proto",
    ]
    for path in committed:
        assert (VENDORED / path).read_bytes() == (_wheel() / path).read_bytes(), (
            f"{path} differs from googleapis-common-protos': run scripts/vendor-googleapis.sh"
        )
