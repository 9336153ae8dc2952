"""Pre-bound histogram records export exactly what the SDK's own records do.

Two meter providers side by side, each with an in-memory reader: one recorded through
``BoundHistogram``, one through ``Histogram.record``. Every exported point must agree, and
the binding must actually be in use (an SDK upgrade that moved its internals would otherwise
fall back silently: still correct, no longer cheaper).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
)

from service.telemetry.bound import BoundHistogram, HistogramBindings

ATTRIBUTE_SETS: list[dict[str, Any]] = [
    {"rpc.method": "Complete", "rpc.grpc.status_code": 0},
    {"rpc.method": "Complete", "rpc.grpc.status_code": 14},
    {"rpc.method": "StreamComplete", "rpc.grpc.status_code": 0, "flag": True},
]
VALUES = [0.0, 0.0004, 0.003, 0.02, 0.02, 1.5, 7.0, 250.0, 1e9]


def _points(reader: InMemoryMetricReader) -> list[tuple[Any, ...]]:
    data = reader.get_metrics_data()
    assert data is not None
    points: list[tuple[Any, ...]] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, HistogramDataPoint)
                    points.append(
                        (
                            metric.name,
                            tuple(sorted((point.attributes or {}).items())),
                            point.count,
                            point.sum,
                            tuple(point.bucket_counts),
                            tuple(point.explicit_bounds),
                            point.min,
                            point.max,
                        )
                    )
    return sorted(points)


def _histogram(readers: Sequence[InMemoryMetricReader]) -> SdkHistogram:
    meter = MeterProvider(metric_readers=list(readers)).get_meter("test")
    histogram = meter.create_histogram(
        "d", unit="s", explicit_bucket_boundaries_advisory=[0.001, 0.01, 0.1, 1.0, 10.0]
    )
    assert isinstance(histogram, SdkHistogram)
    return histogram


def _record_both(bound_readers: int = 1, **reader_options: Any) -> tuple[list[Any], list[Any]]:
    bound_side = [InMemoryMetricReader(**reader_options) for _ in range(bound_readers)]
    sdk_side = InMemoryMetricReader(**reader_options)
    bindings = HistogramBindings(_histogram(bound_side))
    plain = _histogram([sdk_side])
    for value in VALUES:
        for index, attributes in enumerate(ATTRIBUTE_SETS):
            bindings.get(index, attributes).record(value)
            plain.record(value, attributes)
    return [_points(reader) for reader in bound_side], [_points(sdk_side)]


def test_bound_records_export_the_same_points_as_the_sdks() -> None:
    bound, sdk = _record_both()
    assert bound == sdk
    assert len(sdk[0]) == len(ATTRIBUTE_SETS)
    [(_, _, count, total, *_)] = [p for p in sdk[0] if ("flag", True) in p[1]]
    assert count == len(VALUES)
    assert math.isclose(total, sum(VALUES))


def test_the_binding_is_in_use_after_the_first_record() -> None:
    histogram = _histogram([InMemoryMetricReader()])
    bound = BoundHistogram(histogram, ATTRIBUTE_SETS[0])
    assert not bound.bound
    bound.record(0.5)
    assert bound.bound, "the SDK's internals moved: records fall back to Histogram.record"


def test_every_reader_gets_every_record() -> None:
    bound, sdk = _record_both(bound_readers=2)
    assert bound == sdk * 2


def test_with_delta_temporality_records_stay_on_the_sdks_path_and_agree() -> None:
    delta: dict[type, AggregationTemporality] = {SdkHistogram: AggregationTemporality.DELTA}
    reader = InMemoryMetricReader(preferred_temporality=delta)
    histogram = _histogram([reader])
    bound = BoundHistogram(histogram, ATTRIBUTE_SETS[0])
    bound.record(1.0)
    assert not bound.bound  # delta aggregations are replaced at each collection
    first = _points(reader)
    bound.record(2.0)
    second = _points(reader)
    assert [p[2:4] for p in first] == [(1, 1.0)]
    assert [p[2:4] for p in second] == [(1, 2.0)]


def test_negative_and_non_finite_amounts_are_dropped_as_the_sdk_drops_them() -> None:
    reader = InMemoryMetricReader()
    bound = BoundHistogram(_histogram([reader]), ATTRIBUTE_SETS[0])
    for value in (1.0, -1.0, math.nan, math.inf, 2.0):
        bound.record(value)
    [(_, _, count, total, *_)] = _points(reader)
    assert (count, total) == (2, 3.0)
