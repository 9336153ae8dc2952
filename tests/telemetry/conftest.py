"""Fixtures of the telemetry tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.telemetry.support import Captured


@pytest.fixture
def otel() -> Iterator[Captured]:
    """In-memory span exporter and metric reader, injected (no global provider is touched)."""
    captured = Captured.create()
    yield captured
    captured.shutdown()
