"""Histogram records with a pre-bound attribute set: the SDK's record, minus the repeats.

``Histogram.record(value, attributes)`` costs ~30 µs here (OpenTelemetry SDK 1.45): every
record validates and copies the attributes (``Measurement.__post_init__``), then hashes them
again in each reader's view to find the aggregation they belong to. The gateway records the
same few attribute sets (an RPC and its status, a model's token types) four or five times per
RPC, so a ``BoundHistogram`` does that work once: its first record goes through the SDK (which
creates the aggregations), then it keeps those aggregations and hands each later measurement
straight to them, with the SDK's exemplar filter still asked. ~4 µs a record.

What is bound is checked, not assumed: a view with delta temporality (whose aggregations are
replaced at each collection), an instrument disabled by meter configuration, readers added or
removed, a cardinality overflow, or an SDK whose internals moved (any ``AttributeError``) make
the record go through the SDK as before. ``tests/telemetry/test_bound.py`` compares what is
exported both ways, point by point.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry.context import get_current
from opentelemetry.metrics import Histogram
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

_UNBOUND: tuple[Any, ...] = ()


class BoundHistogram:
    """``histogram`` with ``attributes`` fixed: ``record(value)``."""

    __slots__ = ("_aggregations", "_attributes", "_histogram", "_storages")

    def __init__(self, histogram: Histogram, attributes: Mapping[str, AttributeValue]) -> None:
        self._histogram = histogram
        self._attributes = dict(attributes)
        self._aggregations: Sequence[Any] | None = None
        """The aggregations to hand measurements to; None until found, ``()`` for never."""
        self._storages: object = None

    @property
    def bound(self) -> bool:
        """Whether records skip the SDK's attribute handling (for tests)."""
        return bool(self._aggregations)

    def record(self, amount: float) -> None:
        aggregations = self._aggregations
        current = bool(aggregations) and self._current()
        # A negative or non-finite amount goes to the SDK, which warns and drops it.
        if current and amount >= 0 and math.isfinite(amount):
            self._aggregate(aggregations, amount)  # type: ignore[arg-type]
            return
        self._histogram.record(amount, self._attributes)
        if aggregations is None or (aggregations and not current):
            # Bound after the SDK's first record made the aggregations (again, when the
            # readers changed).
            self._aggregations = self._bind()

    def _current(self) -> bool:
        """The readers are those the aggregations were found under."""
        consumer = getattr(self._histogram, "_measurement_consumer", None)
        return getattr(consumer, "_reader_storages", None) is self._storages

    def _aggregate(self, aggregations: Sequence[Any], amount: float) -> None:
        from opentelemetry.sdk.metrics._internal.measurement import Measurement

        histogram: Any = self._histogram
        now = time_ns()
        context = get_current()
        # Built without attributes (so __post_init__ skips re-validating them), then given
        # the ones validated on the first record.
        measurement = Measurement(amount, now, histogram, context, None)
        object.__setattr__(measurement, "attributes", self._attributes)
        consumer = histogram._measurement_consumer
        sample = consumer._sdk_config.exemplar_filter.should_sample(
            amount, now, self._attributes, context
        )
        for aggregation in aggregations:
            aggregation.aggregate(measurement, sample)

    def _bind(self) -> Sequence[Any]:
        try:
            return self._find()
        except (AttributeError, KeyError, TypeError, ImportError) as exc:
            log.debug("histogram records not bound (%s): the SDK path is used", exc)
            return _UNBOUND

    def _find(self) -> Sequence[Any]:
        from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes

        histogram: Any = self._histogram
        if not histogram._is_enabled():
            return _UNBOUND
        storages = histogram._measurement_consumer._reader_storages
        found: list[Any] = []
        for storage in storages.values():
            for match in storage._instrument_view_instrument_matches.get(histogram, ()):
                if match._reset_on_collect:
                    return _UNBOUND  # its aggregations do not outlive a collection
                keys = match._view._attribute_keys
                attributes = self._attributes
                if keys is not None:
                    attributes = {k: v for k, v in attributes.items() if k in keys}
                aggregation = match._attributes_aggregation.get(_hash_attributes(attributes))
                if aggregation is None:
                    return _UNBOUND  # counted under the overflow set: leave it to the SDK
                found.append(aggregation)
        self._storages = storages
        return tuple(found)


class HistogramBindings:
    """``BoundHistogram``s of one histogram, one per attribute set, made on first use.

    Keys are whatever identifies an attribute set cheaply for the caller (a status code, a
    model id); the attribute sets themselves must stay bounded, as the metric's labels must.
    """

    __slots__ = ("_bound", "_histogram")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bound: dict[object, BoundHistogram] = {}

    def get(self, key: object, attributes: Mapping[str, AttributeValue]) -> BoundHistogram:
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = BoundHistogram(self._histogram, attributes)
        return bound
